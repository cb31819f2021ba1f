"""The file writers under the file sinks: annotated video files and results (.jsonl) files.

Both survive the process being killed at any moment: a fragmented MP4 plays up to its last
complete fragment, and a results file only ever holds whole lines. A full disk is one OSError
that names the file (`OutputError`), not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamseg.outputs import video_format_problem

log = logging.getLogger(__name__)

__all__ = ["OutputError", "ResultsSink", "VideoSink"]

FRAGMENTED_MOVFLAGS = "frag_keyframe+empty_moov+delay_moov+default_base_moof"
"""A fragment (moof + mdat) per keyframe; delay_moov writes the header with the first fragment so
that it holds the real start time (an edit list), not zero."""
_MOV_FAMILY = (".mp4", ".m4v", ".mov")


class OutputError(OSError):
    """An output file could not be written; str() is one line naming the file and the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


def output_error(path: Path, e: OSError) -> OutputError:
    """The one-line error for a failed write of `path`: a full disk says so."""
    if e.errno == errno.ENOSPC:
        return OutputError(
            errno.ENOSPC, f"{path}: disk full; free some space or write elsewhere", str(path)
        )
    return OutputError(e.errno, f"{path}: cannot write ({e.strerror or e})", str(path))


class VideoSink:
    """H.264 writer (libx264), one output frame per input frame, at the source's size.

    Timestamps: by default frames are numbered at the constant `fps`; with `time_base` (e.g.
    Fraction(1, 90000)) `write(image, pts)` keeps each frame's own time to that resolution,
    counted from the first frame, so a variable-frame-rate source keeps its timing (B-frames
    are then off, so each frame lasts exactly until the next; the last as long as the one
    before it).
    `fragment_s`: an .mp4/.mov is written fragmented with a keyframe (and fragment) about every
    `fragment_s` seconds, so a file cut off at any moment (kill -9, power loss, full disk) plays
    up to its last complete fragment. None: a plain MP4, playable only once closed.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        *,
        crf: int = 20,
        preset: str | None = "veryfast",
        time_base: Fraction | None = None,
        fragment_s: float | None = None,
        threads: int = 0,
    ) -> None:
        """preset: libx264's speed/size trade-off (None: libx264's default, "medium").
        threads: libx264's threads (0: its default, about 1.5 x all cores; streamseg.threads)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        self.fps = fps
        rate = Fraction(fps).limit_denominator(1001)
        self.vfr = time_base is not None
        self.time_base = time_base if time_base is not None else Fraction(1) / rate
        self.fragmented = fragment_s is not None and self.path.suffix.lower() in _MOV_FAMILY
        # flush_packets: each fragment reaches the file whole, the moment it is cut
        options = {"movflags": FRAGMENTED_MOVFLAGS, "flush_packets": "1"} if self.fragmented else {}
        try:
            self.container = av.open(str(self.path), mode="w", options=options)
        except OSError as e:
            raise output_error(self.path, e) from None
        except ValueError:  # FFmpeg knows no container for this name
            why = video_format_problem(self.path) or f"{self.path}: no container for this name"
            raise OutputError(errno.EINVAL, why, str(self.path)) from None
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        # yuv420p (what every player takes) needs even sizes; 4:4:4 keeps odd ones exact.
        even = width % 2 == 0 and height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
        codec_options = {"crf": str(crf), **({"preset": preset} if preset else {})}
        if fragment_s is not None:
            codec_options["g"] = str(max(1, round(fps * fragment_s)))
        if self.vfr:
            codec_options["bf"] = "0"
        if threads > 0:
            codec_options["threads"] = str(threads)
        self.stream.options = codec_options
        self.stream.codec_context.time_base = self.time_base
        if self.vfr:
            self.stream.time_base = self.time_base
        self.frames = 0
        self._origin: float | None = None
        """The first frame's pts, seconds: the file's time 0."""
        self._held: tuple[av.VideoFrame, int] | None = None
        """The newest frame: encoded once the next one says how long it lasts."""
        self._last_step = max(1, round(1 / (fps * self.time_base)))
        self._durations: dict[int, int] = {}
        self._failed = False
        self._closed = False
        self._whole = 0
        """Bytes of the file that end on a whole fragment (fragmented only)."""

    def write(self, image: np.ndarray, pts: float | None = None) -> None:
        """image: uint8[H, W, 3] RGB of the stream's size; pts: its presentation time, seconds
        (used with `time_base`; None: one frame after the previous one)."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        tick = self._tick(pts)
        if self._held is not None:
            held, held_tick = self._held
            # not held any more before it is encoded: a stop (SIGTERM) that lands inside the
            # encoder must not leave it to be encoded twice by close() (FFmpeg refuses that)
            self._held = None
            self._last_step = tick - held_tick
            self._encode(held, held_tick, self._last_step)
        self._held = (frame, tick)
        self.frames += 1

    def _tick(self, pts: float | None) -> int:
        """The frame's time in time_base units, strictly after the previous frame's. With
        `time_base` the first frame is at 0, as ffmpeg does: a live stream or a restarted
        stage that starts at 3600 s still gives a file that plays from its first frame."""
        if self._held is None:
            self._origin = pts if self.vfr else None
            return 0
        previous = self._held[1]
        if not self.vfr or pts is None:
            return previous + (self._last_step if self.vfr else 1)
        if self._origin is None:  # the first frame had no time: this one follows it
            self._origin = pts - (previous + self._last_step) * float(self.time_base)
        return max(round((pts - self._origin) / self.time_base), previous + 1)

    def _encode(self, frame: av.VideoFrame | None, tick: int = 0, duration: int = 0) -> None:
        if frame is not None:
            frame.pts = tick
            self._durations[tick] = duration
        try:
            for packet in self.stream.encode(frame):
                packet.duration = self._durations.pop(packet.pts, packet.duration)
                self.container.mux(packet)
                if self.fragmented:  # everything muxed is flushed: the file ends whole here
                    self._whole = os.path.getsize(self.path)
        except OSError as e:
            self._failed = True
            raise output_error(self.path, e) from None

    def close(self) -> None:
        """Encode the frames still held, write the trailer, close the file: always, even when
        interrupted half way (what was muxed stays playable). After a failed write, only
        releases the file, cut back to its last whole fragment. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed:
                if self._held is not None:
                    held, tick = self._held
                    self._held = None
                    self._encode(held, tick, self._last_step)
                self._encode(None)
        except av.error.FFmpegError as e:  # a packet cut off by a stop: the file ends before it
            log.warning("%s: last frames not written (%s)", self.path, e)
        finally:
            error = None
            try:
                self.container.close()
            except OSError as e:
                if not self._failed:
                    self._failed = True
                    error = output_error(self.path, e)
            if self._failed and self.fragmented:
                with contextlib.suppress(OSError):  # drop a fragment the failure cut short
                    os.truncate(self.path, self._whole)
            if error is not None:
                raise error


