"""The live link's pure core: reconnect, backoff and watchdog decisions, and one pts timeline.

As in Savant's stall detector: a Sample with the time goes in, a Verdict comes out; no clock of
its own, no I/O, nothing of the pipeline imported, so every decision is testable exactly.
`PtsMapper` keeps one monotonic timeline per stream across reconnects.
"""

from __future__ import annotations

from dataclasses import dataclass

# Verdict actions
NONE = "none"
"""Carry on; ask again within `wait_s`."""
CONNECT = "connect"
"""Open the stream now (start a reader)."""
DROP = "drop"
"""The connection is lost or stalled: abandon the reader, retry after `wait_s`."""
GIVE_UP = "give_up"
"""Down for longer than give_up_s: end the stream as lost."""

# Link phases
IDLE, CONNECTING, STREAMING, WAITING, GONE = "idle", "connecting", "streaming", "waiting", "gone"


@dataclass(frozen=True)
class Sample:
    """What the shell saw at time `now` (seconds, any monotonic clock).

    event: "tick" (nothing new: just check the deadlines), "opened" (the reader opened the stream),
    "frame" (a frame arrived), "lost" (the reader ended: error or end of stream).
    """

    now: float
    event: str = "tick"
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    action: str
    """NONE, CONNECT, DROP or GIVE_UP."""
    wait_s: float
    """Ask again (with a tick) within this many seconds at the latest."""
    reason: str = ""


def backoff_s(attempt: int, *, retry_min_s: float, retry_max_s: float) -> float:
    """Wait before retry number `attempt` (1, 2, ...): retry_min_s doubling, capped."""
    return min(retry_max_s, retry_min_s * 2.0 ** max(0, attempt - 1))


class LinkWatch:
    """Reconnect, backoff and watchdog decisions for one live stream. Pure: time comes in Samples.

    - A stream that delivers no frame for `stall_s` (while streaming, or since a connection
      attempt began) is stalled: DROP, whatever the reader is doing.
    - After a loss, retry after retry_min_s, doubling per failed attempt up to retry_max_s; a
      frame resets the backoff.
    - Down (no frame) for `give_up_s` (None: never) since the last frame, or since the start:
      GIVE_UP.
    """

    def __init__(
        self,
        *,
        stall_s: float = 5.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
        give_up_s: float | None = None,
    ) -> None:
        if stall_s <= 0 or retry_min_s <= 0 or retry_max_s < retry_min_s:
            raise ValueError("need stall_s > 0 and 0 < retry_min_s <= retry_max_s")
        self.stall_s = stall_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.give_up_s = give_up_s
        self.phase = IDLE
        self.failures = 0
        """Consecutive failed attempts (since the last frame)."""
        self.attempts = 0
        """Connection attempts so far."""
        self.reconnects = 0
        """Successful re-opens after the first open."""
        self.opened_once = False
        self.since = 0.0  # start of the current connection attempt
        self.last_frame = 0.0
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.last_reason = ""

    def update(self, s: Sample) -> Verdict:
        if self.phase == IDLE:
            self.down_since = s.now
            return self._connect(s.now)
        if self.phase == GONE:
            return Verdict(GIVE_UP, 0.0, self.last_reason)
        if s.event == "opened" and self.phase == CONNECTING:
            if self.opened_once:
                self.reconnects += 1
            self.opened_once = True
        elif s.event == "frame" and self.phase in (CONNECTING, STREAMING):
            self.phase, self.last_frame = STREAMING, s.now
            self.failures, self.down_since = 0, None
        elif s.event == "lost" and self.phase in (CONNECTING, STREAMING):
            return self._drop(s.now, s.reason or "stream ended")
        if self.phase == STREAMING:
            quiet = s.now - self.last_frame
            if quiet >= self.stall_s:
                return self._drop(s.now, f"stalled: no frame for {quiet:.1f} s")
            return Verdict(NONE, self.stall_s - quiet)
        if self._gone(s.now):
            self.phase = GONE
            return Verdict(GIVE_UP, 0.0, self.last_reason)
        if self.phase == CONNECTING:
            waited = s.now - self.since
            if waited >= self.stall_s:
                return self._drop(s.now, f"stalled: no frame {waited:.1f} s after connecting")
            return Verdict(NONE, self._until_give_up(s.now, self.stall_s - waited))
        # WAITING
        if s.now >= self.retry_at:
            return self._connect(s.now)
        return Verdict(NONE, self._until_give_up(s.now, self.retry_at - s.now))

    def describe(self, now: float) -> str:
        """The state for the stats line: "up", "connecting", "down, retrying in 4 s", "gone"."""
        if self.phase == STREAMING:
            return "up"
        if self.phase == WAITING:
            return f"down, retrying in {max(0.0, self.retry_at - now):.0f} s"
        if self.phase == GONE:
            return "gone"
        return "connecting"

    def _connect(self, now: float) -> Verdict:
        self.phase, self.since = CONNECTING, now
        self.attempts += 1
        return Verdict(CONNECT, self._until_give_up(now, self.stall_s))

    def _drop(self, now: float, reason: str) -> Verdict:
        self.failures += 1
        self.last_reason = reason
        if self.down_since is None:  # down since the last frame (the stream was up until then)
            self.down_since = self.last_frame if self.phase == STREAMING else now
        if self._gone(now):
            self.phase = GONE
            return Verdict(GIVE_UP, 0.0, reason)
        delay = backoff_s(self.failures, retry_min_s=self.retry_min_s, retry_max_s=self.retry_max_s)
        self.phase, self.retry_at = WAITING, now + delay
        return Verdict(DROP, self._until_give_up(now, delay), reason)

    def _gone(self, now: float) -> bool:
        return (
            self.give_up_s is not None
            and self.down_since is not None
            and now - self.down_since >= self.give_up_s
        )

    def _until_give_up(self, now: float, wait: float) -> float:
        if self.give_up_s is None or self.down_since is None:
            return wait
        return max(0.0, min(wait, self.down_since + self.give_up_s - now))


class PtsMapper:
    """One strictly increasing pts timeline per stream, across reconnects.

    Every connection restarts its own timestamps (often at 0, and the first decoded frame after
    an open has none), so each connection is shifted to continue one frame period after the last
    pts sent.
    """

    def __init__(self, fps: float = 30.0, *, start: float = 0.0) -> None:
        """start: the first frame's pts (a restarted source goes on from where it got to)."""
        self.period = 1.0 / fps if fps > 0 else 1.0 / 30.0
        self.start = start
        self.last: float | None = None
        self.offset: float | None = None

    def new_connection(self, fps: float) -> None:
        if fps > 0:
            self.period = 1.0 / fps
        self.offset = None

    def __call__(self, pts: float | None) -> float:
        """The stream pts (seconds) for a frame whose connection pts is `pts` (None: unknown)."""
        following = self.start if self.last is None else self.last + self.period
        if pts is None:
            out = following
        else:
            if self.offset is None:
                self.offset = following - pts
            out = pts + self.offset
        if self.last is not None and out <= self.last:
            out = self.last + 1e-6  # never backwards, whatever the camera's clock does
        self.last = out
        return out
