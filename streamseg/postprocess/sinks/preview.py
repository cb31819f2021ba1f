"""The live-view sink: annotated JPEGs of the streams someone watches (`streamseg --serve`)."""

from __future__ import annotations

from streamseg.postprocess.preview import Previewer
from streamseg.postprocess.sinks.base import FrameOut, SinkCounts
from streamseg.wire.messages import StreamStart


class Preview:
    """Offers each watched stream's annotated frames to `previewer` (its XPUB socket); frames
    of streams nobody watches are neither drawn nor counted."""

    name = "preview"

    def __init__(self, previewer: Previewer) -> None:
        self.previewer = previewer

    def open(self, info: StreamStart) -> None:
        """Nothing: a stream is previewed once someone subscribes to it."""

    def write(self, frame: FrameOut) -> None:
        if frame.annotated is None or not self.previewer.wanted(frame.stream):
            return
        r = frame.result
        self.previewer.offer(r.stream, r.frame, r.wall_time, frame.annotated())

    def end(self, stream: str) -> None:
        """Nothing: the viewer sees no more frames."""

    def tick(self, now: float) -> None:
        self.previewer.poll()  # who subscribed or left since the last turn

    def close(self) -> None:
        self.previewer.sock.close()

    def counts(self) -> SinkCounts:
        p = self.previewer
        return SinkCounts(delivered=p.sent, dropped={"slow_reader": p.dropped} if p.dropped else {})
