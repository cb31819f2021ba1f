"""Where results go (moving to one sink interface: see issue 26)."""

from streamseg.postprocess.sinks.files import OutputError, ResultsSink, VideoSink, output_path

__all__ = ["OutputError", "ResultsSink", "VideoSink", "output_path"]
