"""Several inference workers (`--workers N`): real runs, real clips, real processes killed.

Results come out in each stream's frame order and equal those of one inference process (file
runs); a worker killed mid-run loses nothing in a file run (its frames go to another worker)
and, in a live run, costs only the frames it held (counted `worker_lost`) while the stream goes
on; the supervisor restarts it either way.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from faultkit import Collector, Run, lines_so_far, results_lines, stage_pids
from rtspfixture import free_port

from streamseg.tools import synth

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a reference run: up to 600 s


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two streams of different lengths, 160x120."""
    d = tmp_path_factory.mktemp("clips")
    synth.write_clip(d / "a.mp4", d / "a.json", seed=21, frames=24, size=(160, 120), fps=25)
    synth.write_clip(d / "b.mp4", d / "b.json", seed=22, frames=17, size=(160, 120), fps=25)
    return d / "a.mp4", d / "b.mp4"


@pytest.fixture(scope="module")
def shapes_small(tmp_path_factory):
    """The shipped shapes model at a small input size, one thread per process: results are
    bit-identical whichever process runs a frame."""
    path = tmp_path_factory.mktemp("cfg") / "shapes-small.toml"
    path.write_text(
        "[model]\n"
        'arch = "shapes_mobilenet_v3_fpn"\n'
        'weights = "streamseg:shapes.pt"\n'
        'labels = ["__background__", "circle", "square", "triangle"]\n'
        "score_threshold = 0.3\n"
        "min_size = 160\n"
        "max_size = 224\n"
        "[runtime]\n"
        'device = "cpu"\n'
        "max_batch = 1\n"
        "max_wait_ms = 0.0\n"
        "threads = 1\n"
    )
    return path


def _annotate(tmp, clips, config, workers: int) -> tuple[int, str, dict]:
    run = Run(
        tmp, "annotate", "-q", *clips, "--config", config, "--workers", str(workers),
        "--results", "r.{stream}.jsonl", "--report", "report.json",
    )  # fmt: skip
    code = run.wait(timeout=600)
    return code, run.stderr(), json.loads((tmp / "report.json").read_text())


def test_results_equal_one_process_and_keep_order_with_2_and_3_workers(
    clips, shapes_small, tmp_path
):
    runs = {}
    for n in (1, 2, 3):
        d = tmp_path / f"w{n}"
        d.mkdir()
        code, err, report = _annotate(d, clips, shapes_small, n)
        assert code == 0, err
        assert "Traceback" not in err
        runs[n] = d, report
    expected = {"a": 24, "b": 17}
    one = {s: results_lines(runs[1][0] / f"r.{s}.jsonl") for s in expected}
    assert sum(len(one[s][0]["instances"]) for s in one) > 0  # a model that finds shapes
    for n in (2, 3):
        d, report = runs[n]
        assert report["extra"]["inference"]["workers"] == n
        for s, count in expected.items():
            lines = results_lines(d / f"r.{s}.jsonl")
            assert [r["frame"] for r in lines] == list(range(count))  # in order, none missing
            assert lines == one[s]  # the same results as one inference process
            assert report["inference"][s] == {"in": count, "out": count, "dropped": {}}
            assert report["postprocess"][s]["out"] == count
        assert report["dropped"] == {}


