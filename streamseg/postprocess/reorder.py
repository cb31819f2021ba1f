"""Per-stream order restore for results from several inference workers. Pure: the clock is given.

Workers finish batches in any order, so a stream's results can arrive out of order. The
dispatcher hands each stream's frames out in order and stamps each with `prev`, the frame of the
same stream it handed out just before (-1: none known: the stream's first frame, or a single
inference process, whose results already arrive in order). A result is released once its `prev`
was released (or skipped), so frames the dispatcher dropped (live: stale) leave no gap to wait
for. Like detectron2's AsyncPredictor, but bounded:

- at most `capacity` results wait per stream; past that the oldest is released anyway (the gap
  before it is skipped), so a lost result can never hold memory or the stream for good;
- `wait_s` (live runs): a result waiting longer than this for its predecessor is released, the
  gap skipped (its predecessor went down with a worker, and was counted there as `worker_lost`);
- a result older than one already released is `late` and is not released (order is kept); a
  second copy of one seen is a `duplicate` (a file run re-sends a lost worker's frames, and the
  worker may have sent some of them before it went).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from streamseg.accounting import Counters
from streamseg.wire.messages import Detections, EndOfStream

T = TypeVar("T")

RELEASED, LATE, DUPLICATE = "released", "late", "duplicate"


@dataclass
class _Held(Generic[T]):
    prev: int
    item: T
    arrival: float


@dataclass
class _Stream(Generic[T]):
    last: int | None = None
    """The newest frame released (None: none yet)."""
    held: dict[int, _Held[T]] = field(default_factory=dict)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=1024))
    """Frames released lately (to tell a duplicate from a late frame)."""
    seen: int = 0
    """Distinct frames taken in (released, held or late)."""
    chained: bool = False
    """A frame came with a known predecessor: results come from several workers."""
    skipped: int = 0
    """Times a gap was skipped (capacity or wait_s)."""


class Reorder(Generic[T]):
    def __init__(
        self, *, capacity: int = 128, wait_s: float | None = None, clock: Callable[[], float]
    ) -> None:
        """capacity: results held per stream at most; wait_s: live runs, the longest a result
        waits for its predecessor (None: as long as capacity allows, file runs)."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.wait_s = wait_s
        self.clock = clock
        self.streams: dict[str, _Stream[T]] = {}

    def push(self, stream: str, frame: int, prev: int, item: T) -> tuple[str, list[T]]:
        """Take one result: what became of it (RELEASED, also when it only waits; LATE;
        DUPLICATE) and the results now released, in frame order."""
        s = self.streams.setdefault(stream, _Stream())
        if frame in s.held or frame in s.recent:
            return DUPLICATE, []
        s.seen += 1
        if s.last is not None and frame <= s.last:
            return LATE, []
        s.chained |= prev >= 0
        s.held[frame] = _Held(prev, item, self.clock())
        out = self._release(s)
        while len(s.held) > self.capacity:  # bounded: skip the gap before the oldest
            s.skipped += 1
            out += self._release(s, force=True)
        return RELEASED, out

    def expire(self) -> list[tuple[str, T]]:
        """Live runs: results released because they waited `wait_s` for a predecessor."""
        out: list[tuple[str, T]] = []
        if self.wait_s is None:
            return out
        now = self.clock()
        for name, s in self.streams.items():
            while s.held and now - s.held[min(s.held)].arrival >= self.wait_s:
                s.skipped += 1
                out += [(name, item) for item in self._release(s, force=True)]
        return out

    def flush(self, stream: str) -> list[T]:
        """The stream ended: everything it holds, in frame order; the stream is forgotten."""
        s = self.streams.pop(stream, None)
        if s is None:
            return []
        return [s.held[f].item for f in sorted(s.held)]

    def held(self, stream: str) -> int:
        s = self.streams.get(stream)
        return len(s.held) if s else 0

    def seen(self, stream: str) -> int:
        """Distinct frames of `stream` taken in so far."""
        s = self.streams.get(stream)
        return s.seen if s else 0

    def chained(self, stream: str) -> bool:
        """Whether `stream`'s results come from several workers (they carry a predecessor)."""
        s = self.streams.get(stream)
        return bool(s and s.chained)

    def released(self, stream: str, frame: int) -> bool:
        """Whether `stream`'s results up to `frame` are out (released, or their gap skipped)."""
        s = self.streams.get(stream)
        return bool(s and s.last is not None and s.last >= frame)

    def skipped(self, stream: str) -> int:
        s = self.streams.get(stream)
        return s.skipped if s else 0

    def _release(self, s: _Stream[T], *, force: bool = False) -> list[T]:
        """Release the oldest held result while its predecessor is out (or once, `force`)."""
        out = []
        while s.held:
            frame = min(s.held)
            h = s.held[frame]
            ready = h.prev < 0 or (s.last is not None and h.prev <= s.last)
            if not (ready or force):
                break
            force = False
            del s.held[frame]
            s.last = frame
            s.recent.append(frame)
            out.append(h.item)
        return out


