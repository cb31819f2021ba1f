"""Subscribe to a streamseg pipeline's published results (docs/protocol.md).

    from streamseg.client import Subscriber

    for result in Subscriber("tcp://127.0.0.1:5555", streams=["cam1"]):
        print(result.stream, result.frame, f"{result.latency * 1000:.0f} ms")
        for inst in result.instances:
            mask = inst.mask()  # bool[H, W], decoded on demand

Results are typed and frozen. Malformed messages are counted (`rejected`) and skipped, never
raised; results the publisher dropped for this subscriber (it was too slow) are counted per stream
from gaps in `seq` (`missed`). Any other language can subscribe with a plain ZeroMQ SUB socket and
the message format in docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamseg.wire import sockets
from streamseg.wire.codec import decode_published
from streamseg.wire.fields import ProtocolError, check_int, check_number
from streamseg.wire.results import Instance
from streamseg.wire.security import Security
from streamseg.wire.sockets import HandshakeError

__all__ = ["FrameResult", "Instance", "Subscriber", "parse", "to_supervision"]

log = logging.getLogger(__name__)

_CHECK_S = 0.25
"""While waiting for results, a subscriber looks this often whether its handshake failed."""

NOTICE_S = 5.0
"""A subscriber no publisher answered for this long says so (a warning, once): an endpoint
without a publisher is otherwise silent forever, as ZeroMQ retries quietly."""


@dataclass(frozen=True)
class FrameResult:
    """A frame's results as published, plus when this subscriber received them."""

    stream: str
    frame: int
    """Frame number in the stream (gaps: frames the pipeline dropped to stay real time)."""
    pts: float
    """Presentation time, seconds."""
    wall_time: float
    """Capture time, seconds since the epoch (the source's clock)."""
    width: int
    height: int
    seq: int
    """Publish sequence number in the stream (gaps: results this subscriber missed)."""
    received: float
    """Receive time, seconds since the epoch (this machine's clock)."""
    instances: tuple[Instance, ...]

    @property
    def latency(self) -> float:
        """Capture to receive, seconds (meaningful when both clocks agree: same host or NTP)."""
        return self.received - self.wall_time

    def counts(self) -> dict[str, int]:
        """Instances per label name."""
        return dict(Counter(i.label_name for i in self.instances))


def to_supervision(result: FrameResult) -> Any:
    """The frame's instances as a `supervision.Detections` (pip install streamseg[supervision]):
    xyxy boxes, full-frame masks bool[N, H, W], confidence, class_id (label ids), tracker_id
    (track ids; -1 for an untracked instance) and data["class_name"]."""
    try:
        import supervision as sv
    except ImportError:
        raise ImportError(
            "to_supervision needs the supervision package: pip install 'streamseg[supervision]'"
        ) from None
    inst = result.instances
    masks = np.zeros((len(inst), result.height, result.width), bool)
    for k, i in enumerate(inst):
        masks[k] = i.mask()
    return sv.Detections(
        xyxy=np.array([i.box for i in inst], np.float32).reshape(-1, 4),
        mask=masks,
        confidence=np.array([i.score for i in inst], np.float32),
        class_id=np.array([i.label for i in inst], int),
        tracker_id=np.array([-1 if i.track_id is None else i.track_id for i in inst], int),
        data={"class_name": np.array([i.label_name for i in inst], dtype=str)},
    )


def parse(parts: Sequence[Any], received: float) -> FrameResult:
    """A published message ([topic, header, ...]) -> FrameResult; ProtocolError if malformed."""
    r = decode_published(parts)
    width, height = check_int(r.width, "width"), check_int(r.height, "height")
    if not isinstance(r.instances, list):
        raise ProtocolError("instances is not a list")
    return FrameResult(
        stream=r.stream,
        frame=check_int(r.frame, "frame"),
        pts=check_number(r.pts, "pts"),
        wall_time=check_number(r.wall_time, "wall_time"),
        width=width,
        height=height,
        seq=check_int(r.seq, "seq"),
        received=received,
        instances=tuple(Instance.from_json(i, height, width) for i in r.instances),
    )


