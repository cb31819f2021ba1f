"""Real brokers for the sink tests, started by the tests: mosquitto and redis-server (Debian
packages, .ci/apt-packages.txt) on a free loopback port, each stoppable and restartable on
the same port (a broker outage in the middle of a run); and a webhook receiver (http.server)
that can refuse a share of the requests.

Tests using them are marked `mqtt` / `redis` (skipped where the program is missing).
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Collector, wait_until
from rtspfixture import free_port

from streamseg.config import load_config
from streamseg.pipeline.report import RunReport
from streamseg.pipeline.spec import load_pipeline
from streamseg.pipeline.supervisor import run
from streamseg.source.spec import SourceSpec
from streamseg.tools import synth

ROOT = Path(__file__).resolve().parents[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class Server:
    """One broker process on 127.0.0.1:`port`; `stop()` kills it, `start()` brings it back."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.cmd, self.port, self.log = cmd, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: _accepts(self.port), 20, f"{self.cmd[0]} on port {self.port}",
                   ended=lambda: self.proc is None or self.proc.poll() is not None,
                   log=self.log.read_text)  # fmt: skip
        return self

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a goodbye) and wait until the port is closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def mosquitto(tmp: Path) -> Server:
    """mosquitto on a free port, anonymous clients allowed, nothing persisted."""
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    program = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return Server([program, "-c", str(conf)], port, tmp / "mosquitto.log").start()


def redis_server(tmp: Path) -> Server:
    """redis-server on a free port, nothing saved to disk."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
    return Server(cmd, port, tmp / "redis.log").start()


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps every request's body and headers; answers 503
    to each request for which `fail(n)` (n: the request's number, from 0) is true."""

    def __init__(self, fail: Any = lambda n: False) -> None:
        self.fail = fail
        self.requests: list[tuple[bytes, dict[str, str], int]] = []  # body, headers, status
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    n = len(receiver.requests)
                    status = 503 if receiver.fail(n) else 200
                    receiver.requests.append((body, dict(self.headers), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        """The results of every accepted request, in the order they came."""
        with self.lock:
            ok = [body for body, _, status in self.requests if status == 200]
        return [r for body in ok for r in json.loads(body)["results"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- runs ----------------------------------------------------------------------------------------


def file_run(tmp: Path, config: Path, clip: Path, sink: str) -> tuple[RunReport, list[dict]]:
    """`streamseg annotate CLIP --results ... --sink SINK` (in this process, as the CLI calls
    it); the report and the results file's records."""
    results = tmp / "results.jsonl"
    report = run(
        load_pipeline(ROOT / "pipelines" / "annotate.toml"),
        [SourceSpec("cam", str(clip), "file")],
        load_config(config),
        results=str(results),
        sinks=[sink],
        quiet=True,
    )
    return report, [json.loads(line) for line in results.read_text().splitlines()]


@dataclass
class Outage:
    """What a live run did around a broker outage."""

    report: RunReport
    before_fps: float
    """Results published per second (ZeroMQ, not the broker) in the 2 s before the kill."""
    during_fps: float
    """... while the broker was down."""
    last_before: int
    """The frame number of the last result published before the kill."""


def outage_run(tmp: Path, config: Path, server: Server, sink: str, *, down_s: float) -> Outage:
    """`streamseg watch` of a 16 s clip played in real time with `--sink SINK`; `server` is
    killed once results flow, and started again after `down_s` seconds."""
    clip = tmp / "live.mp4"
    synth.write_clip(clip, tmp / "live.json", seed=5, frames=400, size=(160, 120), fps=25)
    publish = f"tcp://127.0.0.1:{free_port()}"
    collector = Collector(publish)
    out: dict[str, Any] = {}

    def go() -> None:
        out["report"] = run(
            load_pipeline(ROOT / "pipelines" / "watch.toml"),
            [SourceSpec("cam", str(clip), "file")],
            load_config(config),
            publish=publish,
            sinks=[sink],
            quiet=True,
        )

    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(collector.headers()) >= 25, 240, "results of the live run",
                   ended=lambda: not runner.is_alive())  # fmt: skip
        before_fps = _rate(collector, 2.0)
        last_before = collector.headers()[-1]["frame"]
        server.stop()
        during_fps = _rate(collector, down_s)
        server.start()
        runner.join(300)
        assert not runner.is_alive(), "the live run did not end"
    finally:
        collector.close()
    return Outage(out["report"], before_fps, during_fps, last_before)


def _rate(collector: Collector, seconds: float) -> float:
    """Results published per second over the next `seconds` (a measurement window)."""
    t0 = time.monotonic()
    n0 = len(collector.headers())
    wait_until(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "the window to pass")
    return (len(collector.headers()) - n0) / (time.monotonic() - t0)
