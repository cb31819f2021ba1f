"""pipeline.watchdog.StageWatch and report.Tally: liveness verdicts and counters across a
restarted stage's lives, from samples with made-up times."""

from __future__ import annotations

import pytest

from streamseg.pipeline.report import Tally, add_counts
from streamseg.pipeline.watchdog import (
    FAIL,
    KILL,
    RESTART,
    Action,
    Drain,
    StageWatch,
    describe_exit,
)
from streamseg.wire.messages import Stats


def test_silent_ready_stage_is_killed_after_hang_s():
    w = StageWatch(live=False, hang_s=2.0)
    w.started("inference", 0.0)
    w.seen("inference", 1.0, ready=True)
    assert w.check(2.9) == []
    assert w.check(3.0) == [Action(KILL, "inference", "hung: no heartbeat for 2.0 s")]
    assert w.check(3.5) == []  # asked once; its exit comes next
    w.exited("inference", -9, 3.6)
    assert w.check(3.7) == [Action(FAIL, "inference", "hung: no heartbeat for 2.0 s")]
    assert w.check(10.0) == []  # a failure is reported once


def test_loading_stage_gets_start_s_not_hang_s():
    w = StageWatch(live=False, hang_s=2.0, start_s=60.0)
    w.started("inference", 0.0)
    w.seen("inference", 0.5)  # heartbeat while loading, then silent (holding the interpreter)
    assert w.check(30.0) == []
    assert w.check(60.0) == [Action(KILL, "inference", "not ready 60 s after starting")]


def test_final_report_ends_hang_checks():
    w = StageWatch(live=False, hang_s=2.0)
    w.started("postprocess", 0.0)
    w.seen("postprocess", 1.0, ready=True)
    w.seen("postprocess", 2.0, final=True)  # on its way out, delivering what it holds
    assert w.check(30.0) == []


@pytest.mark.parametrize("code", [0, 3])
def test_normal_exits_are_not_deaths(code):
    for live in (False, True):
        w = StageWatch(live=live)
        w.started("source[a]", 0.0)
        w.exited("source[a]", code, 1.0)
        assert w.check(100.0) == [] and not w.down("source[a]")


def test_file_run_fails_on_a_death():
    w = StageWatch(live=False)
    w.started("source[a]", 0.0)
    w.exited("source[a]", -9, 5.0)
    assert w.check(5.0) == [Action(FAIL, "source[a]", "killed by SIGKILL")]


def test_an_error_exit_of_a_running_stage_is_a_death():
    w = StageWatch(live=False)
    w.started("postprocess", 0.0)
    w.seen("postprocess", 1.0, ready=True)
    w.exited("postprocess", 2, 9.0)  # e.g. the disk filled up
    assert w.check(9.0) == [Action(FAIL, "postprocess", "exited with 2")]


def test_live_run_restarts_with_doubling_backoff():
    w = StageWatch(live=True, retry_min_s=0.5, retry_max_s=1.5)
    t = 0.0
    waits = []
    for _ in range(4):
        w.started("inference", t)
        w.seen("inference", t, ready=True)
        w.exited("inference", 1, t)
        assert w.down("inference") and not w.running("inference")
        died = t
        while not (actions := w.check(t)):
            t += 0.25
        assert actions == [Action(RESTART, "inference", "exited with 1")]
        waits.append(t - died)
    assert waits == [0.5, 1.0, 1.5, 1.5]
    assert w.restarts == {"inference": 4}


def test_describe_exit():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "exited with 1"
    assert describe_exit(130) == "stopped (interrupted)"
    assert describe_exit(None) == "still running"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        StageWatch(live=True, hang_s=0)
    with pytest.raises(ValueError):
        StageWatch(live=True, retry_min_s=2, retry_max_s=1)