def _children_named(parent: int, part: bytes) -> list[int]:
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit()
        and _read(e / "cmdline").find(part) >= 0
        and _read(e / "stat").rsplit(b")", 1)[-1].split()[1:2] == [str(parent).encode()]
    ]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    synth.write_clip(d / "long.mp4", d / "long.json", seed=8, frames=300, size=(160, 120), fps=25)
    return d / "long.mp4"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_file_run_loses_nothing_when_a_worker_dies_or_hangs(
    sig, long_clip, random_config, tmp_path
):
    run = Run(
        tmp_path, "annotate", "-q", long_clip, "--config", random_config, "--workers", "2",
        "--results", "r.jsonl", "--report", "report.json",
    )  # fmt: skip
    run.wait_for(lambda: len(lines_so_far(tmp_path / "r.jsonl")) >= 20, 240, "20 results")
    pid = run.stage_pid("worker")
    (server,) = _children_named(run.proc.pid, b"streamseg.pipeline.forkserver")
    os.kill(pid, sig)  # SIGSTOP: frozen; found silent, killed and replaced
    code = run.wait(timeout=300)
    err = run.stderr()
    assert code == 0, err
    assert "Traceback" not in err
    assert "restarted after dying or hanging: inference[" in err
    lines = results_lines(tmp_path / "r.jsonl")
    assert [r["frame"] for r in lines] == list(range(300))  # all of them, in order, once each
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["inference"]["long"]["out"] == 300 and report["dropped"] == {}
    assert report["extra"]["inference"]["workers_lost"] >= 1
    assert stage_pids(run.proc.pid, "") == []
    assert not Path(f"/proc/{server}").exists()  # nor the fork server


def test_a_killed_fork_server_costs_only_speed(long_clip, random_config, tmp_path):
    """Workers are forked from a preloaded server (streamseg.pipeline.forkserver); with it
    gone, a lost worker is started the usual way."""
    run = Run(
        tmp_path, "annotate", "-q", long_clip, "--config", random_config, "--workers", "2",
        "--results", "r.jsonl", "--report", "report.json",
    )  # fmt: skip
    run.wait_for(lambda: len(lines_so_far(tmp_path / "r.jsonl")) >= 20, 240, "20 results")
    (server,) = _children_named(run.proc.pid, b"streamseg.pipeline.forkserver")
    assert len(stage_pids(run.proc.pid, "worker")) == 2  # forked, yet children of the run
    os.kill(server, signal.SIGKILL)
    os.kill(run.stage_pid("worker"), signal.SIGKILL)
    code = run.wait(timeout=300)
    err = run.stderr()
    assert code == 0, err
    assert "Traceback" not in err
    assert "restarted after dying or hanging: inference[" in err
    lines = results_lines(tmp_path / "r.jsonl")
    assert [r["frame"] for r in lines] == list(range(300))
    assert stage_pids(run.proc.pid, "") == []


@pytest.mark.rtsp
@pytest.mark.parametrize("stage", ["worker", "dispatcher"])
def test_live_run_goes_on_when_a_worker_or_the_dispatcher_is_killed(
    stage, camera, random_config, tmp_path
):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    collector = Collector(endpoint)
    run = Run(
        tmp_path, "watch", "-q", f"cam={camera.url}", "--config", random_config,
        "--workers", "2", "--publish", endpoint, "--report", "report.json",
        "--stall-s", "2", "--retry-max-s", "1",
    )  # fmt: skip
    try:
        run.wait_for(lambda: len(collector.since(0)) >= 5, 180, "published results")
        pid = run.stage_pid(stage)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        run.wait_for(lambda: "restarting it (restart 1)" in run.stderr(), 20, "the restart")
        run.wait_for(lambda: len(collector.since(t_kill + 0.5)) >= 10, 120, "results again")
    finally:
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait(timeout=60)
        collector.close()
    err = run.stderr()
    assert code == 0, err
    assert "Traceback" not in err
    frames = [h["frame"] for h in collector.since(0)]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # in order, once each
    restarted = "inference[" if stage == "worker" else "inference 1"
    assert f"restarted after dying or hanging: {restarted}" in err
    if stage == "dispatcher":  # what it held is lost with it (in_transit), as with one process
        return
    report = json.loads((tmp_path / "report.json").read_text())
    # the frames the killed worker held (none if it was between batches) are counted, and
    # every frame inference took in is accounted for (out, dropped, or at a worker at the end)
    inf = report["inference"]["cam"]
    assert inf["dropped"].get("worker_lost", 0) <= 2  # at most the batch it held (max_batch 2)
    held = inf["in"] - inf["out"] - sum(inf["dropped"].values())
    assert 0 <= held <= 2 * 2 + 2, inf  # at most a batch per worker, and a batch forming
    assert stage_pids(run.proc.pid, "") == []
