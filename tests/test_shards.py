"""Postprocess shards (streamseg.shards): which process owns which stream, the plan's processes
and endpoints, inference's routing over real sockets, the merged report, and a file run whose
results equal the run without shards."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from harness import Run, stage_pids
from rtspfixture import free_port

from streamseg import shards, threads
from streamseg.config import ConfigError, load_config
from streamseg.inference.routes import DetectionsOut
from streamseg.pipeline.plan import Outputs, describe, plan, restart
from streamseg.pipeline.report import merge_shards
from streamseg.pipeline.spec import load_pipeline
from streamseg.postprocess.preview import Previewer
from streamseg.serve.views import PreviewHub
from streamseg.source.spec import parse_sources
from streamseg.stage.args import PostprocessArgs, as_dict, from_json, to_json
from streamseg.stage.links import Links
from streamseg.tools import synth
from streamseg.tools.bench.fixtures import synthetic_detections
from streamseg.wire import sockets
from streamseg.wire.messages import EndOfStream, Stats, StreamStart
from streamseg.wire.receiver import Receiver

BUDGET = threads.ThreadPlan(model=1, encoder=2, decoder=1, cores=16)
SOURCES = ["a=/v/a.mp4", "b=/v/b.mp4", "c=/v/c.mp4"]


@pytest.fixture(scope="module")
def model(random_config):
    return load_config(random_config)


def with_shards(text: str, value: str) -> str:
    """A pipeline file's text with `shards = value` in [postprocess] (in place of its own)."""
    lines = [ln for ln in text.splitlines(keepends=True) if not ln.startswith("shards =")]
    text = "".join(lines)
    return text.replace("[postprocess]\n", f"[postprocess]\nshards = {value}\n")


def make(model, *, shards_=2, workers=1, outputs=None, cuda=False, sources=SOURCES):
    pipeline = replace(load_pipeline("annotate"), workers=workers, shards=shards_)
    return plan(
        pipeline,
        model,
        parse_sources(sources),
        outputs or Outputs(results="r.jsonl", video="v.mp4"),
        rundir="/tmp/run1",
        budget=BUDGET,
        cuda=cuda,
    )


# -- the pure core --


def test_count_auto_is_one_on_cpu_and_grows_with_streams_on_a_gpu():
    assert shards.count("auto", cuda=False, streams=8, cores=16) == 1
    assert shards.count("auto", cuda=True, streams=1, cores=16) == 1
    assert shards.count("auto", cuda=True, streams=2, cores=16) == 2
    assert shards.count("auto", cuda=True, streams=8, cores=16) == 7  # (16 - 1) // 2
    assert shards.count("auto", cuda=True, streams=4, cores=16) == 4
    assert shards.count("auto", cuda=True, streams=64, cores=16) == 7  # (16 - 1) // 2
    assert shards.count("auto", cuda=True, streams=8, cores=2) == 1
    assert shards.count("auto", cuda=True, streams=8, cores=16, single=["publish"]) == 1


def test_count_takes_a_number_as_asked_but_never_more_than_streams():
    assert shards.count(3, cuda=False, streams=8, cores=2) == 3
    assert shards.count(3, cuda=False, streams=2, cores=2) == 2
    assert shards.count(4, cuda=False, streams=0, cores=2) == 1  # no source yet: one process
    with pytest.raises(ValueError, match="publish and push need one postprocess process"):
        shards.count(2, cuda=True, streams=4, cores=16, single=["publish", "push"])
    assert shards.count(1, cuda=True, streams=4, cores=16, single=["publish"]) == 1
    for bad in (0, -1, 65, 1.5, "many", True):
        with pytest.raises(ValueError, match="shards must be"):
            shards.count(bad, cuda=False, streams=4, cores=2)


def test_assign_is_round_robin_in_source_order_and_route_follows_it():
    table = shards.assign(["a", "b", "c", "d", "e"], 2)
    assert table == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}
    assert [shards.route(s, table, 2) for s in "abcde"] == [0, 1, 0, 1, 0]
    assert shards.assign([], 3) == {}
    with pytest.raises(ValueError):
        shards.assign(["a"], 0)


