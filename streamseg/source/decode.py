"""Source stage: decode a video file, RTSP stream or camera with PyAV and send its frames.

One process per stream. Each frame goes out stamped (stream, frame, pts, wall_time). A file is
sent losslessly (a full inference queue blocks the decoder), then an end-of-stream with the count
of frames sent. Live sources (streamseg.source.live) never block and reconnect when the stream
stops.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np

from streamseg.accounting import Counters
from streamseg.source.spec import SourceError, SourceSpec
from streamseg.stage.shell import BusyTimer, StatsReporter, setup_process
from streamseg.wire import transport
from streamseg.wire.protocol import EndOfStream, Frame, StreamStart

log = logging.getLogger(__name__)


def _hwaccel(mode: str) -> Any:
    """PyAV hardware-decode settings for `mode`, or None for software decoding."""
    if mode == "off":
        return None
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if mode == "auto" and not (
        "cuda" in hwdevices_available() and os.path.exists("/dev/nvidiactl")
    ):
        return None
    # allow_software_fallback: streams NVDEC cannot decode (profile, size) decode on the CPU
    return HWAccel(device_type="cuda", allow_software_fallback=True)


def open_input(spec: SourceSpec, *, timeout_s: float = 10.0) -> Any:
    """Open a PyAV input container, turning every failure into a one-line SourceError."""
    if spec.kind == "file" and not os.path.exists(spec.url):
        raise SourceError(f"no such file: {spec.url}")
    kwargs: dict[str, Any] = {}
    if spec.kind == "rtsp":
        # fpsprobesize 0: the first frame ~0.3 s after open instead of ~1 s (fps from the SDP)
        options = {"rtsp_transport": "tcp", "fpsprobesize": "0"}
        kwargs = {"options": options, "timeout": (timeout_s, timeout_s)}
    elif spec.kind == "camera":
        kwargs = {"format": "v4l2"}
    hwaccel = _hwaccel(spec.hwdecode)
    try:
        if hwaccel is not None:
            try:
                container = av.open(spec.url, hwaccel=hwaccel, **kwargs)
            except av.error.FFmpegError as e:
                log.warning("%s: no hardware decoding (%s); decoding on the CPU", spec.url, e)
                container = av.open(spec.url, **kwargs)
        else:
            container = av.open(spec.url, **kwargs)
    except av.error.FFmpegError as e:
        what = "not a video file PyAV can read" if spec.kind == "file" else "cannot open"
        raise SourceError(f"{spec.url}: {what} ({e.strerror or e})") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{spec.url}: has no video stream")
    return container


def stream_info(
    container: Any, spec: SourceSpec, *, live: bool, reconnects: int = 0
) -> StreamStart:
    vs = container.streams.video[0]
    rate = vs.average_rate or vs.guessed_rate or vs.base_rate
    fps = float(rate) if rate else 30.0
    frames = int(vs.frames) if vs.frames and spec.kind == "file" else None
    ctx = vs.codec_context
    return StreamStart(spec.stream, ctx.width, ctx.height, fps, frames, spec.url, live, reconnects)


def decode_frames(container: Any) -> Iterator[tuple[float | None, np.ndarray]]:
    """(pts seconds or None, uint8[H, W, 3] RGB) for each decoded frame, in decode order."""
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    for frame in container.decode(vs):
        yield frame.time, frame.to_ndarray(format="rgb24")


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
    t0 = clock()
    try:
        frames = decode_frames(container)
        while True:
            with BusyTimer(reporter):
                try:
                    item = next(frames)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    error = f"decoding stopped after {count} frames: {e.strerror or e}"
                    break
            pts, image = item
            if pts is None:
                pts = count / info.fps
            if realtime:
                delay = t0 + pts - clock()
                if delay > 0:
                    sleep(delay)
            counters.count_in(spec.stream)
            if send(Frame(spec.stream, count, float(pts), time.time(), image)):
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
        error = error or f"decoded {count} of {info.frames} frames (truncated file?)"
    eos = EndOfStream(spec.stream, count, error, lost)
    send(eos)
    return eos


def main(
    *,
    source: str,
    stream: str,
    kind: str,
    frames_endpoint: str,
    stats_endpoint: str | None = None,
    live: bool = False,
    realtime: bool = False,
    hwdecode: str = "off",
    verbose: bool = False,
    **live_options: Any,
) -> int:
    """Source process: 0 when every frame was sent, 3 when frames were lost, 2 when unreadable."""
    setup_process(f"source[{stream}]", verbose=verbose)
    spec = SourceSpec(stream, source, kind, hwdecode)
    counters = Counters()
    counters[stream]  # report the stream even if it never yields a frame
    reporter = StatsReporter(stats_endpoint, "source", counters)
    # Short queues: enough to keep the model fed, few enough that a frame waits little
    sock = transport.push(frames_endpoint, hwm=2)
    code = 0
    try:
        if kind == "file" and not live:
            eos = run_file(
                spec, lambda m: transport.send(sock, m), counters, reporter, realtime=realtime
            )
        else:
            from streamseg.source.live import run_live

            eos = run_live(spec, sock, counters, reporter, realtime=realtime, **live_options)
        if eos.error:
            log.warning("%s: %s", stream, eos.error)
        code = 3 if eos.lost else 0
    except SourceError as e:
        log.error("%s", e)
        transport.send(sock, EndOfStream(stream, 0, str(e), True))
        reporter.extra["error"] = str(e)
        code = 2
    except KeyboardInterrupt:
        code = 130
    finally:
        reporter.final()
        transport.close_all(abort=code == 130)
    return code
