import pytest

from streamseg.inference.batching import Batch, Batcher


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def frames(batch):
    return [f for f in batch.frames]


def test_empty_batcher_waits_forever():
    b = Batcher(max_batch=4, max_wait_s=0.01, clock=Clock())
    assert b.next_batch() == float("inf") and len(b) == 0


def test_batch_forms_when_full():
    clock = Clock()
    b = Batcher(max_batch=2, max_wait_s=1.0, clock=clock)
    b.put("a", "a0", is_frame=True)
    assert b.next_batch() == pytest.approx(1.0)  # not full, not old: wait the rest of the budget
    b.put("b", "b0", is_frame=True)
    assert frames(b.next_batch()) == ["a0", "b0"]


def test_batch_forms_when_oldest_frame_waited_max_wait():
    clock = Clock()
    b = Batcher(max_batch=8, max_wait_s=0.05, clock=clock)
    b.put("a", "a0", is_frame=True)
    clock.t = 0.03
    assert b.next_batch() == pytest.approx(0.02)
    clock.t = 0.05
    assert frames(b.next_batch()) == ["a0"]


def test_frames_from_streams_interleave_by_arrival():
    clock = Clock()
    b = Batcher(max_batch=3, max_wait_s=0.0, clock=clock)
    for i, s in enumerate(["a", "b", "a", "b"]):
        clock.t = i
        b.put(s, f"{s}{i}", is_frame=True)
    assert frames(b.next_batch()) == ["a0", "b1", "a2"]
    assert frames(b.next_batch()) == ["b3"]


def test_end_of_stream_flushes_and_keeps_order():
    clock = Clock()
    b = Batcher(max_batch=8, max_wait_s=10.0, clock=clock)
    b.put("a", "a0", is_frame=True)
    b.put("a", "EOS", is_frame=False)
    first = b.next_batch()
    assert isinstance(first, Batch) and first.frames == ["a0"] and first.controls == []
    assert b.next_batch().controls == ["EOS"]  # only after the frames before it


def test_lossless_reports_full_and_never_drops():
    b = Batcher(max_batch=2, max_wait_s=0.0, capacity=3, clock=Clock())
    dropped = [b.put("a", i, is_frame=True) for i in range(5)]
    assert dropped == [[]] * 5 and b.full() and len(b) == 5


def test_live_keeps_only_newest_and_reports_drops():
    b = Batcher(max_batch=4, max_wait_s=1.0, depth=2, clock=Clock())
    b.put("a", "START", is_frame=False)
    drops = [b.put("a", f"a{i}", is_frame=True) for i in range(5)]
    assert drops == [[], [], ["a0"], ["a1"], ["a2"]]
    assert not b.full()
    batch = b.next_batch()
    assert batch.controls == ["START"]  # control messages are never dropped
    # 2 frames < max_batch and the budget has not passed: wait
    assert b.next_batch() == pytest.approx(1.0)


def test_invalid_settings():
    with pytest.raises(ValueError):
        Batcher(max_batch=0, max_wait_s=0, clock=Clock())
