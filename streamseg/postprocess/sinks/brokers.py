"""The broker sinks (`--sink URL`): MQTT, Redis Streams, webhooks. Each is a `Threaded` sink
(its own thread, a bounded queue, every result counted); this module makes one from a parsed
URL (`streamseg.sink_urls`) and holds what they share: the per-frame payload and the
once-per-outage log lines.

Delivery policy (docs/sinks.md): a sink never slows the frame loop or another sink. While its
server is down or slow, results wait in its queue, at most `max_pending` of them; beyond that
the oldest are dropped and counted ("queue_full"). It reconnects with backoff and logs the
outage once and the recovery once. At the end of the run it has `drain_s` to deliver what is
queued (a file run 4 s, a live run 2 s); the rest is counted "closed".
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np

from streamseg.postprocess.instances import Instances
from streamseg.postprocess.sinks.base import FrameOut, Sink
from streamseg.postprocess.sinks.payload import encode, record
from streamseg.postprocess.sinks.threaded import Threaded
from streamseg.postprocess.tracking import local_masks
from streamseg.sink_urls import SinkUrl

log = logging.getLogger(__name__)

DRAIN_S = {False: 4.0, True: 2.0}
"""live -> how long a sink may still deliver at the end, unless its URL says (drain_s=): within
the 5 s the supervisor gives a finished run's stages to exit before it stops them."""


def build(spec: SinkUrl, *, live: bool) -> Sink:
    """The sink `spec` names (its client library imported now: `sink_urls.check_extra` said
    before the run whether it is installed)."""
    drain_s = spec.drain_s if spec.drain_s is not None else DRAIN_S[live]
    if spec.kind == "mqtt":
        from streamseg.postprocess.sinks.mqtt import Mqtt

        return Mqtt(spec, drain_s=drain_s)
    if spec.kind == "redis":
        from streamseg.postprocess.sinks.redis_streams import RedisStreams

        return RedisStreams(spec, drain_s=drain_s)
    from streamseg.postprocess.sinks.webhook import Webhook

    return Webhook(spec, drain_s=drain_s)


class BrokerSink(Threaded):
    """A Threaded sink that queues only what its messages need: the results record (and the
    masks, for polygons), never the frame's pixels, so `max_pending` results held through an
    outage cost their records' size (a few KB each), not a frame each."""

    spec: SinkUrl

    def write(self, frame: FrameOut) -> None:
        instances = frame.instances if self.spec.polygons else _NO_INSTANCES
        super().write(replace(frame, instances=instances, annotated=None))


_NO_INSTANCES = Instances(
    masks=local_masks(np.zeros((0, 1, 1), bool)),
    boxes=np.zeros((0, 4), np.float32),
    labels=np.zeros(0, np.int64),
    scores=np.zeros(0, np.float32),
    colors=np.zeros((0, 3)),
    track_ids=np.zeros(0, np.int64),
)
"""What a queued frame holds instead of its instances' arrays when no polygons are sent."""


def message(frame: FrameOut, spec: SinkUrl) -> bytes:
    """The frame's payload for `spec` (full or slim, postprocess.sinks.payload), as JSON."""
    masks = frame.instances.masks if spec.polygons else None
    return encode(record(frame.result, masks, payload=spec.payload, polygons=spec.polygons))


class Outage:
    """Logs a sink's server going away once and coming back once, however many messages
    fail in between (thread-safe: client libraries call back from their own threads)."""

    def __init__(self, spec: SinkUrl) -> None:
        self.spec = spec
        self.down = False
        self.ever_up = False
        self._lock = threading.Lock()

    def lost(self, why: object) -> None:
        with self._lock:
            if self.down:
                return
            self.down = True
            first = not self.ever_up
        s = self.spec
        if first:
            log.warning(
                "%s: %s:%d not reachable yet (%s); retrying with backoff, results wait (the "
                "oldest dropped beyond max_pending=%d)",
                s.shown, s.host, s.port, why, s.max_pending,
            )  # fmt: skip
        else:
            log.warning(
                "%s: connection to %s:%d lost (%s); reconnecting with backoff, results wait "
                "(the oldest dropped beyond max_pending=%d)",
                s.shown, s.host, s.port, why, s.max_pending,
            )  # fmt: skip

    def up(self) -> None:
        with self._lock:
            was_down, self.down, self.ever_up = self.down, False, True
        if was_down:
            log.warning("%s: connected to %s:%d, delivering", self.spec.shown, *self._where())

    def _where(self) -> tuple[str, int]:
        return self.spec.host, self.spec.port


class Backoff:
    """Waits between retries: `first` seconds, doubling up to `most`; `reset` after a success."""

    def __init__(self, first: float = 0.2, most: float = 10.0) -> None:
        self.first, self.most = first, most
        self.next = first

    def take(self) -> float:
        wait, self.next = self.next, min(self.most, self.next * 2)
        return wait

    def reset(self) -> None:
        self.next = self.first
