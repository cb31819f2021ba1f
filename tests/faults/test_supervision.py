"""The supervisor against its own stages dying, hanging and being stopped: real runs, real
processes killed with real signals, real files checked afterwards.

File runs end promptly (exit 1, a line naming the stage) with outputs that hold whole frames;
live runs restart the stage and results flow again; SIGTERM is Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from faultkit import Collector, Run, lines_so_far, results_lines, stage_pids, video_frames
from rtspfixture import free_port

from streamseg.tools import synth

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # waits of 180 s and 120 s


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """400 frames, 160x120: long enough to kill something in the middle of a file run."""
    d = tmp_path_factory.mktemp("long")
    synth.write_clip(d / "long.mp4", d / "long.json", seed=8, frames=400, size=(160, 120), fps=25)
    return d / "long.mp4"


def annotate(tmp, clip, config) -> Run:
    """One inference process (no dispatcher): the stages killed here are the three of that
    topology; tests/faults/test_workers.py kills dispatchers and workers."""
    return Run(
        tmp, "annotate", "-q", clip, "--config", config, "-o", "out.mp4", "--results", "r.jsonl",
        "--workers", "1",
    )  # fmt: skip


def started_results(tmp, run: Run, n: int = 5) -> None:
    run.wait_for(lambda: len(lines_so_far(tmp / "r.jsonl")) >= n, 180, f"{n} results lines")


@pytest.mark.parametrize("stage", ["source", "inference", "postprocess"])
def test_file_run_ends_promptly_when_a_stage_is_killed(stage, long_clip, random_config, tmp_path):
    run = annotate(tmp_path, long_clip, random_config)
    pid = run.stage_pid(stage)
    # (postprocess: past the first 1-s fragments of the video, which is what survives it)
    started_results(tmp_path, run, 60 if stage == "postprocess" else 5)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    code = run.wait(timeout=30)
    took = time.monotonic() - t_kill
    err = run.stderr()
    assert code == 1, err
    assert took < 10, f"took {took:.1f} s to end"
    assert "killed by SIGKILL: the run stopped" in err and stage in err
    assert "Traceback" not in err
    assert stage_pids(run.proc.pid, "") == []
    lines = results_lines(tmp_path / "r.jsonl")  # only whole lines, in frame order
    assert [r["frame"] for r in lines] == list(range(len(lines))) and len(lines) >= 5
    frames = video_frames(tmp_path / "out.mp4")
    if stage == "postprocess":  # killed itself: what it wrote up to its last fragment survives
        assert frames >= 25
    else:  # postprocess closed both files: they agree
        assert frames == len(lines)


def test_frozen_stage_is_found_hung_and_the_file_run_ends(long_clip, random_config, tmp_path):
    run = annotate(tmp_path, long_clip, random_config)
    pid = run.stage_pid("inference")
    started_results(tmp_path, run)
    os.kill(pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    code = run.wait(timeout=30)
    err = run.stderr()
    assert code == 1, err
    assert time.monotonic() - t_stop < 12
    assert "inference hung: no heartbeat" in err and "Traceback" not in err


def test_sigterm_stops_a_file_run_like_ctrl_c(long_clip, random_config, tmp_path):
    run = annotate(tmp_path, long_clip, random_config)
    started_results(tmp_path, run)
    run.signal(signal.SIGTERM)
    code = run.wait(timeout=30)
    err = run.stderr()
    assert code == 130, err
    assert "stopped by SIGTERM" in err and "done: " in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = results_lines(tmp_path / "r.jsonl")
    assert video_frames(tmp_path / "out.mp4") == len(lines) >= 5


@pytest.mark.rtsp
@pytest.mark.parametrize("stage", ["source", "inference", "postprocess"])
def test_live_run_restarts_a_killed_stage_and_results_resume(
    stage, camera, random_config, tmp_path
):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    collector = Collector(endpoint)
    run = Run(
        tmp_path, "watch", "-q", f"cam={camera.url}", "--config", random_config,
        "--publish", endpoint, "--results", "w.jsonl", "--stall-s", "2", "--retry-max-s", "1",
        "--workers", "1",  # the three stages of one inference process (see annotate above)
    )  # fmt: skip
    try:
        run.wait_for(lambda: len(collector.since(0)) >= 5, 180, "published results")
        pid = run.stage_pid(stage)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        run.wait_for(lambda: "restarting it (restart 1)" in run.stderr(), 10, "the restart")
        run.wait_for(lambda: len(collector.since(t_kill + 0.5)) >= 5, 120, "results again")
        assert stage_pids(run.proc.pid, stage) != [pid]
        frames = [h["frame"] for h in collector.since(t_kill + 0.5)]
        assert frames == sorted(frames)  # frame numbers go on, never back
    finally:
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait(timeout=60)
        collector.close()
    err = run.stderr()
    assert code == 0, err
    assert f"restarted after dying or hanging: {stage}" in err
    assert "Traceback" not in err
    assert stage_pids(run.proc.pid, "") == []
    if stage == "postprocess":  # the new life writes beside the old one, never over it
        assert results_lines(tmp_path / "w.jsonl") and results_lines(tmp_path / "w.part1.jsonl")
