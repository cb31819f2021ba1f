"""Where results go: every output of the postprocess stage is a sink behind one interface.

The frame loop (`postprocess.main`) builds each frame's outputs once and calls the stage's
sinks (`Outputs`, in order) in one place per event:

    open(info: StreamStart)   a stream started in this life of the stage
    write(frame: FrameOut)    one frame: its results record (built once), the same instances
                              as arrays, and its annotated image, drawn only when a sink asks
                              (`frame.annotated()`; None when inference sent no pixels)
    end(stream: str)          the stream ended: finish its output
    tick(now: float)          every loop turn (at least 4 a second), also while idle
    close()                   the stage stops: finish everything (safe to call twice)
    counts() -> SinkCounts    delivered, dropped {reason: n}, pending: the stage reports
                              them per sink name (Stats.extra["sinks"]) for the run report

A sink's `name` is its key in those counts. Frames of a stream come in order; a frame of a
stream whose start this life never saw (a restarted stage adopting it) comes with a stand-in
`info`. A sink on the frame path (the files) may raise an OutputError: the stage stops with
that one line. A sink whose delivery may be slow or fail (a broker, the network) subclasses
`threaded.Threaded`: its thread delivers from a bounded queue, dropping and counting the
oldest beyond `max_pending`, so it never stalls the loop or another sink.

Sinks here: `results.ResultsFiles` (.jsonl), `video.VideoFiles` (annotated H.264),
`publish.Publish` (ZeroMQ PUB), `preview.Preview` (the live view). A new output is one new
module with a class like these, and a line where the stage lists its sinks
(`postprocess.main.build_outputs`).
"""

from streamseg.postprocess.sinks.base import FrameOut, Outputs, Rendered, Sink, SinkCounts
from streamseg.postprocess.sinks.files import OutputError, ResultsSink, VideoSink

__all__ = [
    "FrameOut",
    "OutputError",
    "Outputs",
    "Rendered",
    "ResultsSink",
    "Sink",
    "SinkCounts",
    "VideoSink",
]
