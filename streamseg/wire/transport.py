"""ZeroMQ sockets for the stages: the only module that imports zmq.

Stages talk in `streamseg.wire.protocol` messages. Every socket has a high-water mark, so memory is
bounded: a PUSH to a full peer blocks (lossless file runs: backpressure) or, with block=False,
returns False (live runs count a drop); a PUB to a slow subscriber drops at the subscriber's queue.
ZeroMQ itself caps the size of what a peer may send (MAXMSGSIZE: it drops the connection).

Trust boundary. A socket bound on a network address (anything but ipc://, inproc:// and loopback
tcp) needs CURVE keys (`Security`), or an explicit `insecure=True`: binding sockets are CURVE
servers that admit only the listed client keys (ZAP, pyzmq's ThreadAuthenticator); connecting
sockets are CURVE clients. Keys are made and read by `streamseg.wire.curve`.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from streamseg.wire.protocol import (
    Message,
    ProtocolError,
    Result,
    decode_envelope,
    encode,
    encode_published,
)

log = logging.getLogger(__name__)

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

REJECT_LOG_INTERVAL_S = 10.0
"""A rejection reason is logged at most once per this many seconds (counted always)."""

_LOCAL_SCHEMES = ("ipc://", "inproc://")
_LOOPBACK_NAMES = {"localhost"}
KEYS_HINT = "make keys with `streamseg keys DIR` (README: Security)"


class InsecureEndpointError(ValueError):
    """A socket would bind a network endpoint without CURVE keys."""


class HandshakeError(ConnectionError):
    """A connecting socket's peer refused its keys, or they could not agree on security."""


@dataclass(frozen=True)
class Security:
    """CURVE keys for one socket: Z85 text, 40 characters each (`streamseg keys` makes them).

    A socket that binds is a CURVE server: its own keypair, and `allowed_keys`, the public keys
    of the only clients it admits. A socket that connects is a CURVE client: its own keypair
    (its public key must be in the server's allowed keys) and the server's public key,
    `server_key`. Build it from key files with `streamseg.wire.curve`.
    """

    public_key: str
    secret_key: str = field(repr=False)
    server_key: str = ""
    """Connecting sockets: the public key of the server they connect to."""
    allowed_keys: frozenset[str] = frozenset()
    """Binding sockets: client public keys admitted; everyone else is refused in the handshake."""


def publish_endpoint(text: str) -> str:
    """The endpoint a `--publish` value means: loopback unless an address is given.

    "5555", ":5555", "tcp://:5555" -> "tcp://127.0.0.1:5555"; "HOST:5555" -> "tcp://HOST:5555";
    full endpoints ("tcp://*:5555", "tcp://0.0.0.0:5555", "ipc://...") are kept. ValueError for
    a tcp endpoint without a port number in 1-65535.
    """
    text = text.strip()
    if "://" in text and not text.startswith("tcp://"):
        return text
    rest = text.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = "", rest
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"publish endpoint {text!r}: needs a port number 1-65535, e.g. 5555 (loopback), "
            "tcp://*:5555 (every interface, needs keys) or tcp://HOST:5555"
        )
    return f"tcp://{host or '127.0.0.1'}:{int(port)}"


def needs_keys(endpoint: str) -> bool:
    """True when binding `endpoint` lets other hosts connect: any tcp:// address that is not
    loopback (127.0.0.0/8, ::1, localhost; `*`, 0.0.0.0 and interface names are not), and any
    network transport other than ipc:// and inproc://."""
    if endpoint.startswith(_LOCAL_SCHEMES):
        return False
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rpartition(":")[0].strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name
        return True


def check_bind(endpoint: str, security: Security | None, *, insecure: bool = False) -> None:
    """Raise InsecureEndpointError (one line, with the fix) when binding `endpoint` needs keys
    and `security` is None; `insecure=True` allows it anyway (a trusted network)."""
    if security is None and not insecure and needs_keys(endpoint):
        raise InsecureEndpointError(
            f"refusing to bind {endpoint} without CURVE keys (anyone who can reach it could "
            f"connect): {KEYS_HINT}, or bind loopback, e.g. tcp://127.0.0.1:PORT"
        )


def curve_keypair() -> tuple[str, str]:
    """A new CURVE keypair (public, secret), Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def curve_public_key(secret_key: str) -> str:
    """The public key of a CURVE secret key (Z85 text); ValueError if it is not one."""
    try:
        return zmq.curve_public(secret_key.encode("ascii")).decode("ascii")
    except (zmq.ZMQError, ValueError):
        raise ValueError("not a CURVE secret key (40 Z85 characters)") from None


class _RateLimit:
    """Says when a key may be logged again: at most once per `interval_s`. Pure (clock given)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last: dict[str, float] = {}

    def ready(self, key: str, now: float) -> bool:
        last = self.last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self.last[key] = now
        return True


class _AllowList:
    """The ZAP check for one CURVE server socket (runs in the authenticator's thread)."""

    def __init__(self, keys: frozenset[str], name: str) -> None:
        self.keys = {k.encode("ascii") for k in keys}
        self.name = name
        self.refused = 0
        self.limit = _RateLimit(REJECT_LOG_INTERVAL_S)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.refused += 1
        if self.limit.ready("refused", time.monotonic()):
            log.warning(
                "%s: refused a CURVE client whose key is not allowed (%s...; %d refused so far)",
                self.name,
                key[:8].decode("ascii", "replace"),
                self.refused,
            )
        return False


# One ZAP handler per process (ZeroMQ allows one per context); each CURVE server socket has its
# own ZAP domain, so sockets with different allowed keys never admit each other's clients.
_auth: ThreadAuthenticator | None = None
_auth_lock = threading.Lock()
_domains = itertools.count()