def test_tally_adds_the_lives_of_a_restarted_stage():
    t = Tally()
    assert t.get("inference") is None
    t.update("inference", Stats("inference", {"a": {"in": 5, "out": 4, "dropped": {"stale": 1}}}))
    t.update("inference", Stats("inference", {"a": {"in": 9, "out": 7, "dropped": {"stale": 2}}}))
    t.restarted("inference")
    assert t.get("inference").counters["a"]["in"] == 9  # the last life's report, kept
    t.update(
        "inference",
        Stats("inference", {"a": {"in": 3, "out": 3}, "b": {"in": 1, "out": 0}}, busy_s=1.0),
    )
    merged = t.get("inference")
    assert merged.counters["a"] == {"in": 12, "out": 10, "dropped": {"stale": 2}}
    assert merged.counters["b"] == {"in": 1, "out": 0, "dropped": {}}
    assert merged.busy_s == 1.0
    assert t.names() == ["inference"]


def test_add_counts_keeps_the_newer_fields():
    old = {"in": 1, "out": 1, "dropped": {"x": 1}, "state": "up"}
    new = {"in": 2, "out": 0, "dropped": {"x": 1, "y": 3}, "state": "gone"}
    assert add_counts(old, new) == {"in": 3, "out": 1, "dropped": {"x": 2, "y": 3}, "state": "gone"}
    assert add_counts({}, {}) == {"in": 0, "out": 0, "dropped": {}}


def test_add_counts_adds_instances_merged_away():
    """Duplicates dropped and fragments joined by postprocess add up over its lives."""
    old = {"in": 1, "out": 1, "dropped": {}, "duplicates": 2}
    new = {"in": 1, "out": 1, "dropped": {}, "duplicates": 1, "fragments_joined": 4}
    merged = add_counts(old, new)
    assert merged["duplicates"] == 3 and merged["fragments_joined"] == 4
    assert "duplicates" not in add_counts({}, {})


def test_a_paused_supervisor_gives_every_stage_a_fresh_hang_s():
    """Ctrl-Z / SIGSTOP of the supervisor: its own gap is no evidence against the stages."""
    w = StageWatch(live=True, hang_s=2.0, pause_s=1.0)
    w.started("inference", 0.0)
    w.started("postprocess", 0.0)
    w.seen("inference", 1.0, ready=True)
    w.seen("postprocess", 1.0, ready=True)
    assert w.check(1.2) == []
    # stopped from 1.2 to 16.2; only postprocess's queued heartbeat is read before the check
    w.seen("postprocess", 16.2)
    assert w.check(16.2) == []
    assert w.paused == [(16.2, pytest.approx(15.0))]
    for t in (17.0, 17.8, 18.1):  # inference's fresh hang_s runs from 16.2
        w.seen("postprocess", t)
        assert w.check(t) == []
    assert w.check(18.2) == [Action(KILL, "inference", "hung: no heartbeat for 2.0 s")]


def test_without_pause_s_a_long_silence_is_a_hang():
    w = StageWatch(live=True, hang_s=2.0)
    w.started("inference", 0.0)
    w.seen("inference", 1.0, ready=True)
    assert w.check(1.2) == []
    assert w.check(16.2) == [Action(KILL, "inference", "hung: no heartbeat for 15.2 s")]


def test_a_pause_moves_start_up_timers_on():
    w = StageWatch(live=False, hang_s=2.0, start_s=10.0, start_idle_s=5.0, pause_s=1.0)
    w.started("inference", 0.0)
    assert w.check(0.5) == []
    assert w.check(30.5) == []  # the supervisor was stopped for 30 s
    for t in (31.5, 32.5, 33.5, 34.5, 35.4):
        assert w.check(t) == []
    assert w.check(35.5) == [
        Action(
            KILL, "inference", "frozen while starting (importing): no sign of progress for 5.0 s"
        )
    ]


