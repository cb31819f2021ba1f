"""The webhook sink against a real HTTP receiver on loopback (http.server): batches by count
and by time, retried with backoff, every result delivered or counted dropped, every request
signed so the receiver can verify it."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from brokerfixture import Receiver, file_run
from harness import wait_until
from test_sink_interface import frame_out

from streamseg.postprocess.sinks.brokers import build
from streamseg.postprocess.sinks.webhook import SIGNATURE_HEADER
from streamseg.sink_urls import parse
from streamseg.wire.messages import StreamStart

INFO = StreamStart("cam", 32, 24, 30.0)


def verified(body: bytes, headers: dict[str, str], secret: bytes) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get(SIGNATURE_HEADER, ""), expected)


@pytest.fixture
def receiver():
    r = Receiver(fail=lambda n: n % 2 == 0)  # every other request fails (503)
    yield r
    r.close()


def test_a_receiver_failing_half_the_requests_gets_every_batch(receiver: Receiver, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    url = f"http://127.0.0.1:{receiver.port}/hook?batch=8&secret_env=HOOK_SECRET&retries=3"
    sink = build(parse(url), live=False)
    sink.open(INFO)
    for n in range(100):
        sink.write(frame_out(n))
    sink.end("cam")
    sink.close()
    counts = sink.counts()
    assert (counts.delivered, counts.dropped, counts.pending) == (100, {}, 0)
    assert [r["frame"] for r in receiver.accepted()] == list(range(100))  # each once, in order
    statuses = [status for _, _, status in receiver.requests]
    assert statuses.count(503) == statuses.count(200)  # each batch: refused once, then taken
    for body, headers, _ in receiver.requests:
        assert verified(body, headers, b"s3cret")
        assert not verified(body, headers, b"another secret")
        assert headers["Content-Type"] == "application/json"


def test_a_spent_retry_budget_counts_the_batch_dropped():
    always = Receiver(fail=lambda n: True)
    try:
        url = f"http://127.0.0.1:{always.port}/?batch=5&retries=2&drain_s=30"
        sink = build(parse(url), live=True)
        sink.open(INFO)
        for n in range(12):
            sink.write(frame_out(n))
        sink.end("cam")
        sink.close()
        counts = sink.counts()
        assert counts.delivered == 0 and counts.pending == 0
        assert counts.dropped == {"retries_spent": 12}
        assert len(always.requests) == 3 * 3  # 3 batches (5, 5, 2), each tried 1 + 2 times
        assert SIGNATURE_HEADER not in always.requests[0][1]  # no secret: no signature
    finally:
        always.close()


def test_results_are_batched_by_time_too():
    r = Receiver()
    try:
        sink = build(parse(f"http://127.0.0.1:{r.port}/?batch=1000&interval_s=0.2"), live=True)
        sink.open(INFO)
        for n in range(3):
            sink.write(frame_out(n))
        # fewer than a batch: they go once the oldest waited interval_s, not at the end
        wait_until(lambda: len(r.accepted()) == 3, 10, "the timed batch")
        assert len(r.requests) == 1
        counts = sink.counts()
        assert (counts.delivered, counts.pending) == (3, 0)
        sink.close()
    finally:
        r.close()


def test_a_receiver_that_is_down_loses_nothing_uncounted():
    r = Receiver()
    port = r.port
    r.close()  # nothing listens there now
    sink = build(parse(f"http://127.0.0.1:{port}/?batch=4&retries=1&max_pending=6"), live=True)
    sink.open(INFO)
    for n in range(30):
        sink.write(frame_out(n))  # never blocks
    sink.close()
    counts = sink.counts()
    assert counts.delivered == 0 and counts.pending == 0
    assert sum(counts.dropped.values()) == 30
    assert counts.dropped.get("queue_full", 0) > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_file_run_posts_every_frame_equal_to_the_results_file(tmp_path, clip, random_config):
    r = Receiver(fail=lambda n: n == 0)
    try:
        report, records = file_run(
            tmp_path, random_config, clip[0], f"http://127.0.0.1:{r.port}/in?batch=4&secret=k"
        )
        assert report.exit_code == 0, report.errors
        assert r.accepted() == records and len(records) == 10
        assert all(verified(body, headers, b"k") for body, headers, _ in r.requests)
        counts = report.extra["postprocess"]["sinks"]["webhook"]
        assert counts == {"delivered": 10, "dropped": {}, "pending": 0}
    finally:
        r.close()
