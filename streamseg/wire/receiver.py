"""Receiving stage messages: decode, check who sent them, count and log what is refused.

`Receiver` takes messages from one or more sockets and hands on only valid ones that its
`accept` policy (streamseg.stage.trust) takes; the others are counted per reason and logged at
most once per 10 s. Rejections are never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from streamseg.wire.codec import decode_envelope
from streamseg.wire.fields import ProtocolError
from streamseg.wire.messages import Message

log = logging.getLogger(__name__)

REJECT_LOG_INTERVAL_S = 10.0
"""A rejection reason is logged at most once per this many seconds (counted always)."""


class RateLimit:
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


class _Deadline:
    """The time left of a wait of `timeout_ms` (None: no end), for zmq polls."""

    def __init__(self, timeout_ms: float | None) -> None:
        self.end = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0

    def ms(self) -> int | None:
        if self.end is None:
            return None
        return max(0, int((self.end - time.monotonic()) * 1000.0))


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
        self._log_limit = RateLimit(REJECT_LOG_INTERVAL_S)

    def recv(self, timeout_ms: float | None) -> Message | None:
        """The next accepted message, or None when none came within `timeout_ms` (None: wait)."""
        left = _Deadline(timeout_ms)
        while True:
            ready = dict(self.poller.poll(left.ms()))
            if not ready:
                return None
            for sock in self.socks:
                if sock in ready:
                    msg = self._check(sock.recv_multipart(copy=False))
                    if msg is not None:
                        return msg
            # a rejected message: wait on for the rest of the time (not just look once more:
            # the next message may still be on its way)

    def recv_from(self, timeout_ms: float | None) -> tuple[bytes, Message] | None:
        """For a Receiver of one ROUTER socket: (the sender's id, its accepted message), or None
        when none came within `timeout_ms`."""
        (sock,) = self.socks
        left = _Deadline(timeout_ms)
        while True:
            if not sock.poll(left.ms()):
                return None
            peer, *parts = sock.recv_multipart(copy=False)
            msg = self._check(parts)
            if msg is not None:
                return peer.bytes, msg

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
