"""pipeline.report: exit codes, summary and per-stream lines, from counters built by hand."""

from __future__ import annotations

import pytest

from streamseg.pipeline.report import RunReport, exit_code, stream_lines, summary
from streamseg.wire.messages import Stats

ALL_OK = {"source": 0, "inference": 0, "postprocess": 0}


def report(**kw) -> RunReport:
    return RunReport(exit_code=0, elapsed_s=2.0, **kw)


def finished(decoded: int, done: int, **source) -> RunReport:
    """A one-stream run ("a") whose source decoded `decoded` frames and `done` got results."""
    return report(sources={"a": {"in": decoded, **source}}, postprocess={"a": {"out": done}})


# --- exit_code -------------------------------------------------------------------------------


@pytest.mark.parametrize("live", [False, True])
def test_every_frame_with_results_is_0(live):
    r = finished(5, 5)
    assert exit_code(ALL_OK, r, live=live, interrupted=False) == 0
    assert r.errors == []


@pytest.mark.parametrize("live", [False, True])
def test_nothing_at_all_is_0(live):
    r = report()
    assert exit_code({}, r, live=live, interrupted=False) == 0
    assert r.errors == []


def test_lost_frames_in_a_file_run_are_3_and_name_the_stream():
    r = report(
        sources={"a": {"in": 5}, "b": {"in": 7}, "c": {"in": 2}},
        postprocess={"a": {"out": 5}, "b": {"out": 4}},  # c: none with results
    )
    assert exit_code(ALL_OK, r, live=False, interrupted=False) == 3
    assert r.errors == [
        "b: 7 frames decoded but 4 with results",
        "c: 2 frames decoded but 0 with results",
    ]


def test_live_runs_may_drop_frames():
    r = finished(50, 31)
    assert exit_code(ALL_OK, r, live=True, interrupted=False) == 0
    assert r.errors == []


@pytest.mark.parametrize("live", [False, True])
def test_a_source_reporting_lost_is_3(live):
    r = finished(3, 3, lost=True)  # e.g. a truncated file, or a camera given up on
    assert exit_code(ALL_OK, r, live=live, interrupted=False) == 3
    assert r.errors == []


def test_a_source_exiting_3_is_3():
    r = finished(3, 3)
    assert exit_code({**ALL_OK, "source": 3}, r, live=False, interrupted=False) == 3


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (1, "exited with 1"),
        (4, "exited with 4"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
    ],
)
def test_a_stage_failing_is_1_and_named(code, why):
    r = finished(5, 3)  # lost frames too: the failure is what gets reported
    assert exit_code({**ALL_OK, "inference": code}, r, live=False, interrupted=False) == 1
    assert r.errors == [f"inference {why}"]


def test_a_stage_still_running_at_the_end_is_1():
    r = finished(5, 5)
    assert exit_code({**ALL_OK, "inference": None}, r, live=True, interrupted=False) == 1


def test_a_stage_that_could_not_start_is_2_even_when_others_failed():
    r = report()
    codes = {"source": 2, "inference": 1, "postprocess": 2}
    assert exit_code(codes, r, live=False, interrupted=False) == 2
    assert r.errors == [
        "source could not start (see its error above)",
        "postprocess could not start (see its error above)",
    ]


@pytest.mark.parametrize("live", [False, True])
def test_bad_input_beats_interruption(live):
    r = report()
    assert exit_code({**ALL_OK, "source": 2}, r, live=live, interrupted=True) == 2


@pytest.mark.parametrize(("live", "code"), [(False, 130), (True, 0)])
def test_interrupted(live, code):
    # Stages stopped by the interrupt exit 130 themselves; frames in flight are not "lost".
    r = finished(9, 4)
    codes = {"source": 130, "inference": 130, "postprocess": 0}
    assert exit_code(codes, r, live=live, interrupted=True) == code
    assert r.errors == []


