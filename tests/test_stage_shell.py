"""stage.shell: the stats reporter (with an injected clock) and the shared stage-loop ending,
checked on a real ZeroMQ socket standing in for the runner."""

from __future__ import annotations

import subprocess
import sys

import pytest
import zmq
from harness import Clock

from streamseg.accounting import Counters
from streamseg.stage.shell import BusyTimer, StatsReporter, process_age_s, run_stage_loop
from streamseg.wire import sockets
from streamseg.wire.messages import Stats
from streamseg.wire.receiver import Receiver

WAIT_MS = 10_000  # only ever waited out when a test is about to fail


NO_WAIT = {"wait_in_s": 0.0, "wait_out_s": 0.0}


@pytest.fixture
def runner(tmp_path):
    """(endpoint, receiver): the runner's PULL end, bound on an ipc endpoint.

    It lives in a zmq.Context of its own: run_stage_loop ends with sockets.close_all, which
    destroys the stage's (shared) context and would take this socket with it.
    """
    endpoint = f"ipc://{tmp_path}/stats"
    assert len(endpoint) < 100  # ipc paths are limited to ~107 bytes
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(endpoint)
    try:
        yield endpoint, Receiver(sock, name="runner")
    finally:
        sockets.close_all(abort=True)  # the reporters' sockets
        sock.close(0)
        ctx.term()


def next_stats(receiver: Receiver) -> Stats:
    msg = receiver.recv(WAIT_MS)
    assert isinstance(msg, Stats), f"expected a Stats report, got {msg!r}"
    return msg


def test_tick_reports_once_per_interval(runner):
    endpoint, rx = runner
    clock, counters = Clock(), Counters()
    rep = StatsReporter(endpoint, "inference", counters, every_s=1.0, clock=clock)
    for now in (0.0, 0.5, 0.999, 1.0, 1.5, 1.999, 2.0):
        clock.t = now
        counters.count_in("a")  # each tick sees a different count: which one sent shows
        rep.tick()
    rep.final()
    # Nothing was sent before t = 1.0 (4 frames in), one at 1.0, none until 2.0 (7 in): the
    # reports arrive in order, so anything sent in between would come first.
    got = [next_stats(rx) for _ in range(3)]
    assert [(m.counters["a"]["in"], m.final) for m in got] == [(4, False), (7, False), (7, True)]
    assert rx.recv(0) is None


def test_ready_says_ready(runner):
    endpoint, rx = runner
    rep = StatsReporter(endpoint, "postprocess", Counters(), clock=Clock())
    rep.ready()
    got = next_stats(rx)
    startup = got.extra.pop("startup_s")
    assert got == Stats("postprocess", {}, 0.0, False, NO_WAIT, name="postprocess", ready=True)
    # from this process's start (the test session's), imports included
    assert 0 < startup == pytest.approx(process_age_s(), abs=5.0)


def test_heartbeats_and_the_end_are_typed_fields(runner):
    """A heartbeat says alive (and whether ready) with no counters; after a source's
    end-of-stream every report says ended."""
    endpoint, rx = runner
    counters = Counters()
    counters.count_in("a", 2)
    rep = StatsReporter(endpoint, "source", counters, name="source[a]", clock=Clock())
    rep.ready()
    assert next_stats(rx).ready
    rep.start_heartbeat(every_s=0.01)
    beat = next_stats(rx)
    assert beat == Stats("source", {}, name="source[a]", ready=True, heartbeat=True)
    with BusyTimer(rep):  # work in progress: the heartbeats say busy
        while not (beat := next_stats(rx)).busy:
            pass
    assert beat == Stats("source", {}, name="source[a]", ready=True, heartbeat=True, busy=True)
    rep.stop_heartbeat()
    while rx.recv(200) is not None:  # the beats sent before it stopped
        pass
    rep.ended = True
    rep.report_now()
    got = next_stats(rx)
    assert (got.ended, got.heartbeat, got.counters["a"]["in"]) == (True, False, 2)


def test_final_carries_busy_time_and_counters_exactly(runner):
    endpoint, rx = runner
    counters = Counters()
    counters.count_in("a", 5)
    counters.count_out("a", 3)
    counters.drop("a", "stale", 2)
    counters.count_in("b")
    rep = StatsReporter(endpoint, "source", counters, name="source[a]", clock=Clock())
    rep.busy_s = 1.25
    rep.wait_in_s, rep.wait_out_s = 0.5, 0.03125
    rep.final()
    assert next_stats(rx) == Stats(
        "source",
        {
            "a": {"in": 5, "out": 3, "dropped": {"stale": 2}},
            "b": {"in": 1, "out": 0, "dropped": {}},
        },
        1.25,
        True,
        {"wait_in_s": 0.5, "wait_out_s": 0.0312},
        name="source[a]",
    )


def test_final_with_no_counters(runner):
    endpoint, rx = runner
    StatsReporter(endpoint, "inference", Counters(), clock=Clock()).final()
    assert next_stats(rx) == Stats("inference", {}, 0.0, True, NO_WAIT, name="inference")


def test_no_endpoint_sends_nothing_and_does_not_fail():
    clock = Clock()
    rep = StatsReporter(None, "inference", Counters(), clock=clock)
    assert rep.sock is None
    clock.t = 10.0
    rep.tick()
    rep.ready()
    rep.final()
    assert run_stage_loop(lambda: 0, rep) == 0


# --- run_stage_loop ----------------------------------------------------------------------------


