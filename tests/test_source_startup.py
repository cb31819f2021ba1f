"""Sources that cannot work fail at once (exit 2, one line naming the source); sources that may
come back (a refused connection, a timeout) are retried as before. Real RTSP server, real runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from rtspfixture import free_port

from streamseg.source.decode import first_contact, startup_problem
from streamseg.source.spec import SourceError, parse_source


class Clock:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def watch(*args: str | Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "streamseg.cli", "watch", "-q", *map(str, args)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [v for v in proc.stderr.splitlines() if v.startswith("streamseg: error:")]


def test_missing_camera_is_permanent():
    problem = startup_problem(parse_source("/dev/video99"))
    assert problem == "/dev/video99: no such camera device"


def test_a_file_that_is_no_video_is_permanent(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video\n")
    with pytest.raises(SourceError) as e:
        from streamseg.source.decode import open_input

        open_input(parse_source(str(path)))
    assert e.value.permanent


@pytest.mark.rtsp
def test_rtsp_404_is_permanent_and_a_refused_port_is_not(camera):
    missing = camera.url.rsplit("/", 1)[0] + "/nope"
    problem = startup_problem(parse_source(missing))
    assert problem is not None and missing in problem and "404" in problem
    refused = parse_source(f"rtsp://127.0.0.1:{free_port()}/cam1")
    assert startup_problem(refused) is None  # may come up: the source stage retries it
    assert startup_problem(parse_source(camera.url)) is None  # it works


@pytest.mark.rtsp
def test_watch_exits_2_on_a_404_naming_the_source(camera, random_config, tmp_path):
    missing = camera.url.rsplit("/", 1)[0] + "/nope"
    out = tmp_path / "out.jsonl"
    proc, _ = watch(missing, "--results", out, "--config", random_config)
    assert proc.returncode == 2, proc.stderr
    (line,) = _errors(proc)
    assert missing in line and "404" in line and "--wait-for-source" in line
    assert "connecting" not in proc.stderr  # no stage started


def test_watch_exits_2_on_a_typo_and_a_missing_camera(random_config, tmp_path):
    out = tmp_path / "out.jsonl"
    for source, says in (
        ("rtps://cam.local/x", "did you mean rtsp://"),
        ("/dev/video99", "no such camera"),
    ):
        proc, _ = watch(source, "--results", out, "--config", random_config)
        assert proc.returncode == 2, proc.stderr
        (line,) = _errors(proc)
        assert source in line and says in line


@pytest.mark.rtsp
def test_a_source_down_at_start_is_retried_until_give_up(camera):
    """With the stage's backoff (0.5 s doubling), on a clock the test drives."""
    clock = Clock()
    refused = parse_source(f"rtsp://127.0.0.1:{free_port()}/cam1")
    why = first_contact(refused, give_up_s=5.0, clock=clock, sleep=clock.advance)
    assert why is not None and why.startswith("gone: down for 5 s (") and "refused" in why
    assert clock.slept == [0.5, 1.0, 2.0, 1.5]  # the last wait ends at the deadline
    assert first_contact(parse_source(camera.url), give_up_s=5.0, clock=clock) is None


@pytest.mark.rtsp
def test_watch_gives_up_on_a_refused_port_without_starting_stages(random_config, tmp_path):
    url = f"rtsp://127.0.0.1:{free_port()}/cam1"
    out = tmp_path / "o.jsonl"
    proc, took = watch(url, "--give-up-s", "2", "--results", out, "--config", random_config)
    assert proc.returncode == 3, proc.stderr  # lost, not unusable input
    (line,) = _errors(proc)
    assert "gone: down for 2 s" in line and "Connection refused" in line
    assert took >= 2.0 and "connecting" not in proc.stderr  # it waited; no stage started


def test_wait_for_source_keeps_trying_a_missing_camera(random_config, tmp_path):
    out = tmp_path / "o.jsonl"
    proc, _ = watch(
        "/dev/video99",
        "--wait-for-source",
        "--give-up-s",
        "2",
        "--results",
        out,
        "--config",
        random_config,
    )
    assert proc.returncode == 3, proc.stderr
    assert "no such camera device" in proc.stderr and "gone: down for 2 s" in proc.stderr
