"""ZeroMQ sockets for the stages: the only module that imports zmq.

Stages talk in `streamseg.wire.protocol` messages. Every socket has a high-water mark, so memory is
bounded: a PUSH to a full peer blocks (lossless file runs: backpressure) or, with block=False,
returns False (live runs count a drop); a PUB to a slow subscriber drops at the subscriber's queue.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq

from streamseg.wire.protocol import Message, ProtocolError, Result, decode, encode, encode_published

log = logging.getLogger(__name__)

# Data sockets keep undelivered messages until the peer takes them (linger -1): a file run's last
# frames and end-of-stream wait behind backpressure, and dropping them would hang the next stage.
# A dead peer cannot hang a stage for good: the runner terminates every stage when one fails.
_DATA_LINGER_MS = -1
_STATS_LINGER_MS = 3000  # reports to a runner that may already be gone


def _ctx() -> zmq.Context:
    return zmq.Context.instance()


def _attach(sock: zmq.Socket, endpoint: str, bind: bool) -> zmq.Socket:
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        sock.bind(endpoint) if bind else sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        verb = "bind" if bind else "connect"
        raise OSError(f"cannot {verb} ZeroMQ endpoint {endpoint}: {e}") from None
    return sock


def _socket(
    kind: int, endpoint: str, *, bind: bool, hwm: int, linger_ms: int = _DATA_LINGER_MS
) -> zmq.Socket:
    sock = _ctx().socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return _attach(sock, endpoint, bind)


def push(endpoint: str, *, bind: bool = False, hwm: int = 8) -> zmq.Socket:
    return _socket(zmq.PUSH, endpoint, bind=bind, hwm=hwm)


def stats_push(endpoint: str, *, hwm: int = 100) -> zmq.Socket:
    """A PUSH for stage reports: gives up on undelivered reports 3 s after close."""
    return _socket(zmq.PUSH, endpoint, bind=False, hwm=hwm, linger_ms=_STATS_LINGER_MS)


def pull(endpoint: str, *, bind: bool = True, hwm: int = 8) -> zmq.Socket:
    return _socket(zmq.PULL, endpoint, bind=bind, hwm=hwm)


def publisher(endpoint: str, *, hwm: int = 100) -> zmq.Socket:
    """A PUB socket; each subscriber gets its own queue of `hwm` messages, then drops."""
    return _socket(zmq.PUB, endpoint, bind=True, hwm=hwm, linger_ms=0)


def subscriber(endpoint: str, topics: list[str] | None = None, *, hwm: int = 1000) -> zmq.Socket:
    sock = _ctx().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    return _attach(sock, endpoint, bind=False)


def send(sock: zmq.Socket, msg: Message, *, block: bool = True) -> bool:
    """Send `msg` (arrays zero-copy). With block=False, False means the peer's queue is full."""
    parts = encode(msg)
    try:
        sock.send_multipart(parts, flags=0 if block else zmq.NOBLOCK, copy=len(parts) == 1)
    except zmq.Again:
        return False
    return True


def publish(sock: zmq.Socket, result: Result) -> None:
    """Publish a result under its stream's topic; never blocks (PUB drops for slow subscribers)."""
    try:
        sock.send_multipart(encode_published(result), flags=zmq.NOBLOCK)
    except zmq.Again:  # PUB does not raise this in practice: slow subscribers drop in libzmq
        pass


class Receiver:
    """Receives messages from one or more sockets, counting and logging malformed ones."""

    def __init__(self, *socks: zmq.Socket, name: str = "") -> None:
        self.poller = zmq.Poller()
        for s in socks:
            self.poller.register(s, zmq.POLLIN)
        self.socks = socks
        self.name = name
        self.rejected = 0

    def recv(self, timeout_ms: float | None) -> Message | None:
        """The next valid message, or None when none came within `timeout_ms` (None: wait)."""
        while True:
            ready = dict(self.poller.poll(None if timeout_ms is None else int(timeout_ms)))
            if not ready:
                return None
            for sock in self.socks:
                if sock in ready:
                    parts = sock.recv_multipart(copy=False)
                    try:
                        return decode(parts)
                    except ProtocolError as e:
                        self.rejected += 1
                        log.warning("%s: rejected a malformed message (%s)", self.name, e)
            timeout_ms = 0  # a rejected message: look once more without waiting


def recv_raw(sock: zmq.Socket, timeout_ms: float | None) -> list[Any] | None:
    """The next multipart message's frames as bytes, or None on timeout (for subscribers)."""
    if sock.poll(None if timeout_ms is None else int(timeout_ms)):
        return sock.recv_multipart()
    return None


def close_all(*, abort: bool = False) -> None:
    """Close every socket of this process, each delivering what it holds per its own linger;
    `abort` (the stage was interrupted) drops whatever is undelivered at once."""
    _ctx().destroy(linger=0 if abort else None)