REORDER_WAIT_S = 1.0
"""Live runs: the longest a result waits for an earlier frame of its stream that went down with
an inference worker."""
END_WAIT_S = {False: 30.0, True: 1.0}
"""Results from several workers: how long (file runs, live runs) an end-of-stream waits for
results of its stream still on their way from other workers (they all came once the last frame
the dispatcher handed out is out; a frame lost with a worker in a live run never comes)."""


class OrderedInput:
    """The postprocess stage's input in stream order: Detections and end-of-streams go in
    (`put`), and come out (`take`) in each stream's frame order, an end-of-stream after its
    stream's last result. Duplicates and late results are counted in `counters`, not passed.

    Results of a stream whose start was not seen yet wait for it (`start`), up to `capacity`
    and END_WAIT_S: with several workers the start comes from the dispatcher and the results
    from the workers, on other connections (other hosts, even), and may be overtaken."""

    def __init__(
        self,
        counters: Counters,
        *,
        live: bool,
        capacity: int = 128,
        adopt: bool = False,
        clock: Callable[[], float],
    ) -> None:
        """adopt: results of streams never started pass at once (a restarted postprocess,
        whose streams started before its life)."""
        self.counters = counters
        self.live = live
        self.adopt = adopt
        self.clock = clock
        self.capacity = capacity
        self.started: set[str] = set()
        self.early: dict[str, list[tuple[Detections, float]]] = {}
        self.reorder: Reorder[Detections] = Reorder(
            capacity=capacity, wait_s=REORDER_WAIT_S if live else None, clock=clock
        )
        self.out: list[Detections | EndOfStream] = []
        self.ending: dict[str, tuple[EndOfStream, float]] = {}

    def put(self, msg: Detections | EndOfStream) -> None:
        if isinstance(msg, EndOfStream):
            self.ending[msg.stream] = (msg, self.clock() + END_WAIT_S[self.live])
            return
        if not (self.adopt or msg.stream in self.started):
            early = self.early.setdefault(msg.stream, [])
            if len(early) < self.capacity:
                early.append((msg, self.clock()))
                return
        self._push(msg)

    def start(self, stream: str) -> None:
        """`stream` started: its results that came before pass now."""
        self.started.add(stream)
        for det, _ in self.early.pop(stream, []):
            self._push(det)

    def _push(self, msg: Detections) -> None:
        verdict, ready = self.reorder.push(msg.stream, msg.frame, msg.prev, msg)
        if verdict == DUPLICATE:  # a lost worker's frame, sent again, came twice
            # (not "duplicates": that key counts instances dropped as duplicate masks)
            extra = self.counters[msg.stream].extra
            extra["resent_copies"] = extra.get("resent_copies", 0) + 1
        elif verdict == LATE:  # older than a result already passed: order is kept
            self.counters.count_in(msg.stream)
            self.counters.drop(msg.stream, "late")
        self.out += ready

    def take(self) -> list[Detections | EndOfStream]:
        """What is due now, in order (call after each `put`, and when idle)."""
        now = self.clock()
        for stream, early in list(self.early.items()):  # a start that never came: pass them
            if early and now - early[0][1] >= END_WAIT_S[self.live]:
                del self.early[stream]
                for det, _ in early:
                    self._push(det)
        out, self.out = self.out, []
        out += [det for _, det in self.reorder.expire()]
        for eos, deadline in list(self.ending.values()):
            s = eos.stream
            if self._on_their_way(eos) and now < deadline:
                continue  # results of other workers on their way
            del self.ending[s]
            out += self.reorder.flush(s)
            out.append(eos)
        return out

    def _on_their_way(self, eos: EndOfStream) -> bool:
        """Whether results of `eos`'s stream are still at workers. The dispatcher names the
        last frame it handed out (`eos.prev`); all came once that one is out. Without one (a
        single inference process: its results came before the end, on the same connection; or
        a dispatcher that named none), only results that came chained say there are workers,
        and the count says whether all came."""
        s = eos.stream
        if eos.prev >= 0:
            return not self.reorder.released(s, eos.prev)
        return self.reorder.chained(s) and self.reorder.seen(s) < eos.frames
