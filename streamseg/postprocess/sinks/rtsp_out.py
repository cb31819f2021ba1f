"""The RTSP output sink (`--rtsp-out [HOST:]PORT`): each stream's annotated video served as
rtsp://HOST:PORT/STREAM (H.264), for a video management system, VLC or ffplay.

GStreamer's RTSP server runs in a helper process under the system python (`rtsp_server.py`
next to this module: it needs python3-gi, which a virtual environment lacks); this sink starts
it, and writes it a stream's annotated frames (raw RGB over a pipe) only while a client plays
that stream: the helper says when (`WATCHING STREAM 1|0`), and only then is a frame drawn and
encoded. Each stream's first frame is sent regardless, to create its mount.

Counts: a frame sent to the server is delivered; one nobody was watching is dropped as
"no_client"; while the server (or a slow client behind it) cannot take frames as fast as they
come, the oldest wait at most `max_pending` (4) and are dropped as "queue_full": a slow client
skips frames, the pipeline never waits.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from streamseg.postprocess.sinks.base import FrameOut
from streamseg.postprocess.sinks.files import OutputError
from streamseg.postprocess.sinks.threaded import Dropped, Threaded
from streamseg.sink_urls import SYSTEM_PYTHON, rtsp_listen

log = logging.getLogger(__name__)

SERVER = Path(__file__).with_name("rtsp_server.py")
READY_S = 30.0
"""How long the helper may take to listen (importing GStreamer on a busy machine)."""


def frame_header(stream: str, image: np.ndarray) -> bytes:
    """What goes before a frame's RGB bytes to the helper: uint32 big-endian N, N bytes of
    JSON {"stream", "width", "height"}. image: uint8[H, W, 3] RGB."""
    h, w = image.shape[:2]
    head = json.dumps({"stream": stream, "width": w, "height": h}).encode()
    return struct.pack(">I", len(head)) + head


class RtspOut(Threaded):
    """Annotated streams served over RTSP (see the module docstring)."""

    def __init__(self, listen: str, *, python: str = SYSTEM_PYTHON) -> None:
        super().__init__("rtsp", max_pending=4, max_batch=1, drain_s=1.0)
        host, port = rtsp_listen(listen)
        try:
            self.proc = subprocess.Popen(
                [python, str(SERVER), "--host", host, "--port", str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        except OSError as e:
            raise OutputError(f"--rtsp-out: cannot start {python}: {e.strerror or e}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pipe: IO[bytes] = self.proc.stdin
        self.watching: set[str] = set()
        self.mounted: set[str] = set()
        self._lock = threading.Lock()
        ready = self._ready(self.proc.stdout)
        self.url = f"rtsp://{ready}"
        log.info("annotated streams on %s/STREAM", self.url)
        threading.Thread(target=self._listen, args=(self.proc.stdout,), daemon=True).start()

    def _ready(self, out: IO[bytes]) -> str:
        """HOST:PORT once the helper listens; OutputError if it does not within READY_S."""
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(READY_S)
        words = line[0].decode(errors="replace").split() if line else []
        if len(words) == 2 and words[0] == "READY":
            return words[1]
        self.proc.kill()
        self.proc.wait()
        raise OutputError(
            "--rtsp-out: GStreamer's RTSP server did not start (it needs python3-gi, "
            "gir1.2-gst-rtsp-server-1.0 and openh264 under /usr/bin/python3: "
            "apt-get install $(cat .ci/apt-packages.txt)), or its port is taken"
        )

    def _listen(self, out: IO[bytes]) -> None:
        """WATCHING lines: which streams someone plays now."""
        for raw in out:
            words = raw.decode(errors="replace").split()
            if len(words) == 3 and words[0] == "WATCHING":
                with self._lock:
                    if words[2] == "1":
                        self.watching.add(words[1])
                    else:
                        self.watching.discard(words[1])

    # -- the sink's thread ---------------------------------------------------------------------

    def deliver(self, frames: Sequence[FrameOut]) -> None:
        for frame in frames:
            with self._lock:
                wanted = frame.stream in self.watching or frame.stream not in self.mounted
            if not wanted:
                raise Dropped("no_client")
            if frame.annotated is None:
                raise Dropped("no_pixels")  # inference forwarded none (nothing renders)
            image = np.ascontiguousarray(frame.annotated(), np.uint8)
            self.pipe.write(frame_header(frame.stream, image))
            self.pipe.write(memoryview(image).cast("B"))  # no copy: the pipe takes the array
            self.pipe.flush()
            with self._lock:
                self.mounted.add(frame.stream)

    def close(self) -> None:
        super().close()
        self.on_close()  # (also when no frame ever came: the thread never started)

    def on_close(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.pipe.close()  # the helper stops at the end of its input
        except OSError:
            pass
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
