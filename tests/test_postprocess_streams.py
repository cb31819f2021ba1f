"""postprocess.streams.StreamBook: the per-stream decisions, from messages built by hand."""

from __future__ import annotations

import numpy as np

from streamseg.accounting import Counters
from streamseg.postprocess.streams import StreamBook
from streamseg.wire.messages import Detections, EndOfStream, StreamStart


def det(stream: str, frame: int) -> Detections:
    empty = np.zeros((0, 4), np.float32)
    return Detections(
        stream, frame, frame / 30, 0.0, 64, 48, empty, np.zeros(0, np.float32),
        np.zeros(0, np.int64), np.zeros((0, 28, 28), np.float32),
    )  # fmt: skip


def test_file_stream_lifecycle_counts_and_sequence():
    counters = Counters()
    book = StreamBook(counters, streams=1)
    assert book.start(StreamStart("a", 64, 48, 30.0, frames=2))
    assert not book.start(StreamStart("a", 64, 48, 30.0, frames=2, reconnects=1))  # not new
    for frame in (0, 1):
        state = book.take(det("a", frame))
        assert state is not None and state.published == frame
        book.done(state, 0.010)
    assert not book.finished()
    assert book.end(EndOfStream("a", 2)) is not None
    assert book.finished() and not book.lost_any
    book.report_latency()
    rec = counters.to_json()["a"]
    assert (rec["in"], rec["out"], rec["dropped"]) == (2, 2, {})
    assert rec["sent"] == 2 and rec["lost"] is False and rec["reconnects"] == 1
    assert rec["latency_p50_ms"] == rec["latency_p99_ms"] == 10.0


def test_missing_frames_in_a_file_run_are_lost_but_not_in_a_live_run():
    counters = Counters()
    book = StreamBook(counters, streams=2)
    book.start(StreamStart("file", 64, 48, 30.0))
    book.start(StreamStart("cam", 64, 48, 30.0, live=True))
    book.done(book.take(det("file", 0)), 0.0)
    book.done(book.take(det("cam", 0)), 0.0)
    book.end(EndOfStream("cam", 5))  # live: 4 dropped on the way is by design
    assert not book.lost_any
    book.end(EndOfStream("file", 3))
    assert book.lost_any and book.finished()
    assert counters.to_json()["file"]["lost"] is True
    assert counters.to_json()["cam"]["lost"] is False


def test_frames_of_unknown_or_ended_streams_are_counted_drops():
    counters = Counters()
    book = StreamBook(counters, streams=0)
    assert book.take(det("ghost", 0)) is None
    book.start(StreamStart("a", 64, 48, 30.0))
    book.end(EndOfStream("a", 0))
    assert book.take(det("a", 1)) is None
    c = counters.to_json()
    assert c["ghost"]["dropped"] == {"unknown_stream": 1}
    assert c["a"]["dropped"] == {"after_end": 1}
    assert not book.finished()  # streams=0: a live run never finishes by itself


def test_a_source_that_never_opened_still_ends_its_stream():
    book = StreamBook(Counters(), streams=1)
    assert book.end(EndOfStream("a", 0, "no such file", lost=True)) is None
    assert book.finished() and book.lost_any


def test_empty_book():
    book = StreamBook(Counters(), streams=1)
    book.report_latency()
    assert not book.finished() and not book.lost_any
