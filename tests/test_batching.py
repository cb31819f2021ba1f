import pytest
from harness import Clock

from streamseg.inference.batching import Batch, Batcher


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


def test_live_replacements_do_not_restart_the_wait():
    """Two cameras at 60 fps, max_batch 8, max_wait 0.2 s, one frame kept per stream: each new
    frame replaces the waiting one, and the batch still forms 0.2 s after the first arrival
    (it never did: each replacement restarted the wait)."""
    clock = Clock()
    b = Batcher(max_batch=8, max_wait_s=0.2, depth=1, clock=clock)
    dropped = 0
    for k in range(13):  # 0 .. 0.2 s in steps of 1/60 s
        clock.t = k / 60
        dropped += len(b.put("a", f"a{k}", is_frame=True)) + len(b.put("b", f"b{k}", is_frame=True))
        batch = b.next_batch()
        if isinstance(batch, Batch):
            break
    assert isinstance(batch, Batch), "a batch forms within max_wait of the first frame"
    assert clock.t == pytest.approx(0.2)
    assert frames(batch) == ["a12", "b12"]  # the newest frame of each stream
    assert dropped == 24


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


def test_streams_take_turns_whatever_their_arrival_order():
    b = Batcher(max_batch=6, max_wait_s=0.0, clock=Clock())
    for i in range(3):
        b.put("a", f"a{i}", is_frame=True)
    for i in range(3):
        b.put("b", f"b{i}", is_frame=True)
    assert frames(b.next_batch()) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_weights_share_frames_by_weight():
    b = Batcher(max_batch=1, max_wait_s=0.0, weights={"a": 2.0}, clock=Clock())
    taken = []
    for _ in range(300):
        for s in ("a", "b"):
            b.put(s, s, is_frame=True)
        taken += frames(b.next_batch())
    assert taken.count("a") == 200 and taken.count("b") == 100


def test_empty_streams_save_no_credit():
    b = Batcher(max_batch=1, max_wait_s=0.0, clock=Clock())
    for i in range(10):  # only a has frames: a takes them all, b earns nothing meanwhile
        b.put("a", f"a{i}", is_frame=True)
        assert frames(b.next_batch()) == [f"a{i}"]
    b.put("b", "b0", is_frame=True)
    b.put("a", "a10", is_frame=True)
    b.put("b", "b1", is_frame=True)
    b.put("a", "a11", is_frame=True)
    got = frames(b.next_batch()) + frames(b.next_batch()) + frames(b.next_batch())
    assert sorted(got[:2]) == ["a10", "b0"] and got[2] in ("a11", "b1")


def _simulate(n_streams, *, fps, service_s, max_batch, seconds, weights=None):
    """Live streams at `fps` each (phases spread over a frame period) into one worker that takes
    `service_s` per batch: frames processed per stream over `seconds`, simulated time."""
    clock = Clock()
    b = Batcher(max_batch=max_batch, max_wait_s=0.01, depth=1, weights=weights, clock=clock)
    period = 1.0 / fps
    # arrival times, with uneven phases (0.37 of a period apart, wrapped) as real cameras have
    nxt = {f"s{i}": (i * 0.37 % 1.0) * period for i in range(n_streams)}
    done = dict.fromkeys(nxt, 0)
    busy_until = 0.0
    t = 0.0
    while t < seconds:
        t = min(min(nxt.values()), busy_until if busy_until > clock.t else float("inf"))
        clock.t = t
        for s, at in nxt.items():
            if at <= t:
                b.put(s, s, is_frame=True)
                nxt[s] = at + period
        if busy_until <= t:
            batch = b.next_batch()
            if isinstance(batch, Batch) and batch.frames:
                for s in batch.frames:
                    done[s] += 1
                busy_until = t + service_s
            elif not isinstance(batch, Batch):
                busy_until = t + batch  # come back when the batch budget has passed
    return done


def test_fair_share_over_capacity_is_equal():
    # 6 streams at 15 fps (90 fps offered) into a worker that does 4 frames per 0.3 s (13 fps)
    done = _simulate(6, fps=15.0, service_s=0.3, max_batch=4, seconds=60.0)
    rates = [n / 60.0 for n in done.values()]
    assert sum(rates) == pytest.approx(4 / 0.3, rel=0.05)
    assert max(rates) / min(rates) <= 1.25, rates


def test_fair_share_follows_weights():
    done = _simulate(4, fps=15.0, service_s=0.3, max_batch=2, seconds=60.0, weights={"s0": 2.0})
    others = [done[s] for s in ("s1", "s2", "s3")]
    assert max(others) / min(others) <= 1.25
    assert done["s0"] / (sum(others) / 3) == pytest.approx(2.0, rel=0.1)


def test_requeued_frames_go_first_in_their_order():
    b = Batcher(max_batch=4, max_wait_s=0.0, clock=Clock())
    b.put("a", "a2", is_frame=True)
    b.requeue("a", ["a0", "a1"])
    assert len(b) == 3 and frames(b.next_batch()) == ["a0", "a1", "a2"]


def test_invalid_weights():
    with pytest.raises(ValueError):
        Batcher(max_batch=1, max_wait_s=0, weights={"a": 0.0}, clock=Clock())
