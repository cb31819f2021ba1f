"""A base for sinks that run off the frame path: a thread, a bounded queue, every frame counted.

A subclass says how to deliver (`deliver`, on the sink's own thread); the base does the rest:
the frame loop's calls only queue (they never block, whatever the sink's broker, network or
disk does); beyond `max_pending` queued frames the oldest is dropped, counted as
"queue_full"; a delivery that raises is counted as dropped ("error", or the reason of a
`Dropped`); at close the sink has `drain_s` to deliver what is queued, and what is left is
counted as "closed". delivered + dropped + pending is always every frame written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from streamseg.postprocess.sinks.base import FrameOut, SinkCounts
from streamseg.wire.messages import StreamStart

log = logging.getLogger(__name__)


class Dropped(Exception):  # noqa: N818 - it is a verdict, not a fault
    """Raised by `deliver`: these frames are given up on (e.g. a retry budget spent), counted as
    dropped for `reason` and not logged as an error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_STOP = object()


class Threaded:
    """Base of a sink whose deliveries run on its own thread (see the module docstring).

    Override `deliver` and, where needed, `on_open`, `on_end`, `on_idle`, `on_close`: all
    run on the sink's thread, one at a time, in the order of the loop's calls.

    Args:
        name: the sink's name in the reported counters.
        max_pending: frames queued at most; a new one beyond that drops the oldest.
        max_batch: frames handed to one `deliver` call at most (those already queued; it
            never waits for more).
        drain_s: at close, how long queued frames may still take to be delivered.
        idle_s: `on_idle` is called when no event came for this long (reconnects, timed
            batches).
        clock: monotonic seconds (for close's deadline).
    """

    def __init__(
        self,
        name: str,
        *,
        max_pending: int = 1000,
        max_batch: int = 1,
        drain_s: float = 5.0,
        idle_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending < 1 or max_batch < 1:
            raise ValueError(f"{name}: max_pending and max_batch must be >= 1")
        self.name = name
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.drain_s = drain_s
        self.idle_s = idle_s
        self.clock = clock
        self._cond = threading.Condition()
        self._events: deque[tuple[str, Any]] = deque()  # ("open" | "write" | "end", value)
        self._queued = 0  # frames in _events
        self._busy = 0  # frames in the deliver call now running
        self._delivered = 0
        self._dropped: Counter[str] = Counter()
        self._stop = False
        self._failing = False  # the last delivery raised: the next error is not logged again
        self._thread: threading.Thread | None = None

    # -- the frame loop's side: never blocks ---------------------------------------------------

    def open(self, info: StreamStart) -> None:
        self._put("open", info)

    def write(self, frame: FrameOut) -> None:
        self._put("write", frame)

    def end(self, stream: str) -> None:
        self._put("end", stream)

    def tick(self, now: float) -> None:
        """Nothing: the sink's thread keeps its own time (`on_idle`)."""

    def counts(self) -> SinkCounts:
        with self._cond:
            return SinkCounts(self._delivered, dict(self._dropped), self._queued + self._busy)

    def close(self) -> None:
        """Give queued frames `drain_s` to be delivered, then stop; frames left are counted
        as dropped ("closed"). Returns within about `drain_s`, whatever `deliver` does."""
        with self._cond:
            if self._thread is None or self._stop:
                self._stop = True
                return
            deadline = self.clock() + self.drain_s
            while (self._events or self._busy) and self._thread.is_alive():
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            self._stop = True
            left_over = self._queued
            if left_over:
                self._dropped["closed"] += left_over
            self._events.clear()
            self._queued = 0
            self._events.append(("stop", _STOP))
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - self.clock()) + 0.1)
        if self._thread.is_alive():
            log.warning("%s: still delivering at close; its frame is counted pending", self.name)

    def _put(self, kind: str, value: Any) -> None:
        with self._cond:
            if self._stop:
                if kind == "write":
                    self._dropped["closed"] += 1
                return
            if kind == "write":
                if self._queued >= self.max_pending:
                    self._drop_oldest()
                self._queued += 1
            self._events.append((kind, value))
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}")
                self._thread.daemon = True  # close() bounds the wait; never hold up an exit
                self._thread.start()

    def _drop_oldest(self) -> None:
        for i, (kind, _) in enumerate(self._events):
            if kind == "write":
                del self._events[i]
                self._queued -= 1
                self._dropped["queue_full"] += 1
                return

    # -- the sink's thread ---------------------------------------------------------------------

    def deliver(self, frames: Sequence[FrameOut]) -> None:
        """Deliver these frames (1 to max_batch, in order); return once they are delivered.
        Raise `Dropped(reason)` to give them up; any other error drops them as "error"."""
        raise NotImplementedError

    def on_open(self, info: StreamStart) -> None:
        """A stream started."""

    def on_end(self, stream: str) -> None:
        """A stream ended; its frames before this were all handed to `deliver`."""

    def on_idle(self, now: float) -> None:
        """No event for `idle_s` (now: clock seconds)."""

    def on_close(self) -> None:
        """The sink stops: release its connections (the last call on its thread)."""

    def _next(self) -> tuple[str, Any]:
        """The next event (a run of up to max_batch frames as one "write"), waiting for it;
        ("idle", now) when none came for idle_s."""
        with self._cond:
            if not self._events:
                self._cond.wait(self.idle_s)
            if not self._events:
                return "idle", self.clock()
            kind, value = self._events.popleft()
            if kind != "write":
                return kind, value
            frames = [value]
            while len(frames) < self.max_batch and self._events and self._events[0][0] == "write":
                frames.append(self._events.popleft()[1])
            self._queued -= len(frames)
            self._busy = len(frames)
            return "write", frames

    def _run(self) -> None:
        try:
            while True:
                kind, value = self._next()
                if kind == "stop":
                    return
                try:
                    if kind == "write":
                        self.deliver(value)
                    elif kind == "open":
                        self.on_open(value)
                    elif kind == "end":
                        self.on_end(value)
                    else:
                        self.on_idle(value)
                except Dropped as e:
                    self._settle(kind, value, e.reason)
                except Exception as e:  # noqa: BLE001 - counted; a sink never stops the stage
                    if not self._failing:
                        log.warning("%s: %s failed (%s); counting drops until it recovers",
                                    self.name, kind, e)  # fmt: skip
                    self._failing = True
                    self._settle(kind, value, "error")
                else:
                    if self._failing and kind == "write":
                        log.info("%s: delivering again", self.name)
                        self._failing = False
                    self._settle(kind, value, None)
        finally:
            try:
                self.on_close()
            finally:
                with self._cond:
                    if self._queued + self._busy:
                        self._dropped["closed"] += self._queued + self._busy
                    self._queued = self._busy = 0
                    self._events.clear()
                    self._cond.notify_all()

    def _settle(self, kind: str, value: Any, dropped: str | None) -> None:
        """Count a finished event: its frames delivered, or dropped for `dropped`."""
        if kind != "write":
            return
        with self._cond:
            if dropped is None:
                self._delivered += len(value)
            else:
                self._dropped[dropped] += len(value)
            self._busy = 0
            self._cond.notify_all()
