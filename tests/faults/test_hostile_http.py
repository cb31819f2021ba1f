"""The `--serve` HTTP server against clients that do not behave: real sockets to a real server
fed by a real postprocess-side Previewer (no stage processes).

Clients that close before their reply print no traceback; connections that send nothing, or
a request head that never ends, cost no thread beyond the cap and are closed; the server keeps
answering; live-view readers that stall lose their slot, and one client address cannot take
every slot from the others.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
from harness import wait_until

from streamseg.postprocess.preview import Previewer
from streamseg.serve import http
from streamseg.serve.board import Board
from streamseg.serve.views import PreviewHub
from streamseg.wire.messages import Stats


class Served:
    """A server and hub on real sockets, fed 50 frames a second of noise (about 50 KB of JPEG
    each, so that a reader that stops reading fills its buffers in a fraction of a second)."""

    def __init__(self, tmp_path) -> None:
        endpoint = f"ipc://{tmp_path}/preview"
        self.previewer = Previewer(endpoint, auth="post-token")
        self.hub = PreviewHub(endpoint, expect_auth="post-token", poll_ms=20)
        self.board = Board(live=True, stall_s=2.0)
        self.board.update(
            1.0,
            stages={"postprocess": None},
            reports={"postprocess": Stats("postprocess", {"a": {"in": 1, "out": 1}})},
            sources={"a": {"in": 1, "state": "up"}},
            restarts={},
        )
        self.web = http.bind("127.0.0.1:0")
        self.port = self.web.server.server_address[1]
        self.hub.start()
        self.web.start(self.board, self.hub)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._offer, daemon=True)
        self.thread.start()

    def _offer(self) -> None:  # postprocess's loop
        rng = np.random.default_rng(0)
        frame = 0
        while not self.stop.is_set():
            self.previewer.poll()
            if self.previewer.wanted("a"):
                noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
                self.previewer.offer("a", frame, time.time(), noise)
            frame += 1
            time.sleep(0.02)  # (its pace, not a wait for anything)

    def get(self, path: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
        """(status, body) of a well-behaved GET from `source` (any 127.x.y.z is this host)."""
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source, 0)
        )
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        finally:
            sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.web.close()
        self.hub.close()
        self.previewer.sock.close(0)


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.close()


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # (before connect: it sets the window offered)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that dies does: the server's write fails."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_by_server(sock: socket.socket, timeout: float = 30.0) -> bool:
    """Whether the server closes `sock` within `timeout` (end of stream or a reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def first_frame(port: int, source: str, timeout: float = 10.0) -> bool:
    """Whether a live view from `source` answers 200 and delivers a whole first frame."""
    sock = connect(port, source)
    sock.settimeout(timeout)
    try:
        sock.sendall(b"GET /view/a HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b"!"
            if data.endswith(b"!"):
                return False
        if b" 200 " not in data.split(b"\r\n", 1)[0]:
            return False
        while data.count(b"Content-Length") < 2 or data.count(b"--" + http.BOUNDARY.encode()) < 2:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
        return True
    finally:
        sock.close()


def test_clients_that_go_away_print_no_traceback(served, capfd):
    before = threading.active_count()
    for n in range(200):
        sock = connect(served.port)
        path = ("/", "/api/state", "/metrics", "/view/a", "/view/a.jpg")[n % 5]
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reset(sock)
    wait_until(lambda: threading.active_count() <= before, 30, "every handler to end")
    assert served.get("/healthz")[0] in (200, 503)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-3000:]


def test_half_open_connections_hold_no_thread_beyond_the_cap(served, monkeypatch):
    monkeypatch.setattr(http, "HEAD_TIMEOUT_S", 2.0, raising=False)
    monkeypatch.setattr(http, "IDLE_TIMEOUT_S", 2.0, raising=False)
    before = threading.active_count()
    silent = [connect(served.port) for _ in range(100)]  # connect, then say nothing
    trickling = [connect(served.port) for _ in range(40)]  # a head that never ends
    for sock in trickling:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert served.get("/api/state")[0] == 200  # still answers
    assert threading.active_count() <= before + http.MAX_HANDLERS
    # the silent are closed once idle, the trickling once their head is late: threads freed
    for sock in silent + trickling:
        assert closed_by_server(sock)
    wait_until(lambda: threading.active_count() <= before, 30, "the handlers to end")
    for sock in silent + trickling:
        sock.close()


def test_more_connections_than_handlers_are_refused_not_queued(served, monkeypatch):
    monkeypatch.setattr(http, "HEAD_TIMEOUT_S", 30.0, raising=False)
    before = threading.active_count()
    trickling = [connect(served.port) for _ in range(http.MAX_HANDLERS + 20)]
    for sock in trickling:
        sock.sendall(b"GET / HTTP/1.1\r\n")
    wait_until(lambda: served.web.server.refused >= 20, 10, "20 connections refused")
    assert threading.active_count() <= before + http.MAX_HANDLERS
    for sock in trickling:
        sock.close()
    wait_until(lambda: served.get("/api/state")[0] == 200, 30, "the server to answer again")


def test_stalled_viewers_lose_their_slots_and_cannot_take_them_all(served):
    stalled = []
    for _ in range(http.MAX_VIEWERS):  # 32 live views that read nothing, from one address
        sock = connect(served.port, "127.0.0.1", rcvbuf=4096)
        sock.sendall(b"GET /view/a HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(sock)
    server = served.web.server
    wait_until(lambda: server.viewers >= http.MAX_VIEWERS_PER_CLIENT, 10, "the stalled viewers")
    # another client address gets frames at once: one address cannot hold every slot
    assert first_frame(served.port, "127.0.0.2")
    # and the stalled ones are dropped after a short stall: their address may view again
    wait_until(lambda: server.viewers == 0, 5 * http.STALL_S + 10, "the stalled to be dropped")
    assert first_frame(served.port, "127.0.0.1")
    for sock in stalled:
        sock.close()
