"""The video sink: each stream's annotated frames as an H.264 video file."""

from __future__ import annotations

from fractions import Fraction

from streamseg.outputs import output_path
from streamseg.postprocess.sinks.base import FrameOut, SinkCounts, each
from streamseg.postprocess.sinks.files import VideoSink
from streamseg.postprocess.timeline import LiveTimeline
from streamseg.wire.messages import StreamStart


class VideoFiles:
    """One annotated video per stream (`sinks.files.VideoSink`), named by
    `output_path(template, stream, n_streams)`.

    The video keeps the source's timestamps (1/90000 s, as MPEG-TS; variable frame rates stay
    variable; a live stream at true speed, `timeline.LiveTimeline`) and is fragmented about
    every second, so a killed stage leaves a playable file. Created on the stream's first
    frame (as `results.ResultsFiles`). encoder_threads: libx264's (0: its default).
    """

    name = "video"

    def __init__(self, template: str, *, n_streams: int, encoder_threads: int = 0) -> None:
        self.template = template
        self.n_streams = n_streams
        self.encoder_threads = encoder_threads
        self._videos: dict[str, tuple[VideoSink, LiveTimeline | None]] = {}
        self._started: dict[str, StreamStart] = {}
        self._closed_frames = 0

    def open(self, info: StreamStart) -> None:
        self._started[info.stream] = info

    def write(self, frame: FrameOut) -> None:
        if frame.annotated is None:
            raise RuntimeError("video output needs frames forwarded by inference")
        video, timeline = self._videos.get(frame.stream) or self._video(frame.info)
        r = frame.result
        video.write(
            frame.annotated(), pts=r.pts if timeline is None else timeline(r.pts, r.wall_time)
        )

    def end(self, stream: str) -> None:
        entry = self._videos.pop(stream, None)
        info = self._started.pop(stream, None)
        if entry is None and info is not None:  # no frame: the stream's (empty) video
            entry = self._video(info)
            del self._videos[stream]
        if entry is not None:
            entry[0].close()
            self._closed_frames += entry[0].frames

    def tick(self, now: float) -> None:
        """Nothing: fragments are cut as frames come."""

    def close(self) -> None:
        videos, self._videos = [v for v, _ in self._videos.values()], {}
        try:
            each(videos, lambda video: video.close())
        finally:
            self._closed_frames += sum(video.frames for video in videos)

    def counts(self) -> SinkCounts:
        frames = self._closed_frames + sum(v.frames for v, _ in self._videos.values())
        return SinkCounts(delivered=frames)

    def _video(self, info: StreamStart) -> tuple[VideoSink, LiveTimeline | None]:
        video = VideoSink(
            output_path(self.template, info.stream, self.n_streams),
            info.width,
            info.height,
            info.fps,
            time_base=Fraction(1, 90000),
            fragment_s=1.0,
            threads=self.encoder_threads,
        )
        entry = self._videos[info.stream] = (video, LiveTimeline() if info.live else None)
        return entry
