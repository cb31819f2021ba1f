"""Dynamic batching of frames from many streams, with the live drop policy. Pure: no I/O.

Frames from all streams queue here. A batch is ready when `max_batch` frames wait, when the
oldest waiting frame has waited `max_wait_s`, or when an end-of-stream waits behind frames
(flush). Batches take frames oldest-arrival first, across streams.

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
        clock: Callable[[], float],
    ) -> None:
        """depth: live policy, newest frames kept per stream; None: lossless.
        capacity: lossless policy, frames held before `full()` asks the caller to wait."""
        if max_batch < 1 or (depth is not None and depth < 1):
            raise ValueError("max_batch and depth must be >= 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.depth = depth
        self.capacity = max(capacity, max_batch)
        self.clock = clock
        self.queues: dict[str, deque[_Item]] = {}
        self.n_frames = 0

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
                    waiting -= 1
                    self.n_frames -= 1
        return dropped

    def full(self) -> bool:
        """Lossless policy: true while the caller should stop receiving frames."""
        return self.depth is None and self.n_frames >= self.capacity

    def __len__(self) -> int:
        return self.n_frames

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
        while len(frames) < self.max_batch:
            candidates = [q for q in self.queues.values() if q and q[0].is_frame]
            if not candidates:
                break
            q = min(candidates, key=lambda q: q[0].arrival)
            frames.append(q.popleft().msg)
            self.n_frames -= 1
        return Batch(controls=controls, frames=frames)

    def drop_stream(self, stream: str) -> list[Any]:
        """Forget a stream's queued frames (e.g. its source restarted); returns them."""
        q = self.queues.pop(stream, deque())
        frames = [it.msg for it in q if it.is_frame]
        self.n_frames -= len(frames)
        return frames
