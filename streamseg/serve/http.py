"""The HTTP server of `--serve`: the page, the live views, /metrics and /healthz.

Bound before any stage starts (`bind`: a port in use is one line and exit 2), served from
threads of the supervisor process, which already holds every figure (`board.Board`) and
receives the annotated frames (`views.PreviewHub`). Nothing here can slow the pipeline: a
request reads the latest snapshot, and a live view sends each viewer the newest frame when it
is ready for one.

  /                 the page: every stream's live view, state, fps, latency and drops
  /view/STREAM      the live view: MJPEG (multipart/x-mixed-replace), plays in any browser
  /view/STREAM.jpg  the newest annotated frame, once
  /api/state        the page's figures as JSON
  /metrics          Prometheus text format (streamseg.serve.metrics)
  /healthz          200 "ok", or 503 and why (streamseg.serve.health)
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from streamseg.serve import metrics
from streamseg.serve.board import Board
from streamseg.serve.page import PAGE
from streamseg.serve.views import PreviewHub

log = logging.getLogger("streamseg")

BOUNDARY = "streamseg-frame"
MAX_VIEWERS = 32
"""Live views open at once (each holds a thread); more get 503."""
SEND_TIMEOUT_S = 10.0
"""A viewer that takes no data for this long is dropped."""
FRAME_WAIT_S = 1.0


class ServeError(ValueError):
    """The --serve address is unusable; str() is one line with the fix."""


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of a --serve value: "8080" or ":8080" mean loopback (127.0.0.1:8080);
    "HOST:8080" or "[::1]:8080" that host (0.0.0.0: every interface)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "", text.strip()
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ServeError(
            f"--serve {text!r}: needs a port, e.g. 8080 (this host only) or 0.0.0.0:8080"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer never keeps the process alive
    block_on_close = False

    def __init__(self, address: tuple[str, int]) -> None:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else None
        except ValueError:
            family = None  # a host name
        if family is not None:
            self.address_family = family
        super().__init__(address, _Handler)
        self.board: Board | None = None
        self.hub: PreviewHub | None = None
        self.viewers = 0
        self.viewers_lock = threading.Lock()
        self.closing = threading.Event()


class WebServer:
    """A bound server; `start` serves a run's board (and live views from `hub`)."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def exposed(self) -> bool:
        """True when other hosts can connect (not a loopback address)."""
        host = self.server.server_address[0]
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True

    def start(self, board: Board, hub: PreviewHub | None = None) -> None:
        self.server.board, self.server.hub = board, hub
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop serving: open live views end at once, the socket is closed."""
        self.server.closing.set()
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(timeout=2.0)
        self.server.server_close()


def bind(address: str) -> WebServer:
    """The server bound to `address` (see parse_address), not yet serving; ServeError (one
    line) when the address is unusable or the port is taken."""
    host, port = parse_address(address)
    try:
        return WebServer(_Server((host, port)))
    except OSError as e:
        why = e.strerror or str(e)
        raise ServeError(
            f"--serve {address}: cannot listen on {host}:{port} ({why}); "
            "pick another port or stop what uses it"
        ) from None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "streamseg"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("serve: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = unquote(urlsplit(self.path).path)
        board = self.server.board
        if board is None:
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"starting\n", "text/plain")
        snap = board.latest()
        if path == "/":
            return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/state":
            body = json.dumps(snap.to_json()).encode()
            return self._send(HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            body, ctype = metrics.render(snap)
            return self._send(HTTPStatus.OK, body, ctype)
        if path == "/healthz":
            if snap.problems:
                text = "\n".join(snap.problems) + "\n"
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, text.encode(), "text/plain")
            return self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        if path.startswith("/view/"):
            name = path[len("/view/") :]
            if name.endswith(".jpg") and name[:-4] in snap.streams:
                return self._snapshot(name[:-4])
            if name in snap.streams:
                return self._live(name)
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _snapshot(self, stream: str) -> None:
        hub = self.server.hub
        shot = None
        if hub is not None:
            with hub.watching(stream):
                shot = hub.next(stream, 0, 5.0)
        if shot is None:
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
        self._send(HTTPStatus.OK, shot.preview.jpeg, "image/jpeg")

    def _live(self, stream: str) -> None:
        hub, server = self.server.hub, self.server
        with server.viewers_lock:
            full = server.viewers >= MAX_VIEWERS
            if not full:
                server.viewers += 1
        if hub is None or full:
            why = b"too many viewers\n" if full else b"no live views in this run\n"
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, why, "text/plain")
        try:
            self.connection.settimeout(SEND_TIMEOUT_S)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            seq = 0
            with hub.watching(stream):
                while not server.closing.is_set() and not hub.closed:
                    shot = hub.next(stream, seq, FRAME_WAIT_S)
                    if shot is None:
                        continue
                    seq = shot.seq
                    p = shot.preview
                    head = (
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(p.jpeg)}\r\nX-Frame: {p.frame}\r\n"
                        f"X-Capture-Time: {p.wall_time:.6f}\r\n\r\n"
                    )
                    self.wfile.write(head.encode() + p.jpeg + b"\r\n")
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the viewer left (closed the tab, or too slow for SEND_TIMEOUT_S)
        finally:
            with server.viewers_lock:
                server.viewers -= 1
