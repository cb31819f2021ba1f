"""streamseg from Python (streamseg.api): real runs of the stage processes on real clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import streamseg
from streamseg.tools import synth

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc: each process's parent)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _all_gone(pids: set[int], within_s: float = 5.0) -> set[int]:
    """The processes of `pids` still alive after `within_s` (polled)."""
    deadline = time.monotonic() + within_s
    while (left := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    """A 320x240, 30-frame H.264 clip of moving shapes."""
    d = tmp_path_factory.mktemp("api")
    video = d / "shapes30.mp4"
    synth.write_clip(video, d / "shapes30.json", seed=7, frames=30, size=(320, 240), fps=25)
    return video


def test_every_frame_of_a_file_in_order(clip30, random_config, tmp_path):
    results = tmp_path / "out.jsonl"
    with streamseg.Pipeline(clip30, config=random_config, results=results) as p:
        frames = [(r.stream, r.frame) for r in p]
    assert [f for _, f in frames] == list(range(30))
    assert p.report is not None and p.report.exit_code == 0
    assert p.report.frames == 30 and p.report.decoded == 30
    # the results file, written at the same time, holds the same frames
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(30))


def test_results_carry_masks_and_supervision_detections(clip30, shapes_config):
    pytest.importorskip("supervision")
    from streamseg.client import to_supervision

    with streamseg.Pipeline(clip30, config=shapes_config) as p:
        first = next(iter(p))
    assert first.instances, "the shapes model finds the clip's shapes"
    inst = first.instances[0]
    mask = inst.mask()
    assert mask.shape == (240, 320) and mask.dtype == bool and mask.any()
    det = to_supervision(first)
    assert len(det) == len(first.instances) and det.mask.shape[1:] == (240, 320)
    assert p.report is not None and p.report.exit_code == 130  # stopped early by leaving


@pytest.mark.parametrize("how", ["break", "exception"])
def test_leaving_early_stops_every_process(clip30, random_config, how):
    me = os.getpid()
    seen: set[int] = set()
    p = streamseg.Pipeline(clip30, config=random_config, buffer=1)
    with pytest.raises(RuntimeError) if how == "exception" else _nothing():
        with p:
            for n, _ in enumerate(p):
                seen |= _children(me)
                if n == 10:
                    if how == "exception":
                        raise RuntimeError("the user's code failed")
                    break
    assert seen, "the run's processes were seen"
    assert not _all_gone(seen), "every process the pipeline started has ended"
    assert p.report is not None


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_garbage_collected_pipeline_stops_its_processes(clip30, random_config):
    me = os.getpid()
    p = streamseg.Pipeline(clip30, config=random_config, buffer=1)
    assert p.next(timeout_s=120) is not None
    seen = _children(me)
    assert seen
    del p  # (CPython: the last reference; the finalizer stops the run)
    assert not _all_gone(seen)


def test_two_pipelines_at_once_and_one_in_a_thread(clip30, random_config):
    got: dict[str, list[int]] = {}

    def consume(name: str) -> None:
        with streamseg.Pipeline(f"{name}={clip30}", config=random_config) as p:
            got[name] = [r.frame for r in p if r.stream == name]

    thread = threading.Thread(target=consume, args=("b",))
    thread.start()
    consume("a")
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert got == {"a": list(range(30)), "b": list(range(30))}


def test_live_run_with_a_sleeping_consumer_gets_fresh_results_and_counted_drops(
    tmp_path, random_config
):
    video = tmp_path / "long.mp4"
    synth.write_clip(video, tmp_path / "long.json", seed=3, frames=125, size=(160, 120), fps=25)
    received = []
    with streamseg.Pipeline(video, config=random_config, live=True, buffer=1) as p:
        for r in p:
            received.append(r)
            time.sleep(0.5)  # the consumer under test is slow on purpose (not synchronisation)
    report = p.report
    assert report is not None and report.exit_code == 0
    assert p.missed > 0, "what the consumer could not take is dropped and counted"
    frames = [r.frame for r in received]
    assert frames == sorted(frames)
    # fresh: a sleeping consumer skips ahead instead of working through an old backlog
    push = report.sinks["push"]
    assert push["dropped"]["consumer_slow"] == p.missed
    # every frame with results was taken by the consumer or counted as missed
    assert len(received) + p.missed == push["delivered"] + p.missed == report.frames
    assert max(b - a for a, b in zip(frames, frames[1:], strict=False)) > 1


def test_annotate_returns_the_report(clip30, random_config, tmp_path):
    results = tmp_path / "a.jsonl"
    report = streamseg.annotate(clip30, results=results, config=random_config)
    assert report.ok and report.frames == 30 and report.decoded == 30
    assert report.dropped == {}
    assert len(results.read_text().splitlines()) == 30


def test_annotate_raises_the_cli_line_for_what_a_user_can_fix(tmp_path, random_config):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(streamseg.StreamsegError) as e:
        streamseg.annotate(missing, results=tmp_path / "x.jsonl", config=random_config)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamseg.cli",
            "annotate",
            str(missing),
            "--results",
            str(tmp_path / "y.jsonl"),
            "--config",
            str(random_config),
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2
    assert str(e.value) in cli.stderr
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_pipeline_that_cannot_start_raises(tmp_path, random_config):
    with pytest.raises(streamseg.StreamsegError, match="nope.mp4"):
        with streamseg.Pipeline(tmp_path / "nope.mp4", config=random_config) as p:
            list(p)


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("count_objects.py", [], "exit code 0"),
        ("line_crossing.py", [], "crossed left to right"),
        ("forward_results.py", ["{tmp}/fwd.jsonl"], "forwarded 30 frames"),
    ],
)
def test_examples_run(script, args, expect, clip30, tmp_path):
    if script == "line_crossing.py":
        pytest.importorskip("supervision")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), str(clip30), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout


def test_pipeline_started_by_a_thread_that_ended_runs_on(clip30, random_config):
    """A run dies with the thread that forked it (Linux's parent-death signal): the pipeline
    keeps its own, so a web request's thread may start one that the server reads later."""
    made: list[tuple[streamseg.Pipeline, int]] = []

    def starter() -> None:  # starts the run, takes a result (the run is up), and ends
        p = streamseg.Pipeline(clip30, config=random_config)
        first = p.next(timeout_s=120)
        assert first is not None
        made.append((p, first.frame))

    thread = threading.Thread(target=starter)
    thread.start()
    thread.join()
    p, first = made[0]
    with p:
        frames = [first, *(r.frame for r in p)]
    assert frames == list(range(30))
    assert p.report is not None and p.report.exit_code == 0
