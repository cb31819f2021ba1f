"""Start and control ``rtsp_server.py`` (a real RTSP server on loopback) from tests.

The server needs GStreamer's RTSP server under the system python; ``rtsp_available()`` says
whether this machine has it (CI installs ``.ci/apt-packages.txt``), so tests can skip cleanly.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
needed = ["appsrc", "appsink", "qtdemux", "rtph264pay", "rtpbin", "videotestsrc", "openh264enc"]
missing = [name for name in needed if Gst.ElementFactory.find(name) is None]
raise SystemExit("missing GStreamer elements: " + " ".join(missing) if missing else 0)
"""


@functools.cache
def rtsp_available(python: str = SYSTEM_PYTHON) -> bool:
    """True if `python` can import GstRtspServer and find the elements rtsp_server.py uses."""
    try:
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RtspServer:
    """One ``rtsp_server.py`` process serving one mount.

    source: H.264 MP4 to serve without re-encoding; None serves a live test pattern.
    loop: repeat `source` forever as one shared live stream (else one pass per client, then EOS).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | None = None,
        *,
        loop: bool = False,
        port: int | None = None,
        mount: str = "/cam1",
        host: str = "127.0.0.1",
        # pattern only
        fps: int = 30,
        size: tuple[int, int] = (320, 240),
        python: str = SYSTEM_PYTHON,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.source = source
        self.loop = loop
        self.port = port if port is not None else free_port(host)
        self.mount = "/" + mount.lstrip("/")
        self.host = host
        self.fps = fps
        self.size = size
        self.python = python
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._stderr_log = ""

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.mount}"

    def command(self) -> list[str]:
        cmd = [self.python, str(SERVER_SCRIPT), "--host", self.host, "--port", str(self.port)]
        cmd += ["--mount", self.mount]
        if self.source is None:
            cmd += ["--pattern", "--fps", str(self.fps), "--size", "{}x{}".format(*self.size)]
        else:
            cmd += ["--source", os.fspath(self.source)] + (["--loop"] if self.loop else [])
        return cmd

    def start(self) -> RtspServer:
        """Launch the server and wait for its READY line; raise RuntimeError if it fails."""
        if self.running:
            raise RuntimeError(f"RTSP server for {self.url} is already running")
        self._stderr_log = ""
        self._stderr = tempfile.NamedTemporaryFile(prefix="rtsp_server_", suffix=".log")
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        expected = f"READY {self.url}".encode()
        deadline = time.monotonic() + self.ready_timeout
        out = b""
        while expected not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(
                    self._failure(f"was not ready within {self.ready_timeout:.0f} s")
                )
            readable, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.1))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if readable else b""
            if readable and not chunk:  # EOF: the process is exiting
                code = self.proc.wait(timeout=STOP_TIMEOUT_S)
                self._close()
                raise RuntimeError(self._failure(f"exited with code {code} before READY"))
            out += chunk
        return self

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after a few seconds) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.thaw()  # a stopped process would not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), like a crashed camera, and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def freeze(self) -> None:
        """SIGSTOP the server: TCP connections stay open but no data flows (a stalled network)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        self._signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        """What the server has written to stderr (so far, or before it was stopped)."""
        if self._stderr is None:
            return self._stderr_log
        return Path(self._stderr.name).read_bytes().decode(errors="replace")

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _signal(self, signum: int) -> None:
        if self.running:
            os.kill(self.proc.pid, signum)

    def _failure(self, what: str) -> str:
        stderr = self.stderr_text().strip() or "(no stderr)"
        return f"RTSP server {self.url} {what}: {' '.join(self.command())}\n{stderr}"

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr_log = self.stderr_text()
            self._stderr.close()
            self._stderr = None
