"""Live sources: RTSP streams and cameras that reconnect when the stream stops or stalls.

A reader thread per connection decodes with PyAV and hands frames to the source's main thread,
which feeds the pure core (`streamseg.source.link`: LinkWatch, PtsMapper) and acts on its
verdicts: start a reader, abandon a stalled one, wait, give up. The main thread never blocks on
the network or on inference, so a reader stuck inside FFmpeg (PyAV's own timeouts can hang or
misfire) cannot stall the stream: the watchdog abandons it and reconnects.

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
from typing import Any

import av

from streamseg.accounting import Counters
from streamseg.source.decode import decode_frames, open_input, stream_info
from streamseg.source.link import CONNECT, DROP, GIVE_UP, NONE, LinkWatch, PtsMapper, Sample
from streamseg.source.spec import SourceError, SourceSpec
from streamseg.stage.shell import StatsReporter
from streamseg.wire.messages import EndOfStream, Frame, Message, StreamStart

log = logging.getLogger(__name__)


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
    send: Callable[[Message, bool], bool],
    counters: Counters,
    reporter: StatsReporter,
    *,
    stall_s: float = 5.0,
    retry_max_s: float = 10.0,
    give_up_s: float | None = None,
    retry_min_s: float = 0.5,
    first_frame: int = 0,
    first_pts: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> EndOfStream:
    """Run one RTSP stream or camera until it gives up or the process is stopped; returns the
    end-of-stream message, already sent. `send(msg, block)` hands a message to inference;
    frame numbers start at `first_frame` and pts at `first_pts` (a restarted source goes on
    past its last life's)."""
    if stall_s <= 0 or retry_max_s <= 0 or (give_up_s is not None and give_up_s <= 0):
        raise SourceError("--stall-s, --retry-max-s and --give-up-s must be > 0")
    watch = LinkWatch(
        stall_s=stall_s,
        retry_min_s=min(retry_min_s, retry_max_s),
        retry_max_s=retry_max_s,
        give_up_s=give_up_s,
    )
    return _run_link(
        spec,
        send,
        counters,
        reporter,
        watch,
        first_frame=first_frame,
        first_pts=first_pts,
        clock=clock,
    )


def _run_link(
    spec: SourceSpec,
    send: Callable[[Message, bool], bool],
    counters: Counters,
    reporter: StatsReporter,
    watch: LinkWatch,
    *,
    first_frame: int,
    first_pts: float,
    clock: Callable[[], float],
    tick_s: float = 0.5,
) -> EndOfStream:
    stream = spec.stream
    stat = counters[stream]
    events: queue.Queue[_Event] = queue.Queue(maxsize=4)
    pts_map = PtsMapper(start=first_pts)
    reader: _Reader | None = None
    gen = sent = 0  # connections made, frames sent
    count = first_frame  # the next frame's number
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
