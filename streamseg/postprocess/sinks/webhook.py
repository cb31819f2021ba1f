"""The webhook sink (`--sink http(s)://HOST/PATH`): results POSTed in batches (stdlib only).

A batch is a JSON body `{"results": [payload, ...]}` (frames in order per stream) sent when
`batch` results are waiting or the oldest has waited `interval_s`, and at each stream's end.
With a shared secret (`secret_env=VAR`, or `secret=`), each request carries
`X-Streamseg-Signature: sha256=HEX`, HEX = HMAC-SHA256(secret, the body's bytes), which the
receiver recomputes to know the body came from this run unaltered (docs/sinks.md).

A request that fails (no connection, a timeout, HTTP 408, 429 or 5xx) is retried up to
`retries` times with backoff; then its results are dropped as "retries_spent". Another 4xx
says the receiver will never take it: dropped as "rejected", not retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Any

from streamseg.postprocess.sinks.base import FrameOut, SinkCounts
from streamseg.postprocess.sinks.brokers import Backoff, BrokerSink, Outage, message
from streamseg.sink_urls import SinkUrl, number

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Streamseg-Signature"
_RETRY_STATUS = frozenset({408, 429})
_POLL_S = 0.05


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: "sha256=" + hex HMAC-SHA256 of `body` under `secret`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def body_of(payloads: Sequence[bytes]) -> bytes:
    """A batch's body: {"results": [...]} around the frames' JSON payloads, as bytes."""
    return b'{"results":[' + b",".join(payloads) + b"]}"


class Webhook(BrokerSink):
    """Results POSTed to a URL (see the module docstring); `spec` from sink_urls.parse.

    Results held for the next batch count as pending; a batch given up counts as dropped.
    """

    def __init__(self, spec: SinkUrl, *, drain_s: float) -> None:
        self.batch = int(number(spec, "batch", 10))
        super().__init__(spec.name, max_pending=spec.max_pending, max_batch=self.batch,
                         drain_s=drain_s, idle_s=0.1)  # fmt: skip
        self.spec = spec
        self.interval_s = number(spec, "interval_s", 1.0)
        self.retries = int(number(spec, "retries", 5))
        self.timeout_s = number(spec, "timeout_s", 5.0)
        # the query holds this sink's options, not the receiver's: the request goes without
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        self.target = f"{spec.scheme}://{host}:{spec.port}{spec.path or '/'}"
        secret = spec.secret("secret")
        self.secret = secret.encode() if secret else None
        self.headers = {"Content-Type": "application/json", "User-Agent": "streamseg"}
        if spec.username is not None:
            token = f"{spec.username}:{spec.secret('password') or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self.context = ssl.create_default_context(cafile=spec.option("ca")) if spec.tls else None
        self.outage = Outage(spec)
        self.backoff = Backoff(first=0.2, most=5.0)
        self._held: list[bytes] = []  # payloads waiting for the next batch (the sink's thread)
        self._held_since = 0.0
        self._held_n = 0  # len(_held) as counted (under _cond, see _settle)
        self._lost_now: Counter[str] = Counter()  # given up in the deliver call running now
        self._lost: Counter[str] = Counter()  # under _cond
        self._flushing = False  # a batch is being posted outside a write (under _cond)

    # -- counts: held results are pending, results given up are dropped -----------------------

    def counts(self) -> SinkCounts:
        with self._cond:
            base = super().counts()
            lost = sum(self._lost.values())
            dropped = Counter(base.dropped)
            dropped.update(self._lost)
            return SinkCounts(
                delivered=base.delivered - self._held_n - lost,
                dropped=dict(dropped),
                pending=base.pending + self._held_n,
            )

    def _settle(self, kind: str, value: Any, dropped: str | None) -> None:
        # The base counts a write's frames as delivered when `deliver` returns; the frames it
        # held back or gave up are moved over in the same step (its lock is reentrant), so
        # delivered + dropped + pending is right at every moment.
        with self._cond:
            super()._settle(kind, value, dropped)
            self._settle_held()

    def _settle_held(self) -> None:
        with self._cond:
            self._held_n = len(self._held)
            self._lost.update(self._lost_now)
            self._lost_now.clear()

    def close(self) -> None:
        """As Threaded's, but held results and a batch posted at a stream's end get the drain
        time too (the base waits only for queued writes)."""
        deadline = self.clock() + self.drain_s
        with self._cond:
            while (self._events or self._busy or self._held_n or self._flushing) and (
                self._thread is not None and self._thread.is_alive()
            ):
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, _POLL_S))
        self.drain_s = max(0.0, deadline - self.clock())  # one drain time in all
        super().close()

    # -- the sink's thread ---------------------------------------------------------------------

    def deliver(self, frames: Sequence[FrameOut]) -> None:
        if not self._held:
            self._held_since = self.clock()
        self._held.extend(message(f, self.spec) for f in frames)
        self._flush(force=False)

    def on_idle(self, now: float) -> None:
        if self._held and now - self._held_since >= self.interval_s:
            self._flush_all()

    def on_end(self, stream: str) -> None:
        self._flush_all()

    def on_close(self) -> None:
        self._flush_all()

    def _flush_all(self) -> None:
        """Everything held, outside a write: counted as it goes (no write settles it)."""
        with self._cond:
            self._flushing = True
        try:
            self._flush(force=True)
        finally:
            with self._cond:
                self._flushing = False
                self._settle_held()
                self._cond.notify_all()

    def _flush(self, *, force: bool) -> None:
        """POST full batches; with `force` (or once the oldest waited interval_s) the rest."""
        due = force or self.clock() - self._held_since >= self.interval_s
        while len(self._held) >= self.batch or (due and self._held):
            batch, self._held = self._held[: self.batch], self._held[self.batch :]
            verdict = self._post(body_of(batch))
            if verdict is not None:
                self._lost_now[verdict] += len(batch)
            self._held_since = self.clock()

    def _post(self, body: bytes) -> str | None:
        """POST one batch, retrying; None when delivered, else the reason it was dropped."""
        headers = dict(self.headers)
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        tries = 0
        while True:
            request = urllib.request.Request(self.target, body, headers, method="POST")
            try:
                with urllib.request.urlopen(
                    request, timeout=self.timeout_s, context=self.context
                ) as response:
                    response.read()
                self.outage.up()
                self.backoff.reset()
                return None
            except urllib.error.HTTPError as e:
                e.close()
                if e.code < 500 and e.code not in _RETRY_STATUS:
                    log.warning("%s: HTTP %d: the receiver refused a batch; dropped",
                                self.spec.shown, e.code)  # fmt: skip
                    return "rejected"
            except (urllib.error.URLError, OSError) as e:
                self.outage.lost(getattr(e, "reason", e))
            tries += 1
            if tries > self.retries:
                return "retries_spent"
            if not self._pause(self.backoff.take()):
                return "closed"

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` before a retry; False (at once) when the sink is closing."""
        end = time.monotonic() + seconds
        while not self._stop:
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, _POLL_S))
        return False