def test_a_starting_stage_is_frozen_without_progress_not_after_start_s():
    w = StageWatch(live=False, hang_s=2.0, start_s=300.0, start_idle_s=10.0)
    w.started("postprocess", 0.0)
    for t in range(1, 40):  # importing: CPU time used (no report before its reporter exists)
        w.progress("postprocess", float(t))
        assert w.check(float(t)) == []
    w.seen("postprocess", 40.0)  # loading: heartbeats
    assert w.check(49.9) == []
    assert w.check(50.0) == [
        Action(
            KILL, "postprocess", "frozen while starting (loading): no sign of progress for 10.0 s"
        )
    ]
    assert w.problem("postprocess").startswith("frozen while starting (loading): no sign of")


def test_a_stage_dying_too_often_is_not_restarted_again():
    """A full disk: every new life dies at its first write. Live runs give up, with why."""
    w = StageWatch(live=True, retry_min_s=0.5, retry_max_s=1.0, max_deaths=3, deaths_window_s=60)
    t = 0.0
    actions: list[Action] = []
    for _ in range(3):
        w.started("postprocess", t)
        w.seen("postprocess", t + 0.5, ready=True)
        w.exited("postprocess", 2, t + 1.0)
        t += 1.0
        while not (actions := w.check(t)):
            t += 0.25
    assert [a.kind for a in actions] == [FAIL]
    assert actions[0].reason.startswith("died 3 times in ")
    assert actions[0].reason.endswith("(last: exited with 2); not restarted again")
    assert w.restarts == {"postprocess": 2}
    assert w.check(t + 100) == []  # said once


def test_deaths_far_apart_are_restarted_for_ever():
    w = StageWatch(live=True, retry_min_s=0.5, retry_max_s=1.0, max_deaths=3, deaths_window_s=10)
    t = 0.0
    for _ in range(6):
        w.started("source[a]", t)
        w.exited("source[a]", 1, t + 20.0)
        t += 20.0
        while not (actions := w.check(t)):
            t += 0.25
        assert actions == [Action(RESTART, "source[a]", "exited with 1")]
    assert w.restarts == {"source[a]": 6}


def test_a_restarted_stage_is_a_problem_until_it_settles():
    """/healthz must not flip to 200 between the deaths of a stage restarting in a loop."""
    w = StageWatch(live=True, retry_min_s=0.5, settle_s=10.0)
    w.started("postprocess", 0.0)
    w.seen("postprocess", 1.0, ready=True)
    assert w.problem("postprocess", 2.0) is None  # never died: healthy once ready
    w.exited("postprocess", 2, 3.0)
    assert w.problem("postprocess", 3.0) == "exited with 2, restarting"
    w.check(3.5)
    w.started("postprocess", 3.5)
    assert w.problem("postprocess", 4.0) == "starting"
    w.seen("postprocess", 5.0, ready=True)
    assert w.problem("postprocess", 6.0) == "restarted 1 s ago (1 death so far)"
    assert w.problem("postprocess", 15.0) is None
    assert w.problem("postprocess") is None  # (no time given: no settling)


def test_drain_waits_while_a_stage_is_busy():
    d = Drain(30.0)
    assert not d.stuck(False, 0, False, 0.0)
    assert not d.stuck(True, 5, False, 0.5)  # every source ended; 5 frames done
    t = 0.5
    while t < 100.0:  # one batch takes 100 s: busy all along, nothing finished
        t += 0.2
        assert not d.stuck(True, 5, True, t)
    assert not d.stuck(True, 6, False, 100.2)  # done: a frame finished
    assert not d.stuck(True, 6, False, 130.0)
    assert d.stuck(True, 6, False, 130.5)  # idle, frames missing: stuck after wait_s


def test_drain_does_not_count_its_own_pause():
    d = Drain(5.0, pause_s=1.0)
    for t in range(9):
        assert not d.stuck(True, 5, False, t / 2)
    assert not d.stuck(True, 5, False, 60.0)  # stopped for 56 s: not waiting
    assert not d.stuck(True, 5, False, 60.9)
    assert d.stuck(True, 5, False, 61.0)
