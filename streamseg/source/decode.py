"""PyAV at the edge: open a file, RTSP stream or camera, describe it, decode it to RGB arrays.

The only module of the source stage that talks to FFmpeg; `file` and `live` drive it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from streamseg.source.link import backoff_s
from streamseg.source.spec import SourceError, SourceSpec, shown
from streamseg.wire.messages import StreamStart

log = logging.getLogger(__name__)

# FFmpeg decode threads for this process (0: FFmpeg's choice); set once by the source stage
# from the run's thread budget (streamseg.threads).
_threads = 0


def set_threads(n: int) -> None:
    """Decode with `n` threads from now on in this process (0: FFmpeg's choice)."""
    global _threads
    if n < 0:
        raise ValueError(f"decode threads must be >= 0, got {n}")
    _threads = n


def _hwaccel(mode: str) -> Any:
    """PyAV hardware-decode settings for `mode`, or None for software decoding."""
    if mode == "off":
        return None
    try:  # PyAV >= 14; pyproject allows av >= 12
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError:
        if mode == "auto":
            return None
        raise SourceError(
            f'hwdecode = "{mode}" needs PyAV >= 14 (this is {av.__version__}); '
            'upgrade av or set hwdecode = "auto"'
        ) from None
    if mode == "auto" and not (
        "cuda" in hwdevices_available() and os.path.exists("/dev/nvidiactl")
    ):
        return None
    # allow_software_fallback: streams NVDEC cannot decode (profile, size) decode on the CPU
    return HWAccel(device_type="cuda", allow_software_fallback=True)


_PERMANENT = (
    av.error.FileNotFoundError,  # no such file or device
    av.error.PermissionError,
    av.error.IsADirectoryError,
    av.error.NotADirectoryError,
    av.error.HTTPClientError,  # RTSP 400, 401, 403, 404, ... (FFmpeg maps RTSP codes to these)
    av.error.InvalidDataError,  # not a video (or not an RTSP server)
    av.error.ProtocolNotFoundError,
    av.error.DemuxerNotFoundError,
    av.error.DecoderNotFoundError,
)
"""FFmpeg errors that trying again cannot mend. Everything else (a refused connection, a
timeout, a reset, a 5xx, a busy device) may pass."""


def is_permanent(error: av.error.FFmpegError) -> bool:
    """Whether opening again can never succeed where this error came from."""
    return isinstance(error, _PERMANENT) and not isinstance(
        error, av.error.HTTPTooManyRequestsError
    )


def open_input(spec: SourceSpec, *, timeout_s: float = 10.0) -> Any:
    """Open a PyAV input container, turning every failure into a one-line SourceError
    (`permanent` where trying again cannot help)."""
    if spec.kind == "file" and not os.path.exists(spec.url):
        raise SourceError(f"no such file: {spec.url}", permanent=True)
    if spec.kind == "camera" and not os.path.exists(spec.url):
        raise SourceError(f"{spec.url}: no such camera device", permanent=True)
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
        raise SourceError(
            f"{shown(spec.url)}: {what} ({e.strerror or e})", permanent=is_permanent(e)
        ) from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{shown(spec.url)}: has no video stream", permanent=True)
    return container


def probe(spec: SourceSpec, *, timeout_s: float = 5.0) -> SourceError | None:
    """Open `spec` once now and close it (nothing decoded): None when it opened, else why not
    (its `permanent` says whether trying again can help)."""
    try:
        open_input(spec, timeout_s=timeout_s).close()
    except SourceError as e:
        return e
    return None


def startup_problem(spec: SourceSpec, *, timeout_s: float = 5.0) -> str | None:
    """Why `spec` can never work, found by opening it once now (one line naming the source);
    None when it opened, or failed in a way that may pass (the source stage then retries)."""
    error = probe(spec, timeout_s=timeout_s)
    if error is not None and error.permanent:
        return str(error)
    if error is not None:
        log.debug("%s: %s (may pass: the source will retry)", spec.stream, error)
    return None


def first_contact(
    spec: SourceSpec,
    *,
    give_up_s: float,
    retry_max_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Try to open `spec` until it opens (None) or `give_up_s` passed (why it stayed down, as
    the source stage says it: "gone: down for 5 s (...)"), with the stage's backoff. For a run
    whose every source is down at start-up: nothing else would run meanwhile."""
    deadline = clock() + give_up_s
    attempt = 0
    while True:
        left = deadline - clock()
        error = probe(spec, timeout_s=max(0.1, min(5.0, left)))
        if error is None:
            return None
        attempt += 1
        wait = backoff_s(attempt, retry_min_s=0.5, retry_max_s=retry_max_s)
        left = deadline - clock()
        if left <= 0:
            return f"gone: down for {give_up_s:g} s ({error})"
        sleep(min(wait, left))


def stream_info(
    container: Any, spec: SourceSpec, *, live: bool, reconnects: int = 0
) -> StreamStart:
    vs = container.streams.video[0]
    rate = vs.average_rate or vs.guessed_rate or vs.base_rate
    fps = float(rate) if rate else 30.0
    if not 0.001 <= fps <= 1000.0:  # a container's nonsense rate: timestamps still hold
        fps = 30.0
    frames = int(vs.frames) if vs.frames and spec.kind == "file" else None
    ctx = vs.codec_context
    if not (0 < ctx.width <= 16384 and 0 < ctx.height <= 16384):
        raise SourceError(f"{spec.url}: video of {ctx.width}x{ctx.height} pixels cannot be used")
    return StreamStart(spec.stream, ctx.width, ctx.height, fps, frames, spec.url, live, reconnects)


@dataclass
class DecodeErrors:
    """Packets the decoder rejected (corrupt data), skipped so decoding goes on."""

    corrupt_packets: int = 0
    consecutive: int = 0
    """Rejected in a row; decoding gives up past `decode_frames`'s max_consecutive_errors."""
    last: str = ""
    """FFmpeg's message for the last rejected packet."""


def decode_frames(
    container: Any,
    errors: DecodeErrors | None = None,
    *,
    max_consecutive_errors: int = 100,
) -> Iterator[tuple[float | None, np.ndarray]]:
    """(pts seconds or None, uint8[H, W, 3] RGB) for each decoded frame, in decode order.

    A packet the decoder rejects (corrupt data) is counted in `errors` and skipped: the decoder
    picks up again at the next packet it can use (at the latest the next keyframe). More than
    `max_consecutive_errors` in a row re-raises the last error: that is no longer a damaged
    spot but an undecodable stream. Reading errors (demuxing, network) always raise.
    """
    errors = errors if errors is not None else DecodeErrors()
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    if _threads:
        vs.codec_context.thread_count = _threads
    for packet in container.demux(vs):  # ends with an empty packet that flushes the decoder
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            errors.corrupt_packets += 1
            errors.consecutive += 1
            errors.last = str(e.strerror or e)
            if errors.consecutive > max_consecutive_errors:
                raise
            log.debug("skipped a corrupt packet at %s: %s", packet.pts, errors.last)
            continue
        errors.consecutive = 0
        for frame in frames:
            yield frame.time, frame.to_ndarray(format="rgb24")
