from harness import Clock

from streamseg.postprocess.reorder import DUPLICATE, LATE, RELEASED, Reorder


def test_empty():
    r = Reorder(clock=Clock())
    assert r.expire() == [] and r.flush("a") == [] and r.held("a") == 0 and not r.chained("a")


def test_single_worker_results_pass_at_once():
    r = Reorder(clock=Clock())
    got = [r.push("a", f, -1, f) for f in range(3)]
    assert got == [(RELEASED, [0]), (RELEASED, [1]), (RELEASED, [2])] and not r.chained("a")


def test_results_wait_for_their_predecessor():
    r = Reorder(clock=Clock())
    # handed out 0, 2, 5 (1, 3, 4 dropped as stale): 5 and 2 come back first
    assert r.push("a", 5, 2, "a5") == (RELEASED, [])
    assert r.push("a", 2, 0, "a2") == (RELEASED, [])
    assert r.held("a") == 2
    assert r.push("a", 0, -1, "a0") == (RELEASED, ["a0", "a2", "a5"])
    assert r.held("a") == 0 and r.chained("a") and r.seen("a") == 3


def test_released_says_whether_a_frame_and_all_before_it_are_out():
    r = Reorder(clock=Clock())
    assert not r.released("a", 0)
    r.push("a", 1, 0, "a1")  # held: 0 is at another worker
    assert not r.released("a", 1)
    r.push("a", 0, -1, "a0")
    assert r.released("a", 0) and r.released("a", 1) and not r.released("a", 2)


def test_streams_are_independent():
    r = Reorder(clock=Clock())
    assert r.push("a", 1, 0, "a1") == (RELEASED, [])
    assert r.push("b", 0, -1, "b0") == (RELEASED, ["b0"])
    assert r.push("a", 0, -1, "a0") == (RELEASED, ["a0", "a1"])


def test_duplicates_and_late_results_are_not_released():
    r = Reorder(clock=Clock())
    r.push("a", 0, -1, "a0")
    assert r.push("a", 0, -1, "again") == (DUPLICATE, [])
    r.push("a", 2, 1, "a2")
    assert r.push("a", 2, 1, "again") == (DUPLICATE, [])  # a held one, too
    r.push("a", 3, 2, "a3")
    r.push("a", 4, 3, "a4")
    r2 = Reorder(capacity=2, clock=Clock())
    r2.push("a", 0, -1, "a0")
    r2.push("a", 2, 1, "a2")
    r2.push("a", 3, 2, "a3")
    assert r2.push("a", 4, 3, "a4") == (RELEASED, ["a2", "a3", "a4"])  # over capacity: skip 1
    assert r2.push("a", 1, 0, "a1") == (LATE, []) and r2.skipped("a") == 1


def test_live_results_wait_at_most_wait_s():
    clock = Clock()
    r = Reorder(wait_s=0.5, clock=clock)
    r.push("a", 0, -1, "a0")
    r.push("a", 2, 1, "a2")  # 1 went down with a worker
    r.push("a", 3, 2, "a3")
    clock.t = 0.4
    assert r.expire() == []
    clock.t = 0.5
    assert r.expire() == [("a", "a2"), ("a", "a3")] and r.skipped("a") == 1


def test_file_runs_wait_without_limit():
    clock = Clock()
    r = Reorder(clock=clock)
    r.push("a", 1, 0, "a1")
    clock.t = 1e6
    assert r.expire() == [] and r.held("a") == 1


def test_flush_gives_everything_in_order_and_forgets():
    r = Reorder(clock=Clock())
    r.push("a", 4, 3, "a4")
    r.push("a", 2, 1, "a2")
    assert r.flush("a") == ["a2", "a4"] and r.held("a") == 0 and r.seen("a") == 0


def _det(stream, frame, prev):
    import numpy as np

    from streamseg.wire.messages import Detections

    z = np.zeros((0, 4), np.float32)
    return Detections(
        stream, frame, 0.0, 0.0, 8, 8, z, z[:, 0], np.zeros(0, np.int64),
        np.zeros((0, 28, 28), np.float32), prev=prev,
    )  # fmt: skip