@pytest.mark.parametrize("live", [False, True])
def test_a_stage_that_died_or_hung_is_1_even_when_interrupted(live):
    r = finished(5, 5)
    assert exit_code(ALL_OK, r, live=live, interrupted=True, failed=True) == 1
    # a stage that ran and then stopped with its own error (a full disk) failed the run: 1
    assert exit_code({**ALL_OK, "source": 2}, r, live=live, interrupted=False, failed=True) == 1


# --- summary -----------------------------------------------------------------------------------


def test_summary_counts_frames_drops_and_busy_time():
    r = RunReport(
        exit_code=0,
        elapsed_s=5.0,
        startup_s=1.5,
        sources={"a": {"in": 10, "dropped": {"queue_full": 2}}, "b": {"in": 6}},
        inference={"a": {"in": 8, "out": 7, "dropped": {"stale": 1}}, "b": {"out": 6}},
        postprocess={"a": {"out": 7}, "b": {"out": 6}},
        busy_s={"source": 0.5, "inference": 2.3},
    )
    assert r.frames_done() == 13
    assert r.processing_fps() == pytest.approx(13 / 3.5)
    assert summary(r) == (
        "done: 13/16 frames with results in 5.0s (2.6 fps); dropped 3 (queue_full 2, stale 1); "
        "busy: inference 2.3s, source 0.5s"
    )


def test_summary_counts_frames_neither_done_nor_dropped_as_in_transit():
    r = report(
        sources={"a": {"in": 10, "dropped": {"queue_full": 1}}},
        postprocess={"a": {"out": 6}},
    )
    assert summary(r) == (
        "done: 6/10 frames with results in 2.0s (3.0 fps); "
        "dropped 4 (in_transit 3, queue_full 1); busy: n/a"
    )


def test_summary_appends_stream_lines_then_errors():
    r = report(stream_lines=["a: line"], errors=["a: lost", "b: lost"])
    assert summary(r).splitlines()[1:] == ["a: line", "a: lost", "b: lost"]


def test_summary_of_an_empty_run():
    r = RunReport(exit_code=2, elapsed_s=0.0)
    assert r.frames_done() == 0 and r.processing_fps() == 0.0
    assert summary(r) == "done: 0/0 frames with results in 0.0s (0.0 fps); dropped 0; busy: n/a"


# --- stream_lines ------------------------------------------------------------------------------


def test_stream_lines_fps_from_counts_and_elapsed():
    sources = {
        "a": {"in": 50, "reconnects": 1, "dropped": {"queue_full": 2}, "state": "up"},
        "b": {"in": 20, "state": "gone"},
        "c": {"in": 3, "state": "connecting"},
    }
    post_a = {"out": 40, "dropped": {"x": 1}, "latency_p50_ms": 12.4, "latency_p99_ms": 80.6}
    stats = {
        "inference": Stats("inference", {"a": {"in": 48, "dropped": {"stale": 3}}}),
        # d: results of a stream the sources no longer report
        "postprocess": Stats("postprocess", {"a": post_a, "d": {"out": 5}}),
    }
    assert stream_lines(sources, stats, 10.0) == [
        "a: in 5.0 fps, processed 4.0 fps, dropped 6, reconnects 1, latency p50 12 ms p99 81 ms",
        "b: in 2.0 fps, processed 0.0 fps, dropped 0, reconnects 0, latency p50 nan ms p99 nan ms"
        " (gone)",
        "c: in 0.3 fps, processed 0.0 fps, dropped 0, reconnects 0, latency p50 nan ms p99 nan ms"
        " (connecting)",
        "d: in 0.0 fps, processed 0.5 fps, dropped 0, reconnects 0, latency p50 nan ms p99 nan ms",
    ]


def test_stream_lines_without_stage_reports():
    assert stream_lines({"a": {"in": 4}}, {}, 2.0) == [
        "a: in 2.0 fps, processed 0.0 fps, dropped 0, reconnects 0, latency p50 nan ms p99 nan ms"
    ]


def test_no_streams_no_lines():
    assert stream_lines({}, {}, 1.0) == []
    assert stream_lines({}, {"postprocess": Stats("postprocess", {})}, 0.0) == []
