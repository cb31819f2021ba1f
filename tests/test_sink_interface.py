"""postprocess.sinks: the interface the frame loop calls (Outputs), the base for sinks off the
frame path (Threaded: bounded, drop-oldest, counted, never blocking), files opened lazily, and
the annotated image drawn only when a sink asks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from harness import wait_until

from streamseg.postprocess.instances import Instances
from streamseg.postprocess.sinks import FrameOut, Outputs, Rendered, SinkCounts
from streamseg.postprocess.sinks.results import ResultsFiles
from streamseg.postprocess.sinks.threaded import Dropped, Threaded
from streamseg.postprocess.sinks.video import VideoFiles
from streamseg.postprocess.tracking import local_masks
from streamseg.wire.messages import StreamStart
from streamseg.wire.results import Result

H, W = 24, 32
INFO = StreamStart("cam", W, H, 30.0)


def frame_out(n: int, stream: str = "cam", annotated: Rendered | None = None) -> FrameOut:
    """Frame `n` of `stream`, without instances."""
    inst = Instances(
        masks=local_masks(np.zeros((0, H, W), bool)),
        boxes=np.zeros((0, 4), np.float32),
        labels=np.zeros(0, np.int64),
        scores=np.zeros(0, np.float32),
        colors=np.zeros((0, 3)),
        track_ids=np.zeros(0, np.int64),
    )
    result = Result(stream, n, n / 30, 0.0, W, H, [], seq=n)
    return FrameOut(StreamStart(stream, W, H, 30.0), result, inst, annotated)


class Gate(Threaded):
    """Delivers only while its gate is open; records what it delivered."""

    def __init__(self, **kwargs) -> None:
        super().__init__("gate", **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.delivered: list[list[int]] = []
        self.events: list[str] = []
        self.closed = False

    def deliver(self, frames: Sequence[FrameOut]) -> None:
        self.entered.set()
        self.gate.wait()
        self.delivered.append([f.result.frame for f in frames])

    def on_open(self, info: StreamStart) -> None:
        self.events.append(f"open {info.stream}")

    def on_end(self, stream: str) -> None:
        self.events.append(f"end {stream}")

    def on_close(self) -> None:
        self.closed = True


def call_in_thread(act: Callable[[], None], timeout_s: float = 10.0) -> None:
    """Run `act`; fail (instead of hanging) when it does not return in time."""
    t = threading.Thread(target=act, daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), "the call blocked"


# -- Threaded ---------------------------------------------------------------------------------


def test_a_stuck_sink_never_blocks_the_loop_and_drops_the_oldest_counted() -> None:
    sink = Gate(max_pending=3)
    sink.write(frame_out(0))
    assert sink.entered.wait(10)  # frame 0 is being delivered, and stays so: the gate is shut

    def loop() -> None:
        for n in range(1, 10):
            sink.write(frame_out(n))
            sink.tick(0.0)

    call_in_thread(loop)
    assert sink.counts() == SinkCounts(0, {"queue_full": 6}, pending=4)  # 0 + the newest 3
    sink.gate.set()
    wait_until(lambda: sink.counts().pending == 0, 10, "nothing pending")
    assert sink.delivered == [[0], [7], [8], [9]]
    assert sink.counts() == SinkCounts(4, {"queue_full": 6}, 0)
    call_in_thread(sink.close)
    assert sink.closed


def test_control_events_keep_their_order_and_frames_batch() -> None:
    sink = Gate(max_batch=4)
    sink.open(INFO)
    sink.write(frame_out(0))
    assert sink.entered.wait(10)
    for n in range(1, 7):
        sink.write(frame_out(n))
    sink.end("cam")
    sink.gate.set()
    sink.close()
    assert sink.delivered == [[0], [1, 2, 3, 4], [5, 6]]
    assert sink.events == ["open cam", "end cam"]
    assert sink.counts() == SinkCounts(7, {}, 0)


def test_close_waits_for_delivery_at_most_drain_s_and_counts_what_is_left() -> None:
    sink = Gate(drain_s=0.2)
    for n in range(3):
        sink.write(frame_out(n))
    assert sink.entered.wait(10)
    call_in_thread(sink.close)  # the gate stays shut: close gives up after drain_s
    assert sink.counts() == SinkCounts(0, {"closed": 2}, pending=1)  # frame 0: still in deliver
    sink.write(frame_out(3))  # after close: counted, never queued
    assert sink.counts().dropped == {"closed": 3}
    sink.gate.set()
    wait_until(lambda: sink.counts().pending == 0, 10, "nothing pending")
    assert sink.counts() == SinkCounts(1, {"closed": 3}, 0)
    wait_until(lambda: sink.closed, 10, "the sink to close")


def test_failed_deliveries_are_counted_by_reason_and_the_sink_goes_on() -> None:
    class Flaky(Threaded):
        def deliver(self, frames: Sequence[FrameOut]) -> None:
            n = frames[0].result.frame
            if n == 1:
                raise ConnectionError("broker down")
            if n == 2:
                raise Dropped("retries")

    sink = Flaky("flaky")
    for n in range(4):
        sink.write(frame_out(n))
    sink.close()
    assert sink.counts() == SinkCounts(2, {"error": 1, "retries": 1}, 0)


def test_a_sink_never_written_has_nothing_to_close() -> None:
    sink = Gate()
    sink.close()
    sink.close()
    assert sink.counts() == SinkCounts() and not sink.closed
    with pytest.raises(ValueError, match="max_pending"):
        Gate(max_pending=0)


# -- Outputs and the annotated image ----------------------------------------------------------


class Recorder:
    """A synchronous sink that records its calls (and asks for pixels when told to)."""

    def __init__(self, name: str, log: list[str], *, pixels: bool = False, fail: str = "") -> None:
        self.name, self.log, self.pixels, self.fail = name, log, pixels, fail

    def _note(self, what: str) -> None:
        self.log.append(f"{self.name} {what}")
        if what.startswith(self.fail or "-"):
            raise OSError(f"{self.name} {what} failed")

    def open(self, info: StreamStart) -> None:
        self._note(f"open {info.stream}")

    def write(self, frame: FrameOut) -> None:
        if self.pixels and frame.annotated is not None:
            frame.annotated()
        self._note(f"write {frame.result.frame}")

    def end(self, stream: str) -> None:
        self._note(f"end {stream}")

    def tick(self, now: float) -> None:
        self._note("tick")

    def close(self) -> None:
        self._note("close")

    def counts(self) -> SinkCounts:
        return SinkCounts(delivered=sum(e.startswith(f"{self.name} write") for e in self.log))


def test_outputs_calls_every_sink_in_order_and_closes_all_when_one_fails() -> None:
    log: list[str] = []
    out = Outputs([Recorder("a", log), Recorder("b", log, fail="close")])
    out.open(INFO)
    out.write(frame_out(0))
    out.tick(1.0)
    out.end("cam")
    with pytest.raises(OSError, match="b close failed"):
        out.close()
    assert log == [
        "a open cam", "b open cam", "a write 0", "b write 0", "a tick", "b tick",
        "a end cam", "b end cam", "a close", "b close",
    ]  # fmt: skip
    assert out.counts() == {
        "a": {"delivered": 1, "dropped": {}, "pending": 0},
        "b": {"delivered": 1, "dropped": {}, "pending": 0},
    }
    with pytest.raises(ValueError, match="share a name"):
        Outputs([Recorder("a", log), Recorder("a", log)])
    Outputs([]).close()  # no outputs at all


def test_the_annotated_image_is_drawn_once_and_only_when_asked() -> None:
    drawn: list[int] = []

    def draw() -> np.ndarray:
        drawn.append(1)
        return np.zeros((H, W, 3), np.uint8)

    log: list[str] = []
    Outputs([Recorder("a", log)]).write(frame_out(0, annotated=Rendered(draw)))
    assert drawn == []  # no sink needed pixels
    both = Outputs([Recorder("a", log, pixels=True), Recorder("b", log, pixels=True)])
    both.write(frame_out(1, annotated=Rendered(draw)))
    assert drawn == [1]


# -- files: opened on the first write ---------------------------------------------------------


def test_results_files_are_created_on_the_first_line(tmp_path: Path) -> None:
    template = str(tmp_path / "r.jsonl")
    sink = ResultsFiles(template, n_streams=2)
    sink.open(StreamStart("a", W, H, 30.0))
    sink.tick(0.0)
    assert list(tmp_path.iterdir()) == []
    sink.write(frame_out(0, "a"))
    sink.write(frame_out(1, "adopted"))  # a stream whose start this life never saw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.a.jsonl", "r.adopted.jsonl"]
    sink.end("a")
    sink.close()
    assert (tmp_path / "r.a.jsonl").read_text().count("\n") == 1
    assert sink.counts() == SinkCounts(2, {}, 0)


def test_a_stage_that_writes_nothing_leaves_no_file(tmp_path: Path) -> None:
    """A restarted stage (NAME.partN) that adopts a stream and ends before a frame: no empty
    part file. A stream that started and ended in this life without a frame: its whole,
    empty results file, as before."""
    results = ResultsFiles(str(tmp_path / "r.part2.jsonl"), n_streams=1)
    video = VideoFiles(str(tmp_path / "v.part2.mp4"), n_streams=1)
    for sink in (results, video):
        sink.end("cam")  # adopted, never written
        sink.close()
    assert list(tmp_path.iterdir()) == []
    results = ResultsFiles(str(tmp_path / "r.jsonl"), n_streams=1)
    results.open(INFO)
    results.end("cam")
    results.close()
    assert (tmp_path / "r.jsonl").read_bytes() == b""


def test_video_needs_the_frames_pixels(tmp_path: Path) -> None:
    sink = VideoFiles(str(tmp_path / "v.mp4"), n_streams=1)
    with pytest.raises(RuntimeError, match="frames forwarded by inference"):
        sink.write(frame_out(0))
    image = np.full((H, W, 3), 128, np.uint8)
    sink.write(frame_out(0, annotated=Rendered(lambda: image)))
    sink.close()
    assert (tmp_path / "v.mp4").stat().st_size > 0
    assert sink.counts() == SinkCounts(1, {}, 0)
