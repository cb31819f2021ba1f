"""The live views' frames: the supervisor's side of the postprocess stage's previews.

One thread owns the ZeroMQ SUB socket (sockets are not thread-safe) and keeps each watched
stream's newest JPEG; HTTP handler threads say which streams they watch and wait for the next
frame. A stream is subscribed to (and so encoded by postprocess) only while at least one viewer
watches it. A viewer that is slow only skips frames: each one always gets the newest.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from streamseg.wire import security, sockets
from streamseg.wire.fields import ProtocolError
from streamseg.wire.previews import Preview, decode_preview, preview_topic

log = logging.getLogger("streamseg")


@dataclass(frozen=True)
class Shot:
    """One preview as it arrived."""

    seq: int
    """Per stream, increasing with every preview received."""
    preview: Preview
    received: float
    """time.time() when the supervisor received it."""


class PreviewHub:
    """expect_auth: the postprocess stage's token (or each of its shards' tokens); previews
    signed otherwise are dropped. more_endpoints: the preview endpoints of postprocess shards
    beyond the first (ipc://; streamseg.shards), all read by the same socket."""

    def __init__(
        self,
        endpoint: str,
        *,
        security: security.Security | None = None,
        expect_auth: str | Sequence[str] = "",
        poll_ms: int = 50,
        more_endpoints: Sequence[str] = (),
    ) -> None:
        self.endpoint = endpoint
        self.more_endpoints = tuple(more_endpoints)
        self.security = security
        self.expect_auth = (expect_auth,) if isinstance(expect_auth, str) else tuple(expect_auth)
        self.poll_ms = poll_ms
        self.viewers: dict[str, int] = {}
        self.shots: dict[str, Shot] = {}
        self.received = self.rejected = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="previews", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; waiting viewers get None at once."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    @contextmanager
    def watching(self, stream: str) -> Iterator[None]:
        """While inside, `stream` is subscribed to (its previews are made)."""
        with self._cond:
            self.viewers[stream] = self.viewers.get(stream, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self.viewers[stream] -= 1
                if not self.viewers[stream]:
                    del self.viewers[stream]

    def next(self, stream: str, after: int, timeout_s: float) -> Shot | None:
        """The newest preview of `stream` newer than seq `after`, waiting up to `timeout_s`;
        None on timeout or when the hub closes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._stop.is_set():
                shot = self.shots.get(stream)
                if shot is not None and shot.seq > after:
                    return shot
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    def _run(self) -> None:
        sock = sockets.preview_subscriber(self.endpoint, security=self.security)
        for endpoint in self.more_endpoints:  # a SUB reads every publisher it connects to
            sock.connect(endpoint)
        subscribed: set[str] = set()
        try:
            while not self._stop.is_set():
                with self._cond:
                    wanted = set(self.viewers)
                for stream in wanted ^ subscribed:
                    on = stream in wanted
                    sockets.set_subscribed(sock, preview_topic(stream), on)
                    if not on:
                        with self._cond:  # a viewer that comes later gets no stale frame
                            self.shots.pop(stream, None)
                subscribed = wanted
                parts = sockets.recv_raw(sock, self.poll_ms)
                if parts is not None:
                    self._take(parts)
        finally:
            sock.close(0)

    def _take(self, parts: list[bytes]) -> None:
        try:
            preview, auth = decode_preview(parts)
        except ProtocolError as e:
            self.rejected += 1
            log.debug("preview rejected: %s", e)
            return
        if any(self.expect_auth) and not any(
            hmac.compare_digest(auth, token) for token in self.expect_auth
        ):
            self.rejected += 1
            return
        with self._cond:
            old = self.shots.get(preview.stream)
            seq = old.seq + 1 if old else 1
            self.shots[preview.stream] = Shot(seq, preview, time.time())
            self.received += 1
            self._cond.notify_all()
