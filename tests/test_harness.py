"""tests/harness.py, which every end-to-end test waits with: it must fail when it should."""

from __future__ import annotations

import time

import pytest
from harness import Clock, Run, wait_until


def test_wait_until_returns_the_first_truthy_value():
    looks = iter([0, None, [], "found"])
    assert wait_until(lambda: next(looks), 5, "a value") == "found"


def test_wait_until_fails_at_the_deadline_naming_what_it_waited_for():
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as e:
        wait_until(lambda: False, 0.2, "the moon", log=lambda: "line 1\nlast line\n")
    assert time.monotonic() - t0 >= 0.2
    msg = str(e.value)
    assert msg.startswith("timed out after 0.2 s waiting for the moon") and "last line" in msg


def test_wait_until_fails_at_once_when_the_thing_watched_ended():
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="the run ended waiting for results"):
        wait_until(lambda: False, 60, "results", ended=lambda: True)
    assert time.monotonic() - t0 < 5


def test_wait_until_takes_what_came_just_before_the_end():
    looks = iter([False, "last"])
    assert wait_until(lambda: next(looks), 60, "x", ended=lambda: True) == "last"


def test_clock_moves_only_when_set():
    clock = Clock(100.0)
    assert clock() == clock() == 100.0
    clock.t += 0.5
    assert clock() == 100.5


def test_run_gives_the_exit_code_and_stderr(tmp_path):
    run = Run(tmp_path, "no-such-command")
    assert run.wait(timeout=60) == 2
    assert "no-such-command" in run.stderr()
    with pytest.raises(AssertionError, match="the run ended"):
        run.wait_for(lambda: False, 60, "results")


def test_a_run_that_does_not_end_in_time_is_killed_and_fails(tmp_path):
    # `subscribe` waits for results that never come
    with Run(tmp_path, "subscribe", "tcp://127.0.0.1:9", "--count", "1") as run:
        with pytest.raises(AssertionError, match="did not end within 0.5 s"):
            run.wait(timeout=0.5)
        assert run.proc.poll() is not None  # killed, and reaped
