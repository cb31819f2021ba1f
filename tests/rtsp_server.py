#!/usr/bin/python3
"""Loopback RTSP server for integration tests (GStreamer RTSP server via GObject introspection).

Runs under the system python (``/usr/bin/python3``), which can import ``gi``; see
``.ci/apt-packages.txt`` for the Debian packages it needs.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam1 --source clip.mp4 [--loop]
    /usr/bin/python3 tests/rtsp_server.py --port 8554 --pattern [--fps 30 --size 320x240]

``--source``: an H.264 MP4 is demuxed once into memory and its access units are sent as they are
(no re-encoding), paced at real time. With ``--loop`` the clip repeats forever with timestamps
that keep increasing, and all clients share one live stream, like a camera. Without ``--loop``
each client gets its own pass from the first frame, then end of stream. Keyframes are where the
clip has them. After a stall (SIGSTOP, then SIGCONT) overdue frames are dropped and the stream
resumes at the next keyframe, as a live camera's would.

``--pattern``: a live generated test pattern (openh264), with a keyframe every second.

Prints ``READY rtsp://HOST:PORT/MOUNT`` on stdout once the port listens; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# config-interval=0: the file path inserts SPS/PPS itself (rtph264pay's -1 repeats them before
# every IDR *slice*, which makes ffmpeg split multi-slice keyframes into two frames).
FILE_LAUNCH = (
    "( appsrc name=src is-live=true format=time ! rtph264pay name=pay0 pt=96 config-interval=0 )"
)
PATTERN_LAUNCH = (
    "( videotestsrc is-live=true pattern=ball"
    " ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1"
    " ! openh264enc gop-size={fps} complexity=low bitrate=1000000"
    " ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)
NAL_SPS = 7
MAX_LATE_NS = 200_000_000


@dataclass(frozen=True)
class AccessUnit:
    """One H.264 access unit in avc (length-prefixed) form; times in ns from the clip start."""

    data: bytes
    pts: int
    dts: int
    keyframe: bool


@dataclass(frozen=True)
class Clip:
    """A demuxed H.264 clip: its caps and access units in decode order."""

    caps: Gst.Caps
    units: list[AccessUnit]
    period: int  # ns from one pass to the next when looping


def _parameter_sets(codec_data: bytes) -> tuple[int, list[bytes]]:
    """Return (NAL length size, [SPS..., PPS...]) parsed from an avcC record."""
    length_size = (codec_data[4] & 3) + 1
    nals = []
    pos = 5
    for mask in (0x1F, 0xFF):  # SPS count shares its byte with reserved bits; PPS count does not
        count = codec_data[pos] & mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(codec_data[pos : pos + 2], "big")
            nals.append(codec_data[pos + 2 : pos + 2 + size])
            pos += 2 + size
    return length_size, nals


def _has_sps(data: bytes, length_size: int) -> bool:
    pos = 0
    while pos + length_size < len(data):
        if data[pos + length_size] & 0x1F == NAL_SPS:
            return True
        pos += length_size + int.from_bytes(data[pos : pos + length_size], "big")
    return False


def load_clip(path: str) -> Clip:
    """Demux the first H.264 video track of an MP4 into memory."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! qtdemux name=demux demux.video_0"
        " ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    caps = None
    raw: list[tuple[bytes, int, int, bool]] = []
    error = None
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        error = bus.pop_filtered(Gst.MessageType.ERROR)
    # On a demux error appsink never sees EOS, so poll the bus between samples.
    while error is None and not sink.get_property("eos"):
        sample = sink.emit("try-pull-sample", 100 * Gst.MSECOND)
        if sample is None:
            error = bus.pop_filtered(Gst.MessageType.ERROR)
            continue
        caps = sample.get_caps()
        buf = sample.get_buffer()
        dts = buf.dts if buf.dts != Gst.CLOCK_TIME_NONE else buf.pts
        keyframe = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
        raw.append((buf.extract_dup(0, buf.get_size()), buf.pts, dts, keyframe))
    pipeline.set_state(Gst.State.NULL)
    if error is not None or not raw or caps is None:
        detail = error.parse_error()[0].message if error else "no H.264 video track"
        raise SystemExit(
            f"rtsp_server: cannot read H.264 from {path}: {detail}"
            " (expected an MP4 with an H.264 video track)"
        )

    codec_data = caps.get_structure(0).get_value("codec_data")
    length_size, params = _parameter_sets(codec_data.extract_dup(0, codec_data.get_size()))
    prefix = b"".join(len(nal).to_bytes(length_size, "big") + nal for nal in params)
    # Cameras repeat SPS/PPS before each keyframe; MP4 keeps them only in codec_data.
    start = min(dts for _, _, dts, _ in raw)
    units = [
        AccessUnit(
            data=prefix + data if key and not _has_sps(data, length_size) else data,
            pts=pts - start,
            dts=dts - start,
            keyframe=key,
        )
        for data, pts, dts, key in raw
    ]
    pts_sorted = sorted(u.pts for u in units)
    steps = [b - a for a, b in itertools.pairwise(pts_sorted)] or [Gst.SECOND // 30]
    frame = int(statistics.median(steps))
    return Clip(caps=caps, units=units, period=pts_sorted[-1] - pts_sorted[0] + frame)


def feed(appsrc: Gst.Element, clip: Clip, loop: bool, stop: threading.Event) -> None:
    """Push the clip into a live appsrc at real time, stamped in the pipeline's running time."""
    # Running time is defined only once the pipeline is PLAYING (clock and base time both set).
    while appsrc.get_state(0).state != Gst.State.PLAYING or (clock := appsrc.get_clock()) is None:
        if stop.wait(0.005):
            return
    origin = clock.get_time() - appsrc.get_base_time()
    offset = 0
    skipping = False
    while True:
        for unit in clip.units:
            due = origin + offset + unit.dts
            # Base time moves if the pipeline is paused and resumed: read it every time.
            lag = due - (clock.get_time() - appsrc.get_base_time())
            # After a stall (e.g. SIGSTOP) drop what is overdue and resume at the next keyframe,
            # as a live camera would, instead of bursting the backlog.
            skipping = skipping or lag < -MAX_LATE_NS
            if skipping and (lag < -MAX_LATE_NS or not unit.keyframe):
                continue
            skipping = False
            if lag > 0 and stop.wait(lag / Gst.SECOND):
                return
            if stop.is_set():
                return
            buf = Gst.Buffer.new_wrapped(unit.data)
            buf.pts = origin + offset + unit.pts
            buf.dts = due
            if not unit.keyframe:
                buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
            if appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                return  # flushing: the media is being torn down
        if not loop:
            appsrc.emit("end-of-stream")
            return
        offset += clip.period


def make_file_factory(clip: Clip, loop: bool) -> GstRtspServer.RTSPMediaFactory:
    """Factory whose media replay `clip`; shared live stream when looping, one pass per client."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(FILE_LAUNCH)
    factory.set_shared(loop)

    def on_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia):
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", clip.caps)
        stop = threading.Event()
        media.connect("unprepared", lambda _media: stop.set())
        threading.Thread(target=feed, args=(appsrc, clip, loop, stop), daemon=True).start()

    factory.connect("media-configure", on_configure)
    return factory


def make_pattern_factory(fps: int, width: int, height: int) -> GstRtspServer.RTSPMediaFactory:
    """Factory for a shared live test pattern with one keyframe per second."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PATTERN_LAUNCH.format(fps=fps, width=width, height=height))
    factory.set_shared(True)
    return factory


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="RTSP port")
    parser.add_argument("--mount", default="/cam1", help="mount path, e.g. /cam1")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", metavar="FILE.mp4", help="H.264 MP4 to serve as is")
    source.add_argument("--pattern", action="store_true", help="live generated test pattern")
    parser.add_argument("--loop", action="store_true", help="--source: repeat forever, live")
    parser.add_argument("--fps", type=int, default=30, help="--pattern: frame rate")
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="--pattern: WxH")
    args = parser.parse_args(argv)

    Gst.init(None)
    if args.source:
        factory = make_file_factory(load_clip(args.source), loop=args.loop)
    else:
        factory = make_pattern_factory(args.fps, *args.size)
    mount = "/" + args.mount.lstrip("/")

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(mount, factory)
    if not server.attach(None):
        print(f"rtsp_server: cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1

    main_loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, main_loop.quit)
    print(f"READY rtsp://{args.host}:{args.port}{mount}", flush=True)
    started = time.monotonic()
    try:
        main_loop.run()
    finally:
        print(f"rtsp_server: stopped after {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
