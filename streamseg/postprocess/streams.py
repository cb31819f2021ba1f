"""The postprocess stage's per-stream bookkeeping: pure (no sinks, no sockets, no clock).

Messages go in, decisions come out: whether a stream is new (open its sinks), whether a frame is
taken or dropped (and why), each published result's sequence number, and whether a finished stream
lost frames. The stage shell (`streamseg.postprocess.main`) acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamseg.accounting import Counters, LatencyWindow
from streamseg.wire.messages import Detections, EndOfStream, StreamStart


@dataclass
class StreamState:
    info: StreamStart
    last_frame: int = -1
    """The newest frame number taken so far."""
    published: int = 0
    """The next published result's sequence number."""
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    """Capture to result, seconds."""
    ended: EndOfStream | None = None


class StreamBook:
    """Every stream the stage has seen, counted in `counters` (one record per stream)."""

    def __init__(self, counters: Counters, *, streams: int, adopt: bool = False) -> None:
        """streams: how many end-of-streams end the run (0: never, a live run).
        adopt: take frames of streams whose start this stage never saw (a restarted stage: the
        streams started before its life; every message comes from the stage's own inference)."""
        self.counters = counters
        self.streams = streams
        self.adopt = adopt
        self.states: dict[str, StreamState] = {}
        self.ended: set[str] = set()
        """Streams that ended (a source that never opened ends without having started)."""
        self.lost_any = False

    def start(self, msg: StreamStart) -> bool:
        """A stream (re)started; True when it is new, so its sinks must be opened."""
        state = self.states.get(msg.stream)
        new = state is None
        if new:
            self.states[msg.stream] = StreamState(msg)
        self.counters[msg.stream].extra.update(reconnects=msg.reconnects, expected=msg.frames)
        return new

    def take(self, det: Detections) -> StreamState | None:
        """The frame's stream when the frame is to be processed; None (a counted drop) when its
        stream never started or already ended."""
        self.counters.count_in(det.stream)
        state = self.states.get(det.stream)
        if state is None and self.adopt and det.stream not in self.ended:
            info = StreamStart(det.stream, det.width, det.height, 30.0, live=True)
            state = self.states[det.stream] = StreamState(info)
        if state is None:
            self.counters.drop(det.stream, "unknown_stream")
            return None
        if state.ended is not None:
            self.counters.drop(det.stream, "after_end")
            return None
        state.last_frame = max(state.last_frame, det.frame)
        return state

    def done(self, state: StreamState, latency_s: float) -> None:
        """A taken frame's results were written and published."""
        state.latency.add(latency_s)
        state.published += 1
        self.counters.count_out(state.info.stream)

    def end(self, msg: EndOfStream) -> StreamState | None:
        """The stream ended: record whether frames were lost; its state, to close its sinks."""
        state = self.states.get(msg.stream)
        count = self.counters[msg.stream]
        live = state is not None and state.info.live  # live streams drop frames by design
        lost = msg.lost or (count.frames_out != msg.frames and not live)
        self.lost_any |= lost
        count.extra.update(sent=msg.frames, error=msg.error, lost=lost, ended=True)
        self.ended.add(msg.stream)
        if state is not None:
            state.ended = msg
        return state

    def finished(self) -> bool:
        """Every expected stream has ended (never, in a live run)."""
        return self.streams > 0 and len(self.ended) >= self.streams

    def report_latency(self) -> None:
        """Copy each stream's latency percentiles into its counters (milliseconds)."""
        for name, state in self.states.items():
            p50, p99 = state.latency.percentiles(50, 99)
            self.counters[name].extra.update(latency_p50_ms=p50, latency_p99_ms=p99)