def test_end_of_stream_waits_for_results_of_other_workers():
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import OrderedInput
    from streamseg.wire.messages import EndOfStream

    clock, counters = Clock(), Counters()
    o = OrderedInput(counters, live=False, clock=clock)
    o.start("a")
    o.put(_det("a", 0, -1))
    o.put(_det("a", 2, 1))
    o.put(EndOfStream("a", 3))  # frame 1 is still at another worker
    assert [(d.stream, d.frame) for d in o.take()] == [("a", 0)]
    o.put(_det("a", 0, -1))  # a lost worker's frame, sent again: a duplicate
    assert o.take() == [] and counters["a"].extra["resent_copies"] == 1
    o.put(_det("a", 1, 0))
    out = o.take()
    assert [getattr(d, "frame", "end") for d in out] == [1, 2, "end"]


def test_end_of_stream_of_a_single_worker_passes_at_once():
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import OrderedInput
    from streamseg.wire.messages import EndOfStream

    o = OrderedInput(Counters(), live=True, clock=Clock())
    o.start("a")
    o.put(_det("a", 5, -1))
    o.put(EndOfStream("a", 9))  # live: 4 frames dropped before inference
    assert [getattr(d, "frame", "end") for d in o.take()] == [5, "end"]


def test_live_end_of_stream_waits_at_most_its_limit():
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import END_WAIT_S, OrderedInput
    from streamseg.wire.messages import EndOfStream

    clock = Clock()
    o = OrderedInput(Counters(), live=True, clock=clock)
    o.start("a")
    o.put(_det("a", 0, -1))
    o.put(_det("a", 3, 1))  # 1 went down with a worker
    o.put(EndOfStream("a", 10))
    assert [d.frame for d in o.take()] == [0]
    clock.t = END_WAIT_S[True]
    assert [getattr(d, "frame", "end") for d in o.take()] == [3, "end"]


def test_results_that_overtake_their_streams_start_wait_for_it():
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import END_WAIT_S, OrderedInput

    clock = Clock()
    o = OrderedInput(Counters(), live=False, clock=clock)
    o.put(_det("a", 0, -1))  # from a worker, before the dispatcher's StreamStart came
    o.put(_det("b", 0, -1))
    assert o.take() == []
    o.start("a")
    assert [(d.stream, d.frame) for d in o.take()] == [("a", 0)]
    clock.t = END_WAIT_S[False]  # b's start never came: passed on (and counted there)
    assert [(d.stream, d.frame) for d in o.take()] == [("b", 0)]
    adopted = OrderedInput(Counters(), live=True, adopt=True, clock=clock)
    adopted.put(_det("c", 7, -1))
    assert [d.frame for d in adopted.take()] == [7]


def test_end_of_stream_that_overtook_all_its_results_waits_for_the_last_handed_out():
    """A clip shorter than a batch: the dispatcher handed every frame out and passed the end on
    before any result came (it once passed at once: every frame of the stream was lost)."""
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import OrderedInput
    from streamseg.wire.messages import EndOfStream

    o = OrderedInput(Counters(), live=False, clock=Clock())
    for stream in ("one", "three"):
        o.start(stream)
    o.put(EndOfStream("one", 1, prev=0))
    o.put(EndOfStream("three", 3, prev=2))
    assert o.take() == []
    o.put(_det("three", 0, -1))  # a result without a predecessor says nothing of workers
    assert [(d.stream, d.frame) for d in o.take()] == [("three", 0)]
    o.put(_det("one", 0, -1))
    assert [getattr(d, "frame", "end") for d in o.take()] == [0, "end"]
    o.put(_det("three", 2, 1))
    assert o.take() == []
    o.put(_det("three", 1, 0))
    assert [getattr(d, "frame", "end") for d in o.take()] == [1, 2, "end"]


def test_end_of_stream_with_nothing_handed_out_passes_at_once():
    """A file with no decodable frame: its end is all that comes."""
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import OrderedInput
    from streamseg.wire.messages import EndOfStream

    o = OrderedInput(Counters(), live=False, clock=Clock())
    o.start("a")
    o.put(EndOfStream("a", 0, prev=-1))
    assert [type(m).__name__ for m in o.take()] == ["EndOfStream"]


def test_end_of_stream_waits_for_its_last_frame_at_most_its_limit():
    from streamseg.accounting import Counters
    from streamseg.postprocess.reorder import END_WAIT_S, OrderedInput
    from streamseg.wire.messages import EndOfStream

    clock = Clock()
    o = OrderedInput(Counters(), live=False, clock=clock)
    o.start("a")
    o.put(EndOfStream("a", 2, prev=1))  # frame 1's worker went down with it, never sent again
    o.put(_det("a", 0, -1))
    assert [d.frame for d in o.take()] == [0]
    clock.t = END_WAIT_S[False]
    assert [type(m).__name__ for m in o.take()] == ["EndOfStream"]
