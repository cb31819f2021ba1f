"""Dynamic batching of frames from many streams, with the live drop policy. Pure: no I/O.

Frames from all streams queue here. A batch is ready when `max_batch` frames wait, when the
oldest waiting frame has waited `max_wait_s`, or when an end-of-stream waits behind frames
(flush).

Fair share: a batch takes frames one at a time from the streams that have a frame waiting,
in turn (by weight when streams have weights: start-time fair queueing), as DeepStream's muxer takes
one frame per source. Taking the oldest frame first instead lets the phase of each camera's
clock decide: with the live policy a replaced frame is always young, and over capacity one
stream got 15 times another's share (measured: 6 RTSP streams into one worker).

Two policies:
  lossless (depth=None)  nothing is dropped; the caller stops receiving while `full()` is true,
                         which backs pressure up to the sources (file runs).
  live (depth=k)         each stream keeps only its k newest frames: a new frame pushes out the
                         oldest waiting one (freshest frame wins), and every drop is returned so
                         the caller counts it.
Control messages (stream start, end of stream) are never dropped and keep their place in their
stream's order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Item:
    msg: Any
    arrival: float
    is_frame: bool


@dataclass
class Batch:
    """What the caller does next: pass `controls` on, then run the model on `frames`."""

    controls: list[Any] = field(default_factory=list)
    frames: list[Any] = field(default_factory=list)


class Batcher:
    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        depth: int | None = None,
        capacity: int = 64,
        weights: dict[str, float] | None = None,
        clock: Callable[[], float],
    ) -> None:
        """depth: live policy, newest frames kept per stream; None: lossless.
        capacity: lossless policy, frames held before `full()` asks the caller to wait.
        weights: a stream's share of the frames taken when streams offer more than is taken,
        relative to the others (default 1.0 each)."""
        if max_batch < 1 or (depth is not None and depth < 1):
            raise ValueError("max_batch and depth must be >= 1")
        if weights and min(weights.values()) <= 0:
            raise ValueError("stream weights must be > 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.depth = depth
        self.capacity = max(capacity, max_batch)
        self.clock = clock
        self.queues: dict[str, deque[_Item]] = {}
        self.n_frames = 0
        self.weights = dict(weights or {})
        self.vtime: dict[str, float] = {}
        """Fair share: each stream's virtual time (frames taken / weight, from when it joined)."""
        self.now_v = 0.0
        self.served: dict[str, int] = {}
        self.turn = 0
        self.backlogged: set[str] = set()
        """Streams that had a frame waiting when the last batch formed."""

    def put(self, stream: str, msg: Any, *, is_frame: bool) -> list[Any]:
        """Queue a frame or control message; returns the frames dropped to make room (live)."""
        q = self.queues.setdefault(stream, deque())
        q.append(_Item(msg, self.clock(), is_frame))
        dropped: list[Any] = []
        if is_frame:
            self.n_frames += 1
            if self.depth is not None:
                waiting = sum(1 for it in q if it.is_frame)
                while waiting > self.depth:
                    for it in q:  # the oldest frame; controls keep their place
                        if it.is_frame:
                            q.remove(it)
                            dropped.append(it.msg)
                            break
                    # The stream's wait goes on from its oldest frame's arrival: were it to
                    # start over with each replacement, frames arriving more often than
                    # max_wait_s would hold off every batch short of max_batch for ever.
                    for later in q:
                        if later.is_frame:
                            later.arrival = min(later.arrival, it.arrival)
                            break
                    waiting -= 1
                    self.n_frames -= 1
        return dropped

    def full(self) -> bool:
        """Lossless policy: true while the caller should stop receiving frames."""
        return self.depth is None and self.n_frames >= self.capacity

    def __len__(self) -> int:
        return self.n_frames

    def controls(self) -> list[Any]:
        """The control messages due now (at their stream's head), without forming a batch."""
        return self._controls_at_heads()

    def _controls_at_heads(self) -> list[Any]:
        out = []
        for q in self.queues.values():
            while q and not q[0].is_frame:
                out.append(q.popleft().msg)
        return out

    def next_batch(self) -> Batch | float:
        """A Batch to run now, or the seconds to wait before asking again (inf: nothing queued)."""
        controls = self._controls_at_heads()
        heads = [q[0] for q in self.queues.values() if q]
        if not heads:
            return Batch(controls=controls) if controls else float("inf")
        now = self.clock()
        oldest = min(it.arrival for it in heads)
        flush = any(not it.is_frame for q in self.queues.values() for it in q)
        wait = oldest + self.max_wait_s - now
        if self.n_frames < self.max_batch and wait > 0 and not flush:
            return Batch(controls=controls) if controls else wait
        frames = []
        self._rejoin()
        while len(frames) < self.max_batch:
            stream = self._next_stream()
            if stream is None:
                break
            frames.append(self.queues[stream].popleft().msg)
            self.n_frames -= 1
        return Batch(controls=controls, frames=frames)

    def _rejoin(self) -> None:
        """Streams that had no frame waiting when the last batch formed rejoin at the virtual
        time of those that kept waiting, so an idle stream saves up no burst (and a new one
        does not start behind)."""
        ready = {s for s, q in self.queues.items() if q and q[0].is_frame}
        kept = [self.vtime[s] for s in ready & self.backlogged if s in self.vtime]
        base = min(kept) if kept else self.now_v
        for s in ready - self.backlogged:
            self.vtime[s] = max(self.vtime.get(s, 0.0), base)
        self.backlogged = ready

    def _next_stream(self) -> str | None:
        """The stream whose frame goes next, among those with a frame at their head: the one
        with the least virtual time (start-time fair queueing); taking a frame advances a
        stream's virtual time by 1/weight. Ties (equal weights): the stream served least
        recently, so equal streams take turns."""
        ready = [s for s, q in self.queues.items() if q and q[0].is_frame]
        if not ready:
            return None
        for s in ready:
            self.vtime.setdefault(s, self.now_v)
        best = min(ready, key=lambda s: (self.vtime[s], self.served.get(s, -1)))
        self.now_v = self.vtime[best]
        self.vtime[best] += 1.0 / self.weights.get(best, 1.0)
        self.turn += 1
        self.served[best] = self.turn
        return best

    def requeue(self, stream: str, msgs: list[Any]) -> None:
        """Put frames back at the head of their stream, in the order given (frames handed to a
        worker that was lost: they go out again before any newer frame of the stream)."""
        q = self.queues.setdefault(stream, deque())
        now = self.clock()
        for msg in reversed(msgs):
            q.appendleft(_Item(msg, now, True))
        self.n_frames += len(msgs)
