"""The loopback RTSP server works with PyAV the way streamseg reads cameras."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import av
import av.error
import numpy as np
import pytest
from rtspfixture import RtspServer, free_port

pytestmark = pytest.mark.rtsp

RTSP_OPTIONS = {"rtsp_transport": "tcp"}
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
FPS = 30
SIZE = (320, 240)  # width, height
GRAY_BASE, GRAY_STEP = 16, 3  # frame i is uniform gray GRAY_BASE + GRAY_STEP * i


def make_clip(path: Path, frames: int, *, fps: int = FPS, size: tuple[int, int] = SIZE) -> Path:
    """Write an H.264 MP4 whose frame i is uniform gray 16 + 3*i, a keyframe every second."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            gray = np.full((height, width), GRAY_BASE + GRAY_STEP * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(gray, format="gray")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def frame_index(frame: av.VideoFrame) -> int:
    """Recover i from a frame made by make_clip."""
    gray = frame.to_ndarray(format="gray").mean()
    return round((gray - GRAY_BASE) / GRAY_STEP)


def read_frames(url: str, count: int | None = None) -> list[av.VideoFrame]:
    """Decode `count` frames (None: until the stream ends) from an RTSP url over TCP."""
    frames = []
    with av.open(url, options=RTSP_OPTIONS, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S)) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


@pytest.fixture(scope="module")
def clip_2s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("rtsp") / "clip_2s.mp4", frames=2 * FPS)


@pytest.fixture(scope="module")
def clip_1s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("rtsp") / "clip_1s.mp4", frames=FPS)


def test_one_pass_serves_every_frame_then_ends(clip_2s: Path) -> None:
    with RtspServer(clip_2s) as server:
        started = time.monotonic()
        frames = read_frames(server.url)
        elapsed = time.monotonic() - started
    assert [frame_index(f) for f in frames] == list(range(2 * FPS))
    assert {(f.width, f.height) for f in frames} == {SIZE}
    assert elapsed >= 1.5, "frames must come at real-time rate"


def test_loop_never_ends_and_pts_keep_increasing(clip_1s: Path) -> None:
    with RtspServer(clip_1s, loop=True) as server:
        frames = read_frames(server.url, count=int(2.5 * FPS))
    indices = [frame_index(f) for f in frames]
    assert indices == [(indices[0] + i) % FPS for i in range(len(frames))]
    pts = [f.pts for f in frames if f.pts is not None]  # ffmpeg leaves the first one unset
    assert len(pts) >= len(frames) - 1
    assert all(b > a for a, b in itertools.pairwise(pts))


def test_pattern_has_requested_size() -> None:
    with RtspServer(size=(160, 120)) as server:
        frames = read_frames(server.url, count=FPS)
    assert len(frames) == FPS
    assert {(f.width, f.height) for f in frames} == {(160, 120)}


def test_two_servers_and_several_clients_at_once(clip_1s: Path) -> None:
    results: dict[str, int] = {}

    def reader(name: str, url: str) -> None:
        results[name] = len(read_frames(url, count=FPS))

    with RtspServer(clip_1s, loop=True) as loop_server, RtspServer() as pattern_server:
        assert loop_server.port != pattern_server.port
        urls = {"loop-a": loop_server.url, "loop-b": loop_server.url, "pattern": pattern_server.url}
        threads = [threading.Thread(target=reader, args=item) for item in urls.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=OPEN_TIMEOUT_S + 10)
    assert results == {name: FPS for name in urls}


def test_restart_on_same_port_after_kill(clip_1s: Path) -> None:
    server = RtspServer(clip_1s, loop=True, port=free_port())
    with server:
        assert len(read_frames(server.url, count=FPS)) == FPS
        server.kill()
        assert not server.running
        server.start()
        assert len(read_frames(server.url, count=FPS)) == FPS


def test_killed_server_ends_the_read_quickly(clip_1s: Path) -> None:
    with RtspServer(clip_1s, loop=True) as server:
        container = av.open(server.url, options=RTSP_OPTIONS, timeout=(OPEN_TIMEOUT_S, 2.0))
        frames = container.decode(video=0)
        next(frames)
        server.kill()
        started = time.monotonic()
        # A dead server reads as end of stream or as a truncated last packet, never a hang.
        with pytest.raises((StopIteration, av.error.FFmpegError)):
            for _ in range(10 * FPS):
                next(frames)
        container.close()
    assert time.monotonic() - started < 2.0


def test_frozen_server_read_times_out_then_thaws(clip_1s: Path) -> None:
    with RtspServer(clip_1s, loop=True) as server:
        read_timeout = 1.0
        container = av.open(
            server.url, options=RTSP_OPTIONS, timeout=(OPEN_TIMEOUT_S, read_timeout)
        )
        frames = container.decode(video=0)
        next(frames)
        server.freeze()
        started = time.monotonic()
        # Buffered frames drain first; then a read times out (ExitError) or returns the truncated
        # access unit the parser held, which fails to decode (InvalidDataError): 1 or 2 timeouts.
        with pytest.raises(av.error.FFmpegError):
            for _ in range(10 * FPS):
                next(frames)
        container.close()
        assert time.monotonic() - started < 2 * read_timeout + 1.5
        server.thaw()
        assert len(read_frames(server.url, count=FPS)) == FPS


def test_start_failure_raises_with_server_stderr(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot read H.264"):
        RtspServer(tmp_path / "missing.mp4").start()
