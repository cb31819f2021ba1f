"""The MQTT sink against a real mosquitto the tests start: every result arrives (QoS 1), in
order, equal to the results file; each stream's retained status says online/offline (the
last will when the connection dies); a broker outage in a live run never holds the pipeline
up, every result is counted, and delivery resumes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from brokerfixture import Server, file_run, mosquitto, outage_run
from harness import Run, wait_until
from rtspfixture import free_port
from test_sink_interface import frame_out

from streamseg.postprocess.sinks.brokers import build
from streamseg.sink_urls import parse, parse_all
from streamseg.wire.messages import StreamStart

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt missing: pip install .[mqtt]")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402 - after the skip

pytestmark = pytest.mark.mqtt
ROOT = Path(__file__).resolve().parents[1]


class Subscriber:
    """A plain paho client (what a user's program is) subscribed to streamseg/# at QoS 1."""

    def __init__(self, port: int, topic: str = "streamseg/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []  # topic, payload, retained
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        # (again after a reconnect: a restarted broker forgot the subscription)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def results(self, topic: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    server = mosquitto(tmp_path)
    yield server
    server.stop()


def test_every_result_arrives_in_order_with_the_streams_status(broker: Server):
    sub = Subscriber(broker.port)
    sink = build(parse(f"mqtt://127.0.0.1:{broker.port}?qos=1"), live=False)
    for stream in ("a", "b"):
        sink.open(StreamStart(stream, 32, 24, 30.0))
    for n in range(300):
        sink.write(frame_out(n, "a"))
        sink.write(frame_out(n, "b"))
    wait_until(lambda: len(sub.payloads("streamseg/b")) == 300, 30, "300 results of b")
    sink.end("a")
    wait_until(lambda: sub.payloads("streamseg/a/status")[-1:] == [b"offline"], 10, "a offline")
    sink.close()
    counts = sink.counts()
    assert (counts.delivered, counts.dropped, counts.pending) == (600, {}, 0)
    for stream in ("a", "b"):
        frames = [r["frame"] for r in sub.results(f"streamseg/{stream}")]
        assert frames == list(range(300))
        assert sub.payloads(f"streamseg/{stream}/status") == [b"online", b"offline"]
    sub.close()
    late = Subscriber(broker.port)  # the status is retained: a late subscriber still sees it
    wait_until(lambda: late.payloads("streamseg/a/status"), 10, "the retained status")
    assert late.messages[0][2] and late.payloads("streamseg/a/status") == [b"offline"]
    late.close()


def test_a_killed_process_says_offline_by_its_last_will(broker: Server):
    sub = Subscriber(broker.port, "cams/#")
    code = (
        "import sys, threading; sys.path.insert(0, 'tests')\n"
        "from test_sink_interface import frame_out\n"
        "from streamseg.postprocess.sinks.brokers import build\n"
        "from streamseg.sink_urls import parse\n"
        "from streamseg.wire.messages import StreamStart\n"
        f"sink = build(parse('mqtt://127.0.0.1:{broker.port}?topic=cams/{{stream}}'), live=True)\n"
        "sink.open(StreamStart('c', 32, 24, 30.0)); sink.write(frame_out(0, 'c'))\n"
        "threading.Event().wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        wait_until(lambda: sub.payloads("cams/c"), 60, "the result",
                   ended=lambda: proc.poll() is not None)  # fmt: skip
        assert sub.payloads("cams/c/status") == [b"online"]
        proc.kill()  # no goodbye: the broker publishes the connection's will
        wait_until(lambda: sub.payloads("cams/c/status")[-1:] == [b"offline"], 30, "the will")
    finally:
        proc.kill()
        proc.wait()
    sub.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_file_run_delivers_every_frame_equal_to_the_results_file(
    broker: Server, tmp_path, clip, random_config
):
    sub = Subscriber(broker.port)
    report, records = file_run(
        tmp_path, random_config, clip[0], f"mqtt://127.0.0.1:{broker.port}?qos=1"
    )
    assert report.exit_code == 0, report.errors
    assert len(records) == 10
    assert sub.results("streamseg/cam") == records  # every frame, in order, the same record
    counts = report.extra["postprocess"]["sinks"]["mqtt"]
    assert counts == {"delivered": 10, "dropped": {}, "pending": 0}
    sub.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_broker_outage_in_a_live_run(broker: Server, tmp_path, random_config):
    sub = Subscriber(broker.port)
    out = outage_run(
        tmp_path,
        random_config,
        broker,
        f"mqtt://127.0.0.1:{broker.port}?qos=1&max_pending=20",
        down_s=4.0,
    )
    counts = out.report.extra["postprocess"]["sinks"]["mqtt"]
    produced = out.report.postprocess["cam"]["out"]
    dropped = sum(counts["dropped"].values())
    assert counts["delivered"] + dropped == produced and counts["pending"] == 0, counts
    assert counts["dropped"].get("queue_full", 0) > 0  # 4 s of results > max_pending
    assert out.during_fps >= 0.5 * out.before_fps, out  # the pipeline did not wait
    sub.close()
    after = [r["frame"] for r in sub.results("streamseg/cam") if r["frame"] > out.last_before]
    assert after  # delivered after the restart (the broker was down from just after last_before)


@pytest.mark.slow
def test_bad_sinks_stop_the_run_before_it_starts(tmp_path, clip, random_config):
    cases = [
        ("mqtt://u:hunter2@127.0.0.1?qos=5", "qos must be one of 0, 1"),
        ("amqp://127.0.0.1", "unknown sink scheme 'amqp'"),
        (f"mqtt://u:hunter2@127.0.0.1:{free_port()}", "cannot reach 127.0.0.1"),
    ]
    for url, says in cases:
        with Run(tmp_path, "annotate", "-q", clip[0], "--config", random_config,
                 "--results", tmp_path / "r.jsonl", "--sink", url) as run:  # fmt: skip
            assert run.wait(120) == 2
            err = run.stderr()
        assert says in err and "Traceback" not in err and "hunter2" not in err, err
        assert not (tmp_path / "r.jsonl").exists()


def test_two_sinks_on_one_broker_keep_their_own_connections(broker: Server, caplog):
    sub = Subscriber(broker.port, "#")
    urls = [f"mqtt://127.0.0.1:{broker.port}?qos=1&topic={t}/{{stream}}" for t in ("one", "two")]
    sinks = [build(spec, live=True) for spec in parse_all(urls)]  # named mqtt, mqtt-2
    for sink in sinks:
        sink.open(StreamStart("a", 32, 24, 30.0))
        for n in range(50):
            sink.write(frame_out(n, "a"))
    for sink in sinks:
        sink.close()
        assert sink.counts().delivered == 50
    for t in ("one", "two"):
        wait_until(lambda t=t: len(sub.payloads(f"{t}/a")) == 50, 10, f"50 results on {t}/a")
    assert "lost" not in caplog.text  # (one client id for both: the broker drops one each time)
    sub.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_password_reaches_the_stage_by_its_environment(broker: Server, tmp_path, clip,
                                                           random_config):  # fmt: skip
    """Any local user can read a process's command line: the stage gets the URL without the
    password, which it reads from its environment (readable by its owner only)."""
    sub = Subscriber(broker.port)
    url = f"mqtt://user:hunter2@127.0.0.1:{broker.port}?qos=1"
    with Run(tmp_path, "annotate", "-q", clip[0], "--config", random_config,
             "--results", tmp_path / "r.jsonl", "--sink", url) as run:  # fmt: skip
        pid = run.stage_pid("postprocess")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"hunter2" not in cmdline and b"password_env" in cmdline
        assert run.wait(300) == 0, run.stderr()
        assert "hunter2" not in run.stderr()
    topic = f"streamseg/{clip[0].stem}"  # the stream id: the file's name
    wait_until(lambda: len(sub.results(topic)) == 10, 10, "the 10 results")
    sub.close()


def test_a_broker_that_is_not_up_yet_is_waited_for(tmp_path, caplog):
    server = mosquitto(tmp_path)
    server.stop()  # its port, nothing listening yet
    sink = build(parse(f"mqtt://127.0.0.1:{server.port}?qos=1&drain_s=60"), live=True)
    sink.open(StreamStart("a", 32, 24, 30.0))
    for n in range(5):
        sink.write(frame_out(n, "a"))  # never blocks
    wait_until(lambda: "not reachable yet" in caplog.text, 30, "the sink saying so")
    assert sink.counts().delivered == 0
    server.start()
    try:
        # (QoS 1: delivered = acknowledged by the broker)
        wait_until(lambda: sink.counts().delivered == 5, 60, "delivery once the broker is up")
        sink.close()
        assert caplog.text.count("not reachable yet") == 1  # once, not once per retry
    finally:
        server.stop()
