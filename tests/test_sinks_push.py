"""The push sink (postprocess.sinks.push) against a real ROUTER reader, as streamseg.api is."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from streamseg.client import parse
from streamseg.postprocess.sinks.base import FrameOut
from streamseg.postprocess.sinks.push import Push
from streamseg.wire.messages import StreamStart
from streamseg.wire.results import Result


def _frame(n: int) -> FrameOut:
    info = StreamStart(stream="cam", width=8, height=6, fps=25.0, live=False)
    result = Result(
        stream="cam", frame=n, pts=n / 25, wall_time=1000.0 + n, width=8, height=6,
        seq=n, instances=[],
    )  # fmt: skip
    return FrameOut(info=info, result=result, instances=None)  # type: ignore[arg-type]


@pytest.fixture
def reader(tmp_path):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/push"
    sock.bind(endpoint)
    yield endpoint, sock
    sock.close(0)


def _recv(sock: zmq.Socket, timeout_s: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout_s * 1000)), "nothing came"
    return sock.recv_multipart()


def test_live_drops_what_finds_no_credit_and_counts_it(reader):
    endpoint, sock = reader
    push = Push(endpoint, live=True, buffer=2)
    peer, hello = _recv(sock)
    assert hello == b"hello"
    for n in range(3):  # no credit yet: dropped, counted, never waits
        push.write(_frame(n))
    sock.send_multipart([peer, b"credit", b"2"])
    deadline = time.monotonic() + 5
    while push.credit < 2 and time.monotonic() < deadline:
        push.tick(time.monotonic())
    for n in range(3, 7):
        push.write(_frame(n))
    got = [parse(_recv(sock)[1:], 0.0).frame for _ in range(2)]
    assert got == [3, 4]
    counts = push.counts()
    assert counts.dropped == {"consumer_slow": 5}
    assert counts.delivered == 0 and counts.pending == 2  # sent, not yet said to be taken
    sock.send_multipart([peer, b"took", b"2"])
    closer = threading.Thread(target=push.close)
    closer.start()
    assert _recv(sock)[1:] == [b"end"]
    sock.send_multipart([peer, b"end"])
    closer.join(5)
    assert not closer.is_alive()
    counts = push.counts()
    assert counts.delivered == 2 and counts.pending == 0
    assert counts.delivered + sum(counts.dropped.values()) + counts.pending == 7


def test_file_run_waits_for_the_reader_and_loses_nothing(reader):
    endpoint, sock = reader
    push = Push(endpoint, live=False, buffer=1)
    writer = threading.Thread(target=lambda: [push.write(_frame(n)) for n in range(5)])
    writer.start()
    peer, _ = _recv(sock)
    sock.send_multipart([peer, b"credit", b"1"])
    frames = []
    for _ in range(5):
        parts = _recv(sock)
        frames.append(parse(parts[1:], 0.0).frame)
        sock.send_multipart([peer, b"took", b"1"])
    writer.join(5)
    assert not writer.is_alive()
    assert frames == list(range(5))
    assert push.counts().dropped == {}


def test_file_run_wait_ends_on_a_stop_counted(reader):
    endpoint, sock = reader
    stop = threading.Event()
    push = Push(endpoint, live=False, buffer=1, should_stop=stop.is_set)
    writer = threading.Thread(target=push.write, args=(_frame(0),))
    writer.start()  # the reader never grants credit: it waits
    writer.join(0.3)
    assert writer.is_alive()
    stop.set()
    writer.join(5)
    assert not writer.is_alive()
    push.close()  # asked to stop: says nothing more, waits for nothing
    assert push.counts().dropped == {"stopped": 1}


def test_junk_from_the_reader_is_ignored(reader):
    endpoint, sock = reader
    push = Push(endpoint, live=True, buffer=1)
    peer, _ = _recv(sock)
    for junk in ([b"credit", b"-1"], [b"credit", b"99999999999"], [b"took"], [b"x" * 100]):
        sock.send_multipart([peer, *junk])
    sock.send_multipart([peer, b"credit", b"1"])
    deadline = time.monotonic() + 5
    while push.credit < 1 and time.monotonic() < deadline:
        push.tick(time.monotonic())
    assert push.credit == 1
    push.write(_frame(0))
    assert parse(_recv(sock)[1:], 0.0).frame == 0
    push.close()
