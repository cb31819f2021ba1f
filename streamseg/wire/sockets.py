"""ZeroMQ sockets for the stages: the only module, with wire.security and wire.receiver, that
imports zmq.

Stages talk in `streamseg.wire.messages`. Every socket has a high-water mark, so memory is
bounded: a PUSH to a full peer blocks (lossless file runs: backpressure) or, with block=False,
returns False (live runs count a drop); a PUB to a slow subscriber drops at the subscriber's queue.
ZeroMQ itself caps the size of what a peer may send (MAXMSGSIZE: it drops the connection).
A socket that binds a network endpoint needs CURVE keys (wire.security, the trust boundary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamseg.wire.codec import encode, encode_published
from streamseg.wire.messages import Message
from streamseg.wire.results import Result
from streamseg.wire.security import Security, check_bind, secure, stop_authenticator

# Data sockets keep undelivered messages until the peer takes them (linger -1): a file run's last
# frames and end-of-stream wait behind backpressure, and dropping them would hang the next stage.
# A dead peer cannot hang a stage for good: the runner terminates every stage when one fails.
_DATA_LINGER_MS = -1
_STATS_LINGER_MS = 3000  # reports to a runner that may already be gone

DEFAULT_MAX_MSG_BYTES = 64 << 20
"""Largest message part a receiving socket accepts: one 4K RGB frame (3840x2160x3, ~25 MB) fits
twice. A peer that sends a larger part is disconnected by libzmq; the part never arrives."""
_SENDER_MAX_MSG_BYTES = 64 << 10
"""PUSH and PUB sockets only ever receive subscriptions (topics) and handshakes from peers."""


class HandshakeError(ConnectionError):
    """A connecting socket's peer refused its keys, or they could not agree on security."""


def _ctx() -> zmq.Context:
    return zmq.Context.instance()


def _attach(
    sock: zmq.Socket, endpoint: str, bind: bool, security: Security | None, insecure: bool
) -> zmq.Socket:
    try:
        if bind:
            check_bind(endpoint, security, insecure=insecure)
        if security is not None:
            secure(sock, endpoint, security, bind)
    except ValueError:
        sock.close(0)
        raise
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
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    hwm: int,
    max_msg_bytes: int,
    security: Security | None,
    insecure: bool = False,
    linger_ms: int = _DATA_LINGER_MS,
) -> zmq.Socket:
    sock = _ctx().socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
    return _attach(sock, endpoint, bind, security, insecure)


def push(
    endpoint: str,
    *,
    bind: bool = False,
    hwm: int = 8,
    security: Security | None = None,
    insecure: bool = False,
) -> zmq.Socket:
    """A PUSH socket (connects by default). `security`: CURVE keys; see the module docstring."""
    return _socket(
        zmq.PUSH,
        endpoint,
        bind=bind,
        hwm=hwm,
        max_msg_bytes=_SENDER_MAX_MSG_BYTES,
        security=security,
        insecure=insecure,
    )


def stats_push(endpoint: str, *, hwm: int = 100, security: Security | None = None) -> zmq.Socket:
    """A PUSH for stage reports: gives up on undelivered reports 3 s after close."""
    return _socket(
        zmq.PUSH,
        endpoint,
        bind=False,
        hwm=hwm,
        max_msg_bytes=_SENDER_MAX_MSG_BYTES,
        security=security,
        linger_ms=_STATS_LINGER_MS,
    )


def pull(
    endpoint: str,
    *,
    bind: bool = True,
    hwm: int = 8,
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
    security: Security | None = None,
    insecure: bool = False,
) -> zmq.Socket:
    """A PULL socket (binds by default); a peer sending a part over `max_msg_bytes` is dropped."""
    return _socket(
        zmq.PULL,
        endpoint,
        bind=bind,
        hwm=hwm,
        max_msg_bytes=max_msg_bytes,
        security=security,
        insecure=insecure,
    )


