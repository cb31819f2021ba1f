"""Where results go: annotated video files and results (.jsonl) files.

Publishing to subscribers is `transport.publish`; the message format is in `protocol`.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np


def output_path(template: str, stream: str, n_streams: int) -> Path:
    """The file for `stream`: `template` with {stream} filled in; several streams and no
    placeholder -> NAME.STREAM.EXT, so no two streams ever write the same file."""
    if "{stream}" in template:
        return Path(template.replace("{stream}", stream))
    if n_streams > 1:
        p = Path(template)
        return p.with_name(f"{p.stem}.{stream}{p.suffix}")
    return Path(template)


class VideoSink:
    """H.264 MP4 writer (libx264) at the source's frame rate and size, one frame per input frame."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        *,
        crf: int = 20,
        preset: str | None = "veryfast",
    ) -> None:
        """preset: libx264's speed/size trade-off (None: libx264's default, "medium")."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        self.container = av.open(str(self.path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        # yuv420p (what every player takes) needs even sizes; 4:4:4 keeps odd ones exact.
        even = width % 2 == 0 and height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
        self.stream.options = {"crf": str(crf), **({"preset": preset} if preset else {})}
        self.stream.codec_context.time_base = Fraction(1) / rate
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        """image: uint8[H, W, 3] RGB of the stream's size."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()


class ResultsSink:
    """One JSON object per line, one line per frame (docs/results-format.md)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1
        if self.lines % 30 == 0:
            self.file.flush()  # readers tailing a live results file see progress

    def close(self) -> None:
        self.file.close()
