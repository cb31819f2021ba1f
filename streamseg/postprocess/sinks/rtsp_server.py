#!/usr/bin/python3
"""The RTSP server of `--rtsp-out`: each stream's annotated frames as rtsp://HOST:PORT/STREAM.

A standalone program for the system python (GStreamer's RTSP server through GObject
introspection, `python3-gi` and `gir1.2-gst-rtsp-server-1.0`: .ci/apt-packages.txt); it imports
nothing of streamseg. The postprocess stage's `rtsp_out.RtspOut` sink starts it and writes
frames to its stdin:

    frame: uint32 big-endian N, then N bytes of JSON {"stream", "width", "height"},
           then width * height * 3 bytes of RGB (uint8[H, W, 3], row-major)

and reads lines from its stdout:

    READY HOST:PORT                 listening
    WATCHING STREAM 1 | 0           a client started / the last one stopped playing STREAM

A stream's mount exists from its first frame on; its media (one per stream, shared by every
client) encodes H.264 (openh264) only while it is prepared, i.e. while someone plays it, and
the sink sends a stream's frames only then. The appsrc queue is leaky: a slow encoder or client
skips frames instead of holding anything up.

    /usr/bin/python3 rtsp_server.py --host 127.0.0.1 --port 8554
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = (
    "( appsrc name=src is-live=true do-timestamp=true format=time block=false max-bytes={bytes}"
    " caps=video/x-raw,format=RGB,width={width},height={height},framerate=0/1"
    " ! queue leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0"
    " ! videoconvert ! video/x-raw,format=I420"
    " ! openh264enc complexity=low gop-size=25 rate-control=bitrate bitrate=2000000"
    " ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


class Mounts:
    """Each stream's mount and, while it is played, its appsrc (GLib main loop thread)."""

    def __init__(self, server: GstRtspServer.RTSPServer) -> None:
        self.server = server
        self.sources: dict[str, Gst.Element] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def ensure(self, stream: str, width: int, height: int) -> bool:
        """Mount `stream` on its first frame; False for a size change (not supported)."""
        if stream in self.sizes:
            return self.sizes[stream] == (width, height)
        self.sizes[stream] = (width, height)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(LAUNCH.format(width=width, height=height, bytes=width * height * 3 * 2))
        factory.set_shared(True)
        factory.connect("media-configure", self._configure, stream)
        self.server.get_mount_points().add_factory(f"/{stream}", factory)
        return True

    def _configure(self, _factory, media: GstRtspServer.RTSPMedia, stream: str) -> None:
        src = media.get_element().get_child_by_name("src")
        with self.lock:
            self.sources[stream] = src
        say(f"WATCHING {stream} 1")
        media.connect("unprepared", self._unprepared, stream)

    def _unprepared(self, _media, stream: str) -> None:
        with self.lock:
            self.sources.pop(stream, None)
        say(f"WATCHING {stream} 0")

    def push(self, stream: str, data: bytes) -> None:
        with self.lock:
            src = self.sources.get(stream)
        if src is not None:
            src.emit("push-buffer", Gst.Buffer.new_wrapped(data))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def read_frames(mounts: Mounts, loop: GLib.MainLoop) -> None:
    """Frames from stdin until it closes (the sink stopped), then stop the server."""
    stdin = sys.stdin.buffer
    try:
        while True:
            head = stdin.read(4)
            if len(head) < 4:
                return
            (n,) = struct.unpack(">I", head)
            meta = json.loads(stdin.read(n))
            w, h = int(meta["width"]), int(meta["height"])
            data = stdin.read(w * h * 3)
            if len(data) < w * h * 3:
                return
            stream = str(meta["stream"])
            GLib.idle_add(_mount_and_push, mounts, stream, w, h, data)
    finally:
        GLib.idle_add(loop.quit)


def _mount_and_push(mounts: Mounts, stream: str, w: int, h: int, data: bytes) -> bool:
    if mounts.ensure(stream, w, h):
        mounts.push(stream, data)
    return False  # once


def main() -> None:
    ap = argparse.ArgumentParser(description="streamseg's RTSP output server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554)
    args = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        raise SystemExit(2)
    loop = GLib.MainLoop()
    mounts = Mounts(server)
    signal.signal(signal.SIGTERM, lambda *_: GLib.idle_add(loop.quit))
    threading.Thread(target=read_frames, args=(mounts, loop), daemon=True).start()
    say(f"READY {args.host}:{server.get_bound_port()}")
    loop.run()


if __name__ == "__main__":
    main()
