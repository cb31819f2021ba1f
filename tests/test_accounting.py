"""accounting: per-stream counters and latency percentiles, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamseg.accounting import Counters, LatencyWindow, total_dropped


def test_counters_to_json_exactly():
    c = Counters()
    c.count_in("a")
    c.count_in("a", 4)
    c.count_out("a", 3)
    c.drop("a", "stale")
    c.drop("a", "queue_full", 2)
    c.drop("a", "stale")
    c.count_out("b")
    c["b"].extra["lost"] = True
    assert c.to_json() == {
        "a": {"in": 5, "out": 3, "dropped": {"stale": 2, "queue_full": 2}},
        "b": {"in": 0, "out": 1, "dropped": {}, "lost": True},
    }


def test_to_json_is_plain_data_and_a_snapshot():
    c = Counters()
    c.drop("a", "stale")
    snap = c.to_json()
    assert type(snap["a"]["dropped"]) is dict  # not the defaultdict: JSON and == behave
    c.drop("a", "stale")
    assert snap["a"]["dropped"] == {"stale": 1}


def test_reading_a_stream_creates_it_with_zeros():
    c = Counters()
    assert c["x"].frames_in == 0
    assert c.to_json() == {"x": {"in": 0, "out": 0, "dropped": {}}}


def test_empty_counters():
    assert Counters().to_json() == {}


def test_total_dropped():
    assert total_dropped({"in": 9, "dropped": {"stale": 2, "queue_full": 5}}) == 7
    assert total_dropped({"in": 9, "dropped": {}}) == 0
    assert total_dropped({}) == 0
    c = Counters()
    c.drop("a", "x", 3)
    assert total_dropped(c.to_json()["a"]) == 3


def test_percentiles_are_exact_in_milliseconds():
    w = LatencyWindow(size=8)
    for s in (0.004, 0.001, 0.003, 0.002, 0.005):  # order does not matter
        w.add(s)
    p0, p50, p100, p25 = w.percentiles(0, 50, 100, 25)
    assert (p0, p50, p100, p25) == pytest.approx((1.0, 3.0, 5.0, 2.0), abs=1e-12)
    # numpy's linear interpolation between the two middle values
    w.add(0.006)
    assert w.percentiles(50) == pytest.approx([3.5], abs=1e-12)


def test_single_value():
    w = LatencyWindow(size=4)
    w.add(0.25)
    assert w.percentiles(50, 99) == [250.0, 250.0]


def test_empty_window_is_nan():
    w = LatencyWindow(size=4)
    got = w.percentiles(50, 99)
    assert len(got) == 2 and all(math.isnan(v) for v in got)
    assert LatencyWindow().percentiles() == []


def test_wrap_around_keeps_only_the_last_size_values():
    w = LatencyWindow(size=3)
    for s in (10.0, 20.0, 0.001, 0.002, 0.003):  # the two large ones are overwritten
        w.add(s)
    assert w.n == 5
    assert sorted(w.values.tolist()) == [0.001, 0.002, 0.003]
    assert w.percentiles(0, 50, 100) == pytest.approx([1.0, 2.0, 3.0], abs=1e-12)


def test_window_memory_is_bounded():
    w = LatencyWindow(size=16)
    for s in np.linspace(0.0, 1.0, 1000):
        w.add(float(s))
    assert w.values.shape == (16,)
    assert w.percentiles(0)[0] == pytest.approx(1000.0 * 984 / 999)