class GapCounter:
    """Counts results missed per stream from gaps in `seq`. Pure.

    A seq at or below the last one seen means the publisher restarted: counting starts over.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.missed: dict[str, int] = {}

    def add(self, stream: str, seq: int) -> int:
        """Record `seq`; returns how many results were missed just before it."""
        last = self.last.get(stream)
        gap = seq - last - 1 if last is not None and seq > last else 0
        self.last[stream] = seq
        self.missed[stream] = self.missed.get(stream, 0) + gap
        return gap


class Subscriber:
    """Iterate over published results: `for result in Subscriber(endpoint, streams=[...])`.

    streams: stream ids to receive (None: all). timeout_s: end the iteration when no result came
    for this long (None: wait forever). hwm: results queued here before the publisher drops
    (ZeroMQ's receive high-water mark). security: CURVE keys for a publisher on the network
    (`curve.client_security(keys, server_key)`; None: plain, for loopback). max_msg_bytes: a
    larger message part disconnects the publisher (ZeroMQ drops it; the subscriber reconnects).
    Counters: `received` and `missed` per stream, `rejected` (malformed messages, skipped).
    """

    def __init__(
        self,
        endpoint: str,
        streams: Sequence[str] | None = None,
        *,
        timeout_s: float | None = None,
        hwm: int = 1000,
        security: Security | None = None,
        max_msg_bytes: int = sockets.DEFAULT_MAX_MSG_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.streams = set(streams) if streams else None
        self.timeout_s = timeout_s
        self.clock = clock
        # ZeroMQ topics match by prefix ("cam1" also gets "cam10"): filter exactly below too.
        self.sock, self.handshakes = sockets.watched_subscriber(
            endpoint,
            sorted(self.streams or [""]),
            hwm=hwm,
            max_msg_bytes=max_msg_bytes,
            security=security,
        )
        self.gaps = GapCounter()
        self.received: dict[str, int] = {}
        self.rejected = 0
        self.started = time.monotonic()
        self._noticed = False

    @property
    def missed(self) -> dict[str, int]:
        return self.gaps.missed

    @property
    def connected(self) -> bool:
        """Whether a publisher ever answered at the endpoint (a handshake succeeded)."""
        self.handshakes.failure()  # takes in the socket's events so far
        return self.handshakes.connected

    def _notice(self) -> None:
        """Warn once when no publisher answered for NOTICE_S."""
        if self._noticed or self.handshakes.connected:
            return
        if time.monotonic() - self.started >= NOTICE_S:
            self._noticed = True
            log.warning(
                "%s: no publisher answers there after %.0f s; still trying (is a pipeline "
                "running with --publish on this endpoint?)",
                self.endpoint,
                NOTICE_S,
            )

    def recv(self, timeout_s: float | None = None) -> FrameResult | None:
        """The next result of a wanted stream, or None when none came within `timeout_s`.

        Raises sockets.HandshakeError when the publisher refuses this subscriber's keys (or
        they disagree on CURVE): nothing would ever arrive.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = _CHECK_S if deadline is None else max(0.0, deadline - time.monotonic())
            parts = sockets.recv_raw(self.sock, min(left, _CHECK_S) * 1000.0)
            if parts is None:
                error = self.handshakes.failure()
                if error is not None:
                    raise HandshakeError(error)
                self._notice()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            try:
                result = parse(parts, self.clock())
            except ProtocolError as e:
                self.rejected += 1
                log.warning("%s: rejected a malformed message (%s)", self.endpoint, e)
                continue
            if self.streams is not None and result.stream not in self.streams:
                continue
            self.gaps.add(result.stream, result.seq)
            self.received[result.stream] = self.received.get(result.stream, 0) + 1
            return result

    def __iter__(self) -> Iterator[FrameResult]:
        while True:
            result = self.recv(self.timeout_s)
            if result is None:
                return
            yield result

    def close(self) -> None:
        self.handshakes.close()
        self.sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