def test_route_of_an_unlisted_stream_is_stable_and_in_range():
    got = {shards.route("cam-9", {}, 3) for _ in range(5)}
    assert len(got) == 1 and got <= {0, 1, 2}
    assert all(0 <= shards.route(f"s{i}", {}, 4) < 4 for i in range(50))
    assert len({shards.route(f"s{i}", {}, 4) for i in range(50)}) == 4  # spreads
    assert shards.route("a", {"a": 7}, 3) in (0, 1, 2)  # a stale table entry: still in range
    assert shards.route("a", {"a": 1}, 1) == 0  # one process: always it


def test_names_and_endpoints():
    assert shards.name(0, 1) == "postprocess"
    assert [shards.name(i, 3) for i in range(3)] == [f"postprocess[{i}]" for i in range(3)]
    assert shards.endpoint("ipc:///r/detections", 0) == "ipc:///r/detections"
    assert shards.endpoint("ipc:///r/detections", 2) == "ipc:///r/detections-2"
    assert shards.endpoint("tcp://127.0.0.1:5603", 0) == "tcp://127.0.0.1:5603"
    with pytest.raises(ValueError, match="need an ipc:// detections endpoint"):
        shards.endpoint("tcp://127.0.0.1:5603", 1)


# -- the plan --


def test_one_shard_is_the_graph_without_shards(model):
    run = make(model, shards_=1)
    assert run.postprocess == ("postprocess",)
    post = run.get("postprocess").args
    assert (post.name, post.own_streams, post.streams, post.n_outputs) == ("postprocess", (), 3, 3)
    assert as_dict(run.get("inference").args)["shard_endpoints"] == []
    assert run.get("inference").args.shard_of is None
    assert "shards" not in describe(run).splitlines()[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_each_own_streams_and_bind_their_own_endpoint(model, workers):
    run = make(model, workers=workers)
    names = ("postprocess[0]", "postprocess[1]")
    assert run.names[:2] == names and run.postprocess == names
    p0, p1 = (run.get(n).args for n in names)
    assert isinstance(p0, PostprocessArgs) and isinstance(p1, PostprocessArgs)
    ep = run.endpoints["detections"]
    assert (p0.name, p0.detections_endpoint, p0.own_streams, p0.streams) == (
        "postprocess[0]", ep, ("a", "c"), 2,
    )  # fmt: skip
    assert (p1.name, p1.detections_endpoint, p1.own_streams, p1.streams) == (
        "postprocess[1]", f"{ep}-1", ("b",), 1,
    )  # fmt: skip
    # the same file names as one process would write: n_outputs counts every stream
    assert p0.n_outputs == p1.n_outputs == 3
    assert (p0.results, p0.video, p0.encoder_threads) == ("r.jsonl", "v.mp4", 2)
    workers_ = run.workers
    for name in names:
        assert run.get(name).senders == ("inference", *workers_)
    senders = [run.get("inference"), *(run.get(w) for w in workers_)]
    for spec in senders:  # the dispatcher (starts and ends) and each worker (results) route
        assert spec.args.shard_endpoints == (ep, f"{ep}-1")
        assert spec.args.shard_of == {"a": 0, "b": 1, "c": 0}
        assert spec.args.detections_endpoint == ep
        assert from_json(spec.stage, to_json(spec.args)) == spec.args
    for name in names:
        assert from_json("postprocess", to_json(run.get(name).args)) == run.get(name).args
    text = describe(run)
    assert text.splitlines()[0].endswith(", 2 postprocess shards")
    assert f"binds detections {ep}-1  (streams b;" in text
    assert f"connects detections {ep}, connects detections {ep}-1" in text


def test_outputs_on_one_endpoint_refuse_shards_and_auto_gives_one(model):
    with pytest.raises(ConfigError, match=r"\[postprocess\] shards = 2: publish needs one"):
        make(model, outputs=Outputs(results="r.jsonl", publish="tcp://127.0.0.1:5999"))
    run = make(model, shards_="auto", cuda=True, sources=[f"s{i}=/v/{i}.mp4" for i in range(8)])
    assert len(run.postprocess) == 7  # 8 streams, 16 cores (1 for the feeder, 2 a shard)
    run = make(model, shards_="auto", cuda=True, outputs=Outputs(rtsp_out="8554"))
    assert run.postprocess == ("postprocess",)
    assert make(model, shards_="auto", cuda=False).postprocess == ("postprocess",)


def test_live_views_come_from_every_shard(model):
    """--serve: each shard offers its own streams' previews on its own endpoint."""
    run = make(model, outputs=Outputs(preview=True, video="v.mp4"))
    ep = run.endpoints["preview"]
    assert [run.get(n).args.preview_endpoint for n in run.postprocess] == [ep, f"{ep}-1"]
    assert run.get("inference").args.forward_images  # pixels travel for the views


def test_a_restarted_shard_waits_for_the_ends_of_its_own_streams_only(model):
    run = make(model)
    p0 = run.get("postprocess[0]")  # owns a and c
    again = restart(p0, frames_in=0, ended_sources=1, first_pts=0.0, ended_streams=["b"])
    assert (again.name, again.args.streams, again.args.part) == ("postprocess[0]", 2, 1)
    again = restart(again, frames_in=0, ended_sources=2, first_pts=0.0, ended_streams=["b", "a"])
    assert (again.args.streams, again.args.part, again.args.own_streams) == (1, 2, ("a", "c"))


def test_pipeline_files_take_shards_in_type_and_range(tmp_path):
    base = load_pipeline("annotate").path
    text = open(base, encoding="utf-8").read()
    for value, want in (("2", 2), ('"auto"', "auto")):
        path = tmp_path / "p.toml"
        path.write_text(with_shards(text, value))
        assert load_pipeline(path).shards == want
    assert load_pipeline("annotate").shards == 1
    for bad in ("0", "65", '"many"', "1.5"):
        path.write_text(with_shards(text, bad))
        with pytest.raises(ConfigError, match=r"\[postprocess\] shards must be"):
            load_pipeline(path)


# -- inference's side: each stream's messages reach its own shard, in order --


def test_detections_out_sends_each_stream_to_its_shard(tmp_path):
    eps = [f"ipc://{tmp_path}/d", f"ipc://{tmp_path}/d-1"]
    pulls = [Receiver(sockets.pull(ep, bind=True, hwm=100), name=f"p{i}") for i, ep in
             enumerate(eps)]  # fmt: skip
    out = DetectionsOut(
        Links("inference"), eps[0], hwm=100, shard_endpoints=eps, shard_of={"a": 0, "b": 1}
    )
    det = synthetic_detections(2, (64, 48))
    sent = []
    for stream in ("a", "b"):
        sent.append(StreamStart(stream, 64, 48, 25.0))
    for i in range(3):
        for stream in ("a", "b"):
            sent.append(replace(det, stream=stream, frame=i))
    sent += [EndOfStream("b", 3), EndOfStream("a", 3)]
    for msg in sent:
        assert out.send(msg)
    got: list[list] = [[], []]
    for i, r in enumerate(pulls):
        while (msg := r.recv(2000)) is not None:
            got[i].append(msg)
            if isinstance(msg, EndOfStream):
                break
    for i, stream in enumerate(("a", "b")):
        mine = [m for m in sent if m.stream == stream]
        assert [type(m).__name__ for m in got[i]] == [type(m).__name__ for m in mine]
        assert [getattr(m, "frame", None) for m in got[i]] == [
            getattr(m, "frame", None) for m in mine
        ]
        assert all(m.stream == stream for m in got[i])
    sockets.close_all(abort=True)


def test_one_endpoint_without_shards(tmp_path):
    ep = f"ipc://{tmp_path}/d"
    pull = Receiver(sockets.pull(ep, bind=True, hwm=100), name="p")
    out = DetectionsOut(Links("inference"), ep, hwm=100)
    for stream in ("a", "b", "zz"):
        assert out.send(EndOfStream(stream, 0))
    assert [pull.recv(2000).stream for _ in range(3)] == ["a", "b", "zz"]
    sockets.close_all(abort=True)


def test_the_preview_hub_reads_every_shard_and_only_the_runs_shards(tmp_path):
    """The supervisor's side of live views: one hub on each shard's preview endpoint takes the
    previews signed by a shard of the run, and refuses one signed by anything else."""
    eps = [f"ipc://{tmp_path}/preview", f"ipc://{tmp_path}/preview-1", f"ipc://{tmp_path}/p-x"]
    offers = [Previewer(eps[0], auth="t0"), Previewer(eps[1], auth="t1"),
              Previewer(eps[2], auth="stranger")]  # fmt: skip
    hub = PreviewHub(eps[0], expect_auth=["t0", "t1"], more_endpoints=eps[1:], poll_ms=20)
    hub.start()
    image = np.zeros((48, 64, 3), np.uint8)
    got: dict[str, object] = {}
    try:
        with hub.watching("a"), hub.watching("b"), hub.watching("c"):
            deadline = time.monotonic() + 20
            while (len(got) < 2 or not hub.rejected) and time.monotonic() < deadline:
                for previewer, stream in zip(offers, "abc", strict=True):
                    previewer.poll()  # the subscriptions that reached it
                    if previewer.wanted(stream):
                        previewer.offer(stream, 0, time.time(), image)
                for stream in "abc":
                    if (shot := hub.next(stream, 0, 0.02)) is not None:
                        got[stream] = shot
        assert set(got) == {"a", "b"} and hub.rejected >= 1
    finally:
        hub.close()
        for previewer in offers:
            previewer.sock.close(0)


# -- the report --


def test_merged_report_sets_shards_side_by_side_and_adds_up():
    one = Stats(
        "postprocess",
        {"a": {"in": 5, "out": 5, "dropped": {}}},
        busy_s=1.5,
        final=True,
        name="postprocess[0]",
        extra={
            "sinks": {"results": {"delivered": 5, "dropped": {}, "pending": 0},
                      "mqtt": {"delivered": 3, "dropped": {"queue_full": 2}, "pending": 0}},
            "rejected": 1,
        },
    )  # fmt: skip
    two = Stats(
        "postprocess",
        {"b": {"in": 4, "out": 3, "dropped": {"late": 1}}},
        busy_s=2.0,
        final=False,
        name="postprocess[1]",
        extra={
            "sinks": {"results": {"delivered": 3, "dropped": {}, "pending": 1},
                      "mqtt": {"delivered": 1, "dropped": {"queue_full": 1, "down": 2}}},
        },
    )  # fmt: skip
    merged = merge_shards([one, two])
    assert merged is not None
    assert merged.sender == "postprocess"
    assert merged.counters == {**one.counters, **two.counters}
    assert merged.busy_s == 3.5 and not merged.final
    assert merged.extra["sinks"] == {
        "results": {"delivered": 8, "dropped": {}, "pending": 1},
        "mqtt": {"delivered": 4, "dropped": {"queue_full": 3, "down": 2}, "pending": 0},
    }
    assert (merged.extra["rejected"], merged.extra["shards"]) == (1, 2)
    assert merge_shards([one]) is one
    assert merge_shards([]) is None


# -- a file run --


DETERMINISTIC = """[model]
arch = "shapes_mobilenet_v3_fpn"
weights = "streamseg:shapes.pt"
labels = ["__background__", "circle", "square", "triangle"]
score_threshold = 0.0
detections_per_img = 5
min_size = 128
max_size = 160
[runtime]
device = "cpu"
max_batch = 1
max_wait_ms = 0.0
threads = 1
"""
"""The small model with fixed weights and one frame a batch: the same input gives the same
bytes (random weights differ per process)."""


@pytest.mark.slow
def test_two_streams_on_two_shards_give_the_results_of_one_process(tmp_path):
    config = tmp_path / "det.toml"
    config.write_text(DETERMINISTIC)
    text = open(load_pipeline("annotate").path, encoding="utf-8").read()
    text = text.replace('workers = "auto"', "workers = 1")
    inputs = []
    for i, stream in enumerate(("a", "b")):
        clip = tmp_path / f"{stream}.mp4"
        synth.write_clip(clip, tmp_path / f"{stream}.json", seed=i + 1, frames=6,
                         size=(160, 120), fps=25)  # fmt: skip
        inputs.append(f"{stream}={clip}")
    out = {}
    for n in (1, 2):
        pipeline = tmp_path / f"shards{n}.toml"
        pipeline.write_text(with_shards(text, str(n)))
        d = tmp_path / f"out{n}"
        cmd = [sys.executable, "-m", "streamseg.cli", "run", str(pipeline), *inputs,
               "--config", str(config), "--results", str(d / "r.jsonl"),
               "-o", str(d / "v.mp4"), "--report", str(d / "report.json"), "--quiet"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        out[n] = d
    report = json.loads((out[2] / "report.json").read_text())
    assert {k: v["out"] for k, v in report["postprocess"].items()} == {"a": 6, "b": 6}
    assert report["extra"]["postprocess"]["sinks"]["results"]["delivered"] == 12
    assert report["extra"]["postprocess"]["sinks"]["video"]["delivered"] == 12
    assert {report["extra"][f"postprocess[{i}]"]["name"] for i in (0, 1)} == {
        "postprocess[0]", "postprocess[1]",
    }  # fmt: skip
    assert report["dropped"] == {}
    for stream in ("a", "b"):
        one = (out[1] / f"r.{stream}.jsonl").read_bytes()
        assert len(one.splitlines()) == 6
        assert (out[2] / f"r.{stream}.jsonl").read_bytes() == one
        assert (out[2] / f"v.{stream}.mp4").stat().st_size > 0


def _shard_pid(run: Run, name: str) -> int | None:
    """The pid of the postprocess process named `name` (its arguments say its name)."""
    for pid in stage_pids(run.proc.pid, "postprocess"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if json.loads(cmd[cmd.index(b"postprocess") + 1]).get("name") == name:
            return pid
    return None


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
@pytest.mark.rtsp
def test_a_killed_shard_restarts_alone_and_the_other_never_stops(camera, random_config, tmp_path):
    """Live: postprocess[1] killed with SIGKILL is restarted (its stream's results go on in
    NAME.part1), while postprocess[0]'s stream keeps its one file all along. The live views
    show each shard's streams; /metrics counts the stage once."""
    text = open(load_pipeline("watch").path, encoding="utf-8").read()
    text = text.replace('publish = "tcp://127.0.0.1:5555"', 'publish = ""')
    text = with_shards(text, "2")
    text = text.replace('workers = "auto"', "workers = 1")
    (tmp_path / "live.toml").write_text(text)
    port = free_port()
    run = Run(
        tmp_path, "run", "live.toml", f"c1={camera.url}", f"c2={camera.url}", "-q",
        "--config", random_config, "--results", "w.jsonl", "--serve", f"127.0.0.1:{port}",
    )  # fmt: skip
    one, two = tmp_path / "w.c1.jsonl", tmp_path / "w.c2.jsonl"
    try:
        run.wait_for(lambda: _lines(one) >= 3 and _lines(two) >= 3, 180, "results of both")
        for stream in ("c1", "c2"):  # a preview from each shard
            status, jpeg = run.wait_for(
                lambda s=stream: (
                    (got := _get(f"http://127.0.0.1:{port}/view/{s}.jpg"))[0] == 200 and got
                ),
                60,
                f"a view of {stream}",
            )
            assert jpeg[:2] == b"\xff\xd8"
        metrics = _get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        out = [ln for ln in metrics.splitlines() if ln.startswith("streamseg_frames_out_total{")]
        assert any('process="postprocess"' in ln and 'stream="c2"' in ln for ln in out), out
        assert not any('process="postprocess[' in ln for ln in out), out  # once, not per shard
        pid = run.wait_for(lambda: _shard_pid(run, "postprocess[1]"), 10, "postprocess[1]")
        os.kill(pid, signal.SIGKILL)
        run.wait_for(lambda: "postprocess[1]" in run.stderr() and "restart 1" in run.stderr(),
                     10, "the restart")  # fmt: skip
        before = _lines(one)
        run.wait_for(lambda: _lines(tmp_path / "w.part1.c2.jsonl") >= 3, 120, "c2 again")
        run.wait_for(lambda: _lines(one) >= before + 3, 60, "c1 going on")
    finally:
        code = run.interrupt()
    err = run.stderr()
    assert code == 0, err
    assert "restarted after dying or hanging: postprocess[1]" in err
    assert "Traceback" not in err
    assert not (tmp_path / "w.part1.c1.jsonl").exists()  # shard 0 lived on
    assert stage_pids(run.proc.pid, "") == []