def connected_reporter(endpoint: str, rx: Receiver) -> StatsReporter:
    """A reporter that already reached the runner, as a stage has once it said it is ready."""
    counters = Counters()
    counters.count_in("a", 2)
    rep = StatsReporter(endpoint, "inference", counters, clock=Clock())
    rep.ready()
    assert next_stats(rx).ready is True
    return rep


@pytest.mark.parametrize("code", [0, 3])
def test_loop_code_is_returned_then_cleanup_and_final_report(runner, code):
    endpoint, rx = runner
    rep = connected_reporter(endpoint, rx)
    calls = []

    def loop() -> int:
        calls.append("loop")
        return code

    def cleanup() -> None:
        calls.append("cleanup")
        rep.busy_s = 0.5  # what cleanup does still makes the final report

    assert run_stage_loop(loop, rep, cleanup=cleanup) == code
    assert calls == ["loop", "cleanup"]
    final = next_stats(rx)
    assert final.final and final.busy_s == 0.5 and final.counters["a"]["in"] == 2


def test_interrupted_loop_returns_130_then_cleanup_and_final_report(runner):
    endpoint, rx = runner
    rep = connected_reporter(endpoint, rx)
    calls = []

    def loop() -> int:
        calls.append("loop")
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM via setup_process

    assert run_stage_loop(loop, rep, cleanup=lambda: calls.append("cleanup")) == 130
    assert calls == ["loop", "cleanup"]
    final = next_stats(rx)
    assert final.final and final.counters == {"a": {"in": 2, "out": 0, "dropped": {}}}


def test_a_failing_cleanup_still_sends_the_final_report(runner):
    endpoint, rx = runner
    rep = connected_reporter(endpoint, rx)

    def cleanup() -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_stage_loop(lambda: 0, rep, cleanup=cleanup)
    assert next_stats(rx).final


def test_a_crashing_loop_still_cleans_up_and_reports(runner):
    endpoint, rx = runner
    rep = connected_reporter(endpoint, rx)
    calls = []

    def loop() -> int:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        run_stage_loop(loop, rep, cleanup=lambda: calls.append("cleanup"))
    assert calls == ["cleanup"]
    assert next_stats(rx).final


def test_busy_timer_adds_to_the_chosen_phase():
    rep = StatsReporter(None, "inference", Counters())
    ticks = iter([1.0, 1.5, 10.0, 10.25, 20.0, 22.0])
    clock = lambda: next(ticks)  # noqa: E731
    for what in ("busy", "wait_in", "wait_out"):
        with BusyTimer(rep, clock, what=what):
            pass
    assert (rep.busy_s, rep.wait_in_s, rep.wait_out_s) == (0.5, 0.25, 2.0)
    with pytest.raises(ValueError, match="wait_in"):
        BusyTimer(rep, what="idle")


def test_process_age_counts_from_the_process_start():
    import subprocess
    import sys

    code = (
        "import time; time.sleep(1.0)\n"
        "from streamseg.stage.shell import process_age_s; print(process_age_s())"
    )
    age = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert 1.0 <= age < 30.0  # the sleep before the import counts; /proc has 10 ms ticks


def test_a_stage_process_ends_without_teardown_but_says_everything():
    """exit_now skips Python's teardown (about 1 s with torch loaded) yet flushes what the stage
    printed and logged, and keeps its exit code."""
    code = (
        "import logging, sys; from streamseg.stage.__main__ import exit_now\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "print('said', end=''); logging.getLogger('x').warning('logged')\n"
        "exit_now(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (3, "said")
    assert "logged" in proc.stderr


def test_a_stop_during_a_frames_outputs_waits_for_the_frame():
    """SIGTERM (turned into KeyboardInterrupt by setup_process) inside `uninterrupted` lets the
    block finish, then stops; outside it stops at once; handlers are restored either way."""
    code = (
        "import os, signal; from streamseg.stage.shell import setup_process, uninterrupted\n"
        "setup_process('t')\n"
        "done = []\n"
        "try:\n"
        "    with uninterrupted():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        for _ in range(1000): pass\n"
        "        done.append('whole')\n"
        "except KeyboardInterrupt:\n"
        "    done.append('stopped after')\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    for _ in range(1000): pass\n"
        "    done.append('not stopped')\n"
        "except KeyboardInterrupt:\n"
        "    done.append('stopped at once')\n"
        "print(done)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "['whole', 'stopped after', 'stopped at once']", proc.stderr


_LOST_STOP = """
import sys, time
from streamseg.stage.shell import setup_process
setup_process("t")
class Drop:
    def __del__(self):
        raise {exc}  # as pyzmq's Frame.__dealloc__ when a SIGTERM lands there
try:
    Drop()  # freed at once: its exception cannot propagate ("unraisable")
    for _ in range(500):
        time.sleep(0.01)
    print("ran on")
except KeyboardInterrupt:
    print("stopped")
"""


def test_a_stop_that_lands_where_it_cannot_be_raised_still_stops_the_stage():
    out = subprocess.run(
        [sys.executable, "-c", _LOST_STOP.format(exc="KeyboardInterrupt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == "stopped"
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr


def test_other_unraisable_errors_are_still_printed():
    out = subprocess.run(
        [sys.executable, "-c", _LOST_STOP.format(exc="ValueError('boom')")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == "ran on"
    assert "Exception ignored" in out.stderr and "boom" in out.stderr