class ResultsSink:
    """One JSON object per line, one line per frame (docs/results-format.md).

    Whole lines only: lines are buffered and written with one os.write about every `flush_s`
    seconds, on `tick()` and on close, so a killed process leaves every line before its last
    second complete. A failed write (full disk) cuts the file back to its last whole line and
    raises an OutputError naming the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise output_error(self.path, e) from None
        self.flush_s = flush_s
        self.clock = clock
        self.lines = 0
        self.size = 0
        """Bytes in the file: whole lines only."""
        self._pending: list[bytes] = []
        self._last_flush = clock() - flush_s  # the first line goes out at once
        self._failed = False

    @property
    def pending(self) -> int:
        """Lines written here and not yet to the file."""
        return len(self._pending)

    def write(self, record: dict[str, Any]) -> None:
        """Add one frame's line; written out at once if the last write is `flush_s` old."""
        if self._failed:
            raise OutputError(errno.EIO, f"{self.path}: an earlier write failed", str(self.path))
        self._pending.append((json.dumps(record, separators=(",", ":")) + "\n").encode())
        self.lines += 1
        self.tick()

    def tick(self) -> None:
        """Write the buffered lines if the last write is `flush_s` old (call it when idle)."""
        if self._pending and self.clock() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line now."""
        if not self._pending or self.fd is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._last_flush = self.clock()
        done = 0
        try:
            while done < len(data):  # a short write (almost full disk) goes on where it stopped
                done += os.write(self.fd, data[done:])
        except OSError as e:
            self._failed = True
            whole = data.rfind(b"\n", 0, done) + 1  # keep the lines that made it whole
            os.ftruncate(self.fd, self.size + whole)
            self.size += whole
            raise output_error(self.path, e) from None
        self.size += done

    def close(self) -> None:
        """Write what is buffered and close; after a failed write, only close."""
        if self.fd is None:
            return
        try:
            if not self._failed:
                self.flush()
        finally:
            os.close(self.fd)
            self.fd = None