def router(
    endpoint: str,
    *,
    hwm: int = 64,
    max_msg_bytes: int = _SENDER_MAX_MSG_BYTES,
    security: Security | None = None,
    insecure: bool = False,
) -> zmq.Socket:
    """A ROUTER socket (binds): the dispatcher's side of the work link; it hands frames to the
    worker that asked (`send_to`) and hears which one spoke (`Receiver.recv_from`). A send to a
    worker that is gone raises (ROUTER_MANDATORY) instead of vanishing."""
    sock = _ctx().socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 1000)  # the last "no more work"; a lost worker's is counted
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
    return _attach(sock, endpoint, True, security, insecure)


def dealer(
    endpoint: str,
    *,
    hwm: int = 64,
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
    security: Security | None = None,
) -> zmq.Socket:
    """A DEALER socket (connects): an inference worker's side of the work link."""
    return _socket(
        zmq.DEALER,
        endpoint,
        bind=False,
        hwm=hwm,
        max_msg_bytes=max_msg_bytes,
        security=security,
        linger_ms=0,
    )


def readable(socks: list[zmq.Socket], timeout_ms: float) -> list[zmq.Socket]:
    """Those of `socks` with a message waiting, waiting up to `timeout_ms` for one."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    ready = dict(poller.poll(int(timeout_ms)))
    return [s for s in socks if s in ready]


def send_to(sock: zmq.Socket, peer: bytes, msg: Message, *, auth: str = "") -> bool:
    """Send `msg` on a ROUTER socket to `peer` (an id from `Receiver.recv_from`); False when
    that peer is gone or its queue is full (never blocks)."""
    parts = encode(msg, auth=auth)
    try:
        sock.send_multipart([peer, *parts], flags=zmq.NOBLOCK, copy=len(parts) == 1)
    except (zmq.Again, zmq.ZMQError):
        return False
    return True


def send_raw_to(sock: zmq.Socket, peer: bytes, parts: list[bytes]) -> bool:
    """Send raw `parts` on a ROUTER socket to `peer` (a private link's own messages, e.g.
    postprocess.sinks.push's credit); False when that peer is gone or full (never blocks)."""
    try:
        sock.send_multipart([peer, *parts], flags=zmq.NOBLOCK)
    except (zmq.Again, zmq.ZMQError):
        return False
    return True


def publisher(
    endpoint: str, *, hwm: int = 100, security: Security | None = None, insecure: bool = False
) -> zmq.Socket:
    """A PUB socket; each subscriber gets its own queue of `hwm` messages, then drops."""
    return _socket(
        zmq.PUB,
        endpoint,
        bind=True,
        hwm=hwm,
        max_msg_bytes=_SENDER_MAX_MSG_BYTES,
        security=security,
        insecure=insecure,
        linger_ms=0,
    )


_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused this CURVE key: its NAME.key must be among the "
    "server's allowed keys",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "CURVE handshake failed: is the server's public key "
    "(NAME.key) the right one?",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security mismatch: one side uses CURVE keys and the "
    "other does not",
}


