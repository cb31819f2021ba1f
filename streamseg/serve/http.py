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

Clients are not trusted to behave (the port may face a network): a connection costs a thread
only once its request has begun to arrive, and threads are capped (MAX_HANDLERS; beyond, 503 at
once); a request head must arrive within HEAD_TIMEOUT_S; a client that goes away is logged at
debug level, never as a traceback in the run's output; a live view that stalls for STALL_S is
dropped, and one client address holds at most MAX_VIEWERS_PER_CLIENT of the MAX_VIEWERS slots.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import select
import socket
import sys
import threading
import time
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
MAX_VIEWERS_PER_CLIENT = 16
"""Live views one client address may hold: a page shows every stream, but one client cannot
take every slot."""
STALL_S = 3.0
"""A viewer that takes less than one frame in this long is dropped (its slot freed)."""
SEND_TIMEOUT_S = STALL_S  # (the name this module used first)
FRAME_WAIT_S = 1.0
MAX_HANDLERS = 64
"""Requests handled at once, one thread each (live views included); more get 503 at once."""
MAX_PENDING = 256
"""Connections accepted that have sent nothing yet (no thread); beyond, the oldest is closed."""
IDLE_TIMEOUT_S = 10.0
"""A connection that sends no request for this long is closed (between keep-alive requests
too)."""
HEAD_TIMEOUT_S = 10.0
"""A request line and headers must arrive whole within this (a client trickling bytes holds a
thread no longer)."""
_POLL_S = 0.02  # the accept loop's turn: how late a request that arrived may start
_GONE = (BrokenPipeError, ConnectionError, TimeoutError)  # a client that went away or stalled


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
    """The threading server with the limits of the module docstring. Accepted connections wait
    in `pending` (no thread) until their first bytes arrive; the accept loop (`service_actions`,
    every _POLL_S) hands them to a thread when one of MAX_HANDLERS is free, closes the idle, and
    cuts off request heads that take longer than HEAD_TIMEOUT_S."""

    daemon_threads = True  # a viewer never keeps the process alive
    block_on_close = False
    request_queue_size = 128  # listen backlog (socketserver's 5 made a burst of clients wait 1 s)

    def __init__(self, address: tuple[str, int]) -> None:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else None
        except ValueError:
            family = None  # a host name
        if family is not None:
            self.address_family = family
        self.pending: dict[socket.socket, tuple[float, Any]] = {}  # accepted at, address
        super().__init__(address, _Handler)  # (a failed bind calls server_close)
        self.board: Board | None = None
        self.hub: PreviewHub | None = None
        self.viewers = 0
        self.viewers_by_client: dict[str, int] = {}
        self.viewers_lock = threading.Lock()
        self.closing = threading.Event()
        self.handlers = threading.BoundedSemaphore(MAX_HANDLERS)
        self.heads: dict[socket.socket, float] = {}  # reading a request head: its deadline
        self.heads_lock = threading.Lock()
        self.refused = 0  # connections answered 503 because every handler was busy

    # -- accepting: a thread only for a connection that has sent something --

    def process_request(self, request: Any, client_address: Any) -> None:
        if len(self.pending) >= MAX_PENDING:
            oldest = min(self.pending, key=lambda s: self.pending[s][0])
            self._drop(oldest)
        self.pending[request] = (time.monotonic(), client_address)

    def service_actions(self) -> None:
        now = time.monotonic()
        if self.pending:
            poll = select.poll()  # (not select.select: no limit on descriptor numbers)
            by_fd = {sock.fileno(): sock for sock in self.pending}
            for fd in by_fd:
                poll.register(fd, select.POLLIN)
            for fd, _ in poll.poll(0):  # data, a hang-up or an error: a thread reads which
                sock = by_fd[fd]
                _, address = self.pending.pop(sock)
                self._dispatch(sock, address)
            for sock, (since, _) in list(self.pending.items()):
                if now - since > IDLE_TIMEOUT_S:
                    self._drop(sock)
        with self.heads_lock:
            late = [sock for sock, deadline in self.heads.items() if now > deadline]
        for sock in late:  # its thread's read returns at once: the handler ends
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _dispatch(self, sock: socket.socket, address: Any) -> None:
        if sock.fileno() < 0:
            return
        if not self.handlers.acquire(blocking=False):
            self.refused += 1
            try:  # a short answer that fits any socket buffer: never blocks the loop
                sock.setblocking(False)
                sock.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n"
                          b"Connection: close\r\n\r\nbusy\n")  # fmt: skip
            except OSError:
                pass
            self._drop(sock)
            return
        try:
            super().process_request(sock, address)  # ThreadingMixIn: a thread for it
        except BaseException:
            self.handlers.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.handlers.release()

    def _drop(self, sock: socket.socket) -> None:
        self.pending.pop(sock, None)
        self.shutdown_request(sock)

    def server_close(self) -> None:
        super().server_close()
        for sock in list(self.pending):
            self._drop(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (closed before its reply, reset, stalled) is the client's
        business: one debug line. Anything else is a bug of this module: its traceback, logged."""
        error = sys.exc_info()[1]
        if isinstance(error, _GONE):
            log.debug("serve: %s went away: %s", client_address[0], error)
        else:
            log.error("serve: request from %s failed", client_address[0], exc_info=True)


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
            target=self.server.serve_forever, kwargs={"poll_interval": _POLL_S}, daemon=True
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
    timeout = IDLE_TIMEOUT_S  # every read (StreamRequestHandler sets it on the socket)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("serve: " + format, *args)

    def handle_one_request(self) -> None:
        # the head (request line and headers) has HEAD_TIMEOUT_S in all; parse_request ends it
        with self.server.heads_lock:
            self.server.heads[self.connection] = time.monotonic() + HEAD_TIMEOUT_S
        try:
            super().handle_one_request()
        finally:
            self._head_read()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._head_read()
        return ok

    def _head_read(self) -> None:
        with self.server.heads_lock:
            self.server.heads.pop(self.connection, None)

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
        client = str(self.client_address[0])
        with server.viewers_lock:
            mine = server.viewers_by_client.get(client, 0)
            full = server.viewers >= MAX_VIEWERS or mine >= MAX_VIEWERS_PER_CLIENT
            if not full:
                server.viewers += 1
                server.viewers_by_client[client] = mine + 1
        if full:
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many viewers\n", "text/plain")
        if hub is None:
            self._leave(client)
            return self._send(
                HTTPStatus.SERVICE_UNAVAILABLE, b"no live views in this run\n", "text/plain"
            )
        try:
            # each frame's write must end within STALL_S (sendall's timeout is its total time)
            self.connection.settimeout(STALL_S)
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
        except OSError:
            pass  # the viewer left (closed the tab), or took no frame for STALL_S
        finally:
            self._leave(client)

    def _leave(self, client: str) -> None:
        server = self.server
        with server.viewers_lock:
            server.viewers -= 1
            server.viewers_by_client[client] -= 1
            if not server.viewers_by_client[client]:
                del server.viewers_by_client[client]
