import pytest
from harness import Clock

from streamseg.inference.dispatch import Workers


def test_no_workers():
    w = Workers(lost_s=2.0, clock=Clock())
    assert w.idle() is None and w.lost() == [] and w.busy_frames() == 0 and w.names() == []


def test_batches_go_to_the_worker_free_longest_never_to_a_busy_one():
    clock = Clock()
    w = Workers(lost_s=2.0, clock=clock)
    w.credit("inference[0]", b"p0", 2)
    clock.t = 0.1
    w.credit("inference[1]", b"p1", 2)
    assert w.idle() == ("inference[0]", b"p0", 2)
    w.assign("inference[0]", ["f0", "f1"], 7)
    assert w.idle() == ("inference[1]", b"p1", 2)
    w.assign("inference[1]", ["f2"], 8)
    assert w.idle() is None and w.busy_frames() == 3
    clock.t = 0.5
    assert w.credit("inference[1]", b"p1", 2, 8) == (["f2"], [])  # done: its batch is finished
    assert w.idle() == ("inference[1]", b"p1", 2)


def test_a_silent_worker_is_lost_with_its_frames_heartbeats_keep_it():
    clock = Clock()
    w = Workers(lost_s=2.0, clock=clock)
    for i in range(2):
        w.credit(f"inference[{i}]", b"p%d" % i, 1)
        w.assign(f"inference[{i}]", [f"f{i}"], 1 + i)
    clock.t = 1.5
    w.credit("inference[0]", b"beat0", 0)  # a heartbeat, from its own socket
    clock.t = 2.0
    assert w.lost() == [("inference[1]", ["f1"])]
    assert w.names() == ["inference[0]"] and w.busy_frames() == 1
    clock.t = 3.4
    assert w.lost() == []
    clock.t = 3.5
    assert w.lost() == [("inference[0]", ["f0"])]


def test_a_restarted_worker_under_the_same_name_loses_the_old_batch():
    w = Workers(lost_s=2.0, clock=Clock())
    w.credit("inference[0]", b"old", 1)
    w.assign("inference[0]", ["f0"], 1)
    assert w.credit("inference[0]", b"new", 1) == ([], ["f0"])
    assert w.idle() == ("inference[0]", b"new", 1)


def test_a_repeated_credit_that_crossed_its_batch_is_only_a_sign_of_life():
    clock = Clock()
    w = Workers(lost_s=2.0, clock=clock)
    w.credit("inference[0]", b"p", 2, 0)
    w.assign("inference[0]", ["f0"], 5)
    clock.t = 1.0
    assert w.credit("inference[0]", b"p", 2, 0) == ([], [])  # sent before batch 5 arrived
    assert w.idle() is None and w.busy_frames() == 1
    clock.t = 2.5
    assert w.lost() == []  # it was heard at 1.0
    assert w.credit("inference[0]", b"p", 2, 5) == (["f0"], [])
    assert w.credit("inference[0]", b"p", 2, 5) == ([], [])  # idle, repeating: nothing more
    assert w.idle() == ("inference[0]", b"p", 2)


def test_forget_returns_what_it_held():
    w = Workers(lost_s=2.0, clock=Clock())
    w.credit("inference[0]", b"p", 1)
    w.assign("inference[0]", ["f0"], 1)
    assert w.forget("inference[0]") == ["f0"] and w.forget("inference[0]") == []


def test_invalid():
    with pytest.raises(ValueError):
        Workers(lost_s=0, clock=Clock())
