"""Live sources: RTSP streams and cameras that reconnect, files played at their own frame rate.

Two layers, as in Savant's stall detector:

  pure core   `LinkWatch` (connect / stall / backoff / give-up decisions: a Sample with the time
              goes in, a Verdict comes out; no clock of its own, no I/O) and `PtsMapper` (one
              monotonic timeline per stream across reconnects).
  thin shell  `run_live`: a reader thread per connection decodes with PyAV and hands frames to
              the source's main thread, which feeds the core and acts on its verdicts: start a
              reader, abandon a stalled one, wait, give up. The main thread never blocks on the
              network or on inference, so a reader stuck inside FFmpeg (PyAV's own timeouts can
              hang or misfire) cannot stall the stream: the watchdog abandons it and reconnects.

A live source never waits for inference: a frame the inference queue has no room for is dropped
and counted ("queue_full"). Frame numbers keep counting across reconnects.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamseg.accounting import Counters
from streamseg.wire.protocol import EndOfStream, Frame, Message, StreamStart

if TYPE_CHECKING:  # the shell's collaborators; the core imports nothing of av or zmq
    from streamseg.source.spec import SourceSpec
    from streamseg.stage.shell import StatsReporter

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# Pure core
# ---------------------------------------------------------------------------------------------


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

    def __init__(self, fps: float = 30.0) -> None:
        self.period = 1.0 / fps if fps > 0 else 1.0 / 30.0
        self.last: float | None = None
        self.offset: float | None = None

    def new_connection(self, fps: float) -> None:
        if fps > 0:
            self.period = 1.0 / fps
        self.offset = None

    def __call__(self, pts: float | None) -> float:
        """The stream pts (seconds) for a frame whose connection pts is `pts` (None: unknown)."""
        following = 0.0 if self.last is None else self.last + self.period
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


# ---------------------------------------------------------------------------------------------
# Shell: PyAV reader threads and the source's main loop
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    gen: int
    """Which connection (reader) this came from; events of abandoned readers are ignored."""
    kind: str
    """"opened" (data: StreamStart), "frame" (data: (pts or None, uint8[H, W, 3] RGB, wall
    time of decoding)), "lost" (data: why)."""
    data: Any = None


class _Reader:
    """Opens the stream and decodes it in a daemon thread, posting _Events to `events`.

    The main thread never joins it: an abandoned reader stops at its next frame, or when PyAV's
    own timeout (a backstop, longer than the watchdog's) ends its blocking call.
    """

    def __init__(
        self, spec: SourceSpec, gen: int, events: queue.Queue, *, timeout_s: float
    ) -> None:
        self.spec, self.gen, self.events, self.timeout_s = spec, gen, events, timeout_s
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"reader-{spec.stream}-{gen}", daemon=True
        )
        self.thread.start()

    def abandon(self) -> None:
        self.stop.set()

    def _post(self, kind: str, data: Any = None) -> bool:
        """Hand an event to the main thread; False once abandoned."""
        while not self.stop.is_set():
            try:
                self.events.put(_Event(self.gen, kind, data), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import av

        from streamseg.source.decode import decode_frames, open_input, stream_info
        from streamseg.source.spec import SourceError

        try:
            container = open_input(self.spec, timeout_s=self.timeout_s)
        except SourceError as e:
            self._post("lost", str(e))
            return
        try:
            if not self._post("opened", stream_info(container, self.spec, live=True)):
                return
            for pts, image in decode_frames(container):
                if not self._post("frame", (pts, image, time.time())):
                    return
            self._post("lost", "stream ended")
        except av.error.FFmpegError as e:
            self._post("lost", f"read failed: {e.strerror or e}")
        finally:
            container.close()


def send_live(send: Callable[[Message, bool], bool], msg: Message) -> bool:
    """Frames never wait (False: no room, the caller counts a drop); controls always arrive."""
    return send(msg, not isinstance(msg, Frame))


def run_live(
    spec: SourceSpec,
    sock: Any,
    counters: Counters,
    reporter: StatsReporter,
    *,
    realtime: bool = True,
    stall_s: float = 5.0,
    retry_max_s: float = 10.0,
    give_up_s: float | None = None,
    retry_min_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> EndOfStream:
    """Run one live source until it ends (files), gives up, or the process is stopped; returns
    the end-of-stream message, already sent. (`realtime` is implied: live files always play at
    their own rate.)"""
    from streamseg.source.decode import run_file
    from streamseg.source.spec import SourceError
    from streamseg.wire import transport

    def send(msg: Message, block: bool) -> bool:
        return transport.send(sock, msg, block=block)

    if spec.kind == "file":  # a file standing in for a camera: paced, then its end of stream
        return run_file(
            spec, lambda m: send_live(send, m), counters, reporter, realtime=True, clock=clock
        )
    if stall_s <= 0 or retry_max_s <= 0 or (give_up_s is not None and give_up_s <= 0):
        raise SourceError("--stall-s, --retry-max-s and --give-up-s must be > 0")
    watch = LinkWatch(
        stall_s=stall_s,
        retry_min_s=min(retry_min_s, retry_max_s),
        retry_max_s=retry_max_s,
        give_up_s=give_up_s,
    )
    return _run_link(spec, send, counters, reporter, watch, clock=clock)


def _run_link(
    spec: SourceSpec,
    send: Callable[[Message, bool], bool],
    counters: Counters,
    reporter: StatsReporter,
    watch: LinkWatch,
    *,
    clock: Callable[[], float],
    tick_s: float = 0.5,
) -> EndOfStream:
    stream = spec.stream
    stat = counters[stream]
    events: queue.Queue[_Event] = queue.Queue(maxsize=4)
    pts_map = PtsMapper()
    reader: _Reader | None = None
    gen = sent = count = 0  # connections made, frames sent, frames decoded
    # PyAV's timeouts are only a backstop that lets an abandoned reader end by itself; the
    # watchdog (stall_s) acts first.
    av_timeout_s = 2.0 * watch.stall_s + 1.0
    verdict = watch.update(Sample(clock()))
    try:
        while True:
            now = clock()
            if verdict.action == CONNECT:
                gen += 1
                log.info("%s: connecting to %s (attempt %d)", stream, spec.url, watch.attempts)
                reader = _Reader(spec, gen, events, timeout_s=av_timeout_s)
            elif verdict.action == DROP:
                if reader is not None:
                    reader.abandon()
                    reader = None
                log.warning(
                    "%s: lost (%s); retrying in %.1f s", stream, verdict.reason, verdict.wait_s
                )
            elif verdict.action == GIVE_UP:
                error = f"gone: down for {watch.give_up_s:g} s ({watch.last_reason})"
                if reader is not None:
                    reader.abandon()
                stat.extra.update(state="gone", lost=True, error=error)
                eos = EndOfStream(stream, sent, error, lost=True)
                send(eos, True)
                return eos
            stat.extra.update(state=watch.describe(now), reconnects=watch.reconnects)
            reporter.tick()
            try:
                ev: _Event | None = events.get(timeout=max(0.0, min(verdict.wait_s, tick_s)))
            except queue.Empty:
                ev = None
            now = clock()
            if ev is None or reader is None or ev.gen != reader.gen:
                verdict = watch.update(Sample(now))
                continue
            if ev.kind == "opened":
                verdict = watch.update(Sample(now, "opened"))
                if verdict.action != NONE:  # opened too late: the watchdog gave up on it already
                    continue
                info: StreamStart = ev.data
                pts_map.new_connection(info.fps)
                if watch.reconnects:
                    log.info("%s: reconnected (%d)", stream, watch.reconnects)
                send(StreamStart(**{**info.__dict__, "reconnects": watch.reconnects}), True)
            elif ev.kind == "frame":
                verdict = watch.update(Sample(now, "frame"))
                pts, image, wall_time = ev.data
                counters.count_in(stream)
                frame = Frame(stream, count, pts_map(pts), wall_time, image)
                count += 1
                if send(frame, False):
                    counters.count_out(stream)
                    sent += 1
                else:
                    counters.drop(stream, "queue_full")
            else:
                verdict = watch.update(Sample(now, "lost", str(ev.data)))
    finally:
        if reader is not None:
            reader.abandon()