def _zap_domain(allowed: frozenset[str], name: str) -> str:
    global _auth
    with _auth_lock:
        if _auth is None:
            _auth = ThreadAuthenticator(_ctx())
            _auth.start()
        domain = f"streamseg.{next(_domains)}"
        _auth.configure_curve_callback(domain, credentials_provider=_AllowList(allowed, name))
    return domain


def _secure(sock: zmq.Socket, endpoint: str, security: Security, bind: bool) -> None:
    if endpoint.startswith("inproc://"):
        raise ValueError(f"{endpoint}: CURVE does not apply to inproc:// (give security=None)")
    _set_key(sock, zmq.CURVE_PUBLICKEY, security.public_key, endpoint)
    _set_key(sock, zmq.CURVE_SECRETKEY, security.secret_key, endpoint)
    if bind:
        if not security.allowed_keys:
            raise ValueError(f"CURVE server {endpoint}: no allowed client keys given")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, _zap_domain(security.allowed_keys, endpoint).encode())
        # Without this, libzmq admits every client when no ZAP handler answers (e.g. after
        # close_all stopped it while sockets linger): fail closed instead.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    elif security.server_key:
        _set_key(sock, zmq.CURVE_SERVERKEY, security.server_key, endpoint)
    else:
        raise ValueError(f"CURVE client {endpoint}: the server's public key is missing")


def _set_key(sock: zmq.Socket, option: int, key: str, endpoint: str) -> None:
    try:
        sock.setsockopt(option, key.encode("ascii"))
    except (zmq.ZMQError, UnicodeEncodeError):
        raise ValueError(f"{endpoint}: a CURVE key is not 40 Z85 characters") from None


def _ctx() -> zmq.Context:
    return zmq.Context.instance()


def _attach(
    sock: zmq.Socket, endpoint: str, bind: bool, security: Security | None, insecure: bool
) -> zmq.Socket:
    try:
        if bind:
            check_bind(endpoint, security, insecure=insecure)
        if security is not None:
            _secure(sock, endpoint, security, bind)
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

    def failure(self) -> str | None:
        """Why the latest handshake failed (None: none failed, or a later one succeeded)."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
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
    """Send `msg` (arrays zero-copy), signed with `auth` (see protocol.encode).
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


Accept = Callable[[Message, str], str | None]
"""accept(message, auth) -> None to take the message, or a short reason to reject it."""


class Receiver:
    """Receives messages from one or more sockets; rejects malformed ones and those `accept`
    refuses, counting them per reason (`rejected_by`, total `rejected`) and logging each reason
    at most once per 10 s. Rejections are never raised."""

    def __init__(
        self,
        *socks: zmq.Socket,
        name: str = "",
        accept: Accept | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poller = zmq.Poller()
        for s in socks:
            self.poller.register(s, zmq.POLLIN)
        self.socks = socks
        self.name = name
        self.accept = accept
        self.clock = clock
        self.rejected = 0
        self.rejected_by: dict[str, int] = {}
        self._log_limit = _RateLimit(REJECT_LOG_INTERVAL_S)

    def recv(self, timeout_ms: float | None) -> Message | None:
        """The next accepted message, or None when none came within `timeout_ms` (None: wait)."""
        while True:
            ready = dict(self.poller.poll(None if timeout_ms is None else int(timeout_ms)))
            if not ready:
                return None
            for sock in self.socks:
                if sock in ready:
                    msg = self._check(sock.recv_multipart(copy=False))
                    if msg is not None:
                        return msg
            timeout_ms = 0  # a rejected message: look once more without waiting

    def recv_from(self, timeout_ms: float | None) -> tuple[bytes, Message] | None:
        """For a Receiver of one ROUTER socket: (the sender's id, its accepted message), or None
        when none came within `timeout_ms`."""
        (sock,) = self.socks
        while True:
            if not sock.poll(None if timeout_ms is None else int(timeout_ms)):
                return None
            peer, *parts = sock.recv_multipart(copy=False)
            msg = self._check(parts)
            if msg is not None:
                return peer.bytes, msg
            timeout_ms = 0

    def _check(self, parts: list[Any]) -> Message | None:
        try:
            msg, auth = decode_envelope(parts)
        except ProtocolError as e:
            self._reject("malformed", str(e))
            return None
        reason = self.accept(msg, auth) if self.accept is not None else None
        if reason is not None:
            # auth may be a secret (a credential): the log names the message, never the auth
            stream = getattr(msg, "stream", "")
            self._reject(reason, f"a {type(msg).__name__}" + (f" of {stream!r}" if stream else ""))
            return None
        return msg

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected += 1
        n = self.rejected_by[reason] = self.rejected_by.get(reason, 0) + 1
        if self._log_limit.ready(reason, self.clock()):
            log.warning(
                "%s: rejected a message: %s (%s; %d so far for this reason)",
                self.name,
                reason,
                detail,
                n,
            )


def recv_raw(sock: zmq.Socket, timeout_ms: float | None) -> list[Any] | None:
    """The next multipart message's frames as bytes, or None on timeout (for subscribers)."""
    if sock.poll(None if timeout_ms is None else int(timeout_ms)):
        return sock.recv_multipart()
    return None


def close_all(*, abort: bool = False) -> None:
    """Close every socket of this process, each delivering what it holds per its own linger;
    `abort` (the stage was interrupted) drops whatever is undelivered at once."""
    global _auth
    with _auth_lock:
        if _auth is not None:  # CURVE servers refuse new handshakes from now on (fail closed)
            _auth.stop()
            _auth = None
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
