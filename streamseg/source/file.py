"""File sources: decode a whole video file and send every frame, then its end-of-stream.

Packets the decoder rejects (a damaged spot in the file) are skipped and counted
(`corrupt_packets` in the source's stats); the frames around them still go out.
A file is sent losslessly (a full inference queue blocks the decoder) unless it stands in for a
camera (`realtime`), when it is paced at its own frame rate and `send` may refuse frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import av

from streamseg.accounting import Counters
from streamseg.source.decode import DecodeErrors, decode_frames, open_input, stream_info
from streamseg.source.spec import SourceSpec
from streamseg.stage.shell import BusyTimer, StatsReporter
from streamseg.wire.messages import EndOfStream, Frame


def run_file(
    spec: SourceSpec,
    send: Callable[[Any], bool],
    counters: Counters,
    reporter: StatsReporter,
    *,
    realtime: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> EndOfStream:
    """Decode a whole file and send it; returns the end-of-stream message (already sent).

    `realtime` paces frames at the file's own rate (a file standing in for a camera)."""
    container = open_input(spec)
    info = stream_info(container, spec, live=realtime)
    reporter.extra["frames_expected"] = info.frames
    send(info)
    count, error = 0, ""
    errors = DecodeErrors()
    t0 = clock()
    try:
        frames = decode_frames(container, errors)
        while True:
            with BusyTimer(reporter):
                try:
                    item = next(frames)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    error = f"decoding stopped after {count} frames: {e.strerror or e}"
                    if errors.consecutive:
                        error += f" ({errors.consecutive} corrupt packets in a row)"
                    break
                finally:
                    reporter.extra["corrupt_packets"] = errors.corrupt_packets
            pts, image = item
            if pts is None:
                pts = count / info.fps
            if realtime:
                delay = t0 + pts - clock()
                if delay > 0:
                    sleep(delay)
            counters.count_in(spec.stream)
            with BusyTimer(reporter, what="wait_out"):  # blocks while inference is behind
                sent = send(Frame(spec.stream, count, float(pts), time.time(), image))
            if sent:
                counters.count_out(spec.stream)
            else:
                counters.drop(spec.stream, "queue_full")
            count += 1
            reporter.tick()
    finally:
        container.close()
    lost = bool(error)
    if info.frames and count < info.frames:
        lost = True
        error = error or f"decoded {count} of {info.frames} frames (truncated or damaged file?)"
    if errors.corrupt_packets:
        lost = lost or not info.frames  # no frame count to compare with: assume frames were lost
        error = (
            f"{error}; " if error else ""
        ) + f"skipped {errors.corrupt_packets} corrupt packets"
    eos = EndOfStream(spec.stream, count, error, lost)
    send(eos)
    return eos