class Handshakes:
    """Watches a connecting socket's handshakes (a ZeroMQ socket monitor), so that refused keys
    are one clear line instead of a socket that silently never delivers anything: libzmq gives
    up on a refused key for good, and retries a wrong server key forever."""

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILURES)
        )
        self.error: str | None = None
        self.connected = False
        """A handshake succeeded at some time: a peer answered (set by `failure`)."""

    def failure(self) -> str | None:
        """Why the latest handshake failed (None: none failed, or a later one succeeded)."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            self.connected |= event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            reason = _HANDSHAKE_FAILURES.get(event)
            self.error = None if reason is None else f"{self.endpoint}: {reason}"
        return self.error

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.disable_monitor()
        self.monitor.close(0)


def subscriber(
    endpoint: str,
    topics: list[str] | None = None,
    *,
    hwm: int = 1000,
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
    security: Security | None = None,
) -> zmq.Socket:
    """A SUB socket connected to `endpoint`, subscribed to `topics` (None: everything)."""
    sock = _sub_socket(topics, hwm, max_msg_bytes)
    return _attach(sock, endpoint, False, security, False)


def watched_subscriber(
    endpoint: str,
    topics: list[str] | None = None,
    *,
    hwm: int = 1000,
    max_msg_bytes: int = DEFAULT_MAX_MSG_BYTES,
    security: Security | None = None,
) -> tuple[zmq.Socket, Handshakes]:
    """`subscriber`, and what its handshakes with the publisher say (watched from before it
    connects: a refusal can come at once)."""
    sock = _sub_socket(topics, hwm, max_msg_bytes)
    handshakes = Handshakes(sock, endpoint)
    try:
        _attach(sock, endpoint, False, security, False)
    except (ValueError, OSError):
        handshakes.close()
        raise
    return sock, handshakes


def _sub_socket(topics: list[str] | None, hwm: int, max_msg_bytes: int) -> zmq.Socket:
    sock = _ctx().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    return sock


def send(sock: zmq.Socket, msg: Message, *, block: bool = True, auth: str = "") -> bool:
    """Send `msg` (arrays zero-copy), signed with `auth` (see codec.encode).
    With block=False, False means the peer's queue is full."""
    parts = encode(msg, auth=auth)
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


def recv_raw(sock: zmq.Socket, timeout_ms: float | None) -> list[Any] | None:
    """The next multipart message's frames as bytes, or None on timeout (for subscribers)."""
    if sock.poll(None if timeout_ms is None else int(timeout_ms)):
        return sock.recv_multipart()
    return None


def close_all(*, abort: bool = False) -> None:
    """Close every socket of this process, each delivering what it holds per its own linger;
    `abort` (the stage was interrupted) drops whatever is undelivered at once."""
    stop_authenticator()  # CURVE servers refuse new handshakes from now on (fail closed)
    _ctx().destroy(linger=0 if abort else None)


# --- previews: the live view of --serve (postprocess XPUB -> supervisor SUB) ----------------------

PREVIEW_HWM = 2
"""JPEGs queued per preview subscriber: a reader that falls behind loses frames, never slows
the postprocess stage (XPUB drops at the high-water mark, as PUB does)."""


def preview_publisher(endpoint: str, *, security: Security | None = None) -> zmq.Socket:
    """An XPUB socket (binds): sends previews, and tells which streams are subscribed
    (`subscription_changes`), so that a stream's frames are encoded only while watched."""
    return _socket(
        zmq.XPUB,
        endpoint,
        bind=True,
        hwm=PREVIEW_HWM,
        max_msg_bytes=_SENDER_MAX_MSG_BYTES,
        security=security,
        linger_ms=0,
    )


def subscription_changes(sock: zmq.Socket) -> list[tuple[bytes, bool]]:
    """The (topic, subscribed) changes an XPUB socket received since the last call; never
    blocks. (libzmq passes a topic's subscribe once and its unsubscribe when the last
    subscriber of it left or disconnected.)"""
    out = []
    while sock.poll(0, zmq.POLLIN):
        msg = sock.recv(zmq.NOBLOCK)
        if msg and msg[0] in (0, 1):
            out.append((bytes(msg[1:]), msg[0] == 1))
    return out


def offer(sock: zmq.Socket, parts: list[bytes]) -> bool:
    """Send without blocking; False when it was dropped (no room)."""
    try:
        sock.send_multipart(parts, flags=zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def preview_subscriber(
    endpoint: str, *, hwm: int = 8, security: Security | None = None
) -> zmq.Socket:
    """A SUB socket for previews, subscribed to nothing yet (see `set_subscribed`)."""
    sock = _ctx().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, DEFAULT_MAX_MSG_BYTES)
    return _attach(sock, endpoint, False, security, False)


def set_subscribed(sock: zmq.Socket, topic: bytes, on: bool) -> None:
    sock.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, topic)
