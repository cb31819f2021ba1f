"""--rtsp-out: a live run's annotated streams served over RTSP by GStreamer's RTSP server,
read back with PyAV as a video player would: two clients at once get frames of the right size,
and a client that stops reading does not change the pipeline's rate."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest
from harness import Collector, wait_until
from rtspfixture import free_port

from streamseg.config import ConfigError, load_config
from streamseg.pipeline.spec import load_pipeline
from streamseg.pipeline.supervisor import run
from streamseg.serve.board import Board
from streamseg.sink_urls import rtsp_listen, rtsp_urls
from streamseg.source.spec import SourceSpec
from streamseg.tools import synth

ROOT = Path(__file__).resolve().parents[1]


def test_listen_address():
    assert rtsp_listen("8554") == ("127.0.0.1", 8554)
    assert rtsp_listen("0.0.0.0:9000") == ("0.0.0.0", 9000)
    for bad in ("", "x", "host:", "70000"):
        with pytest.raises(ConfigError, match="give \\[HOST:\\]PORT"):
            rtsp_listen(bad)


def test_the_page_lists_each_streams_rtsp_url():
    assert rtsp_urls("8554", ["cam", "door"]) == {
        "cam": "rtsp://127.0.0.1:8554/cam",
        "door": "rtsp://127.0.0.1:8554/door",
    }
    assert rtsp_urls("[::1]:9000", ["cam"]) == {"cam": "rtsp://[::1]:9000/cam"}
    board = Board(live=True)
    board.rtsp = rtsp_urls("8554", ["cam"])
    snap = board.update(0.0, stages={}, reports={}, sources={"cam": {"in": 1}}, restarts={})
    assert snap.to_json()["streams"]["cam"]["rtsp"] == "rtsp://127.0.0.1:8554/cam"


class Player:
    """A PyAV client reading rtsp URL in a thread: the size of each frame it decoded;
    `stall` after the first frame: it stops reading, holding its connection open."""

    def __init__(self, url: str, *, stall: bool = False) -> None:
        self.sizes: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, stall), daemon=True)
        self.thread.start()

    def _run(self, url: str, stall: bool) -> None:
        try:
            with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
                for frame in c.decode(video=0):
                    self.sizes.append((frame.width, frame.height))
                    if stall:
                        self.done.wait()  # reads nothing more until the test ends
                    if self.done.is_set() or len(self.sizes) >= 25:
                        return
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.error = e


@pytest.mark.slow
@pytest.mark.rtsp
@pytest.mark.timeout(600)
def test_two_players_and_a_stalled_one(tmp_path, random_config):
    clip = tmp_path / "live.mp4"
    synth.write_clip(clip, tmp_path / "live.json", seed=5, frames=400, size=(160, 120), fps=25)
    publish = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    collector = Collector(publish)
    out: dict[str, Any] = {}

    def go() -> None:
        out["report"] = run(
            load_pipeline(ROOT / "pipelines" / "watch.toml"),
            [SourceSpec("cam", str(clip), "file")],
            load_config(random_config),
            publish=publish,
            rtsp_out=str(port),
            quiet=True,
        )

    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    players: list[Player] = []
    try:
        wait_until(lambda: len(collector.headers()) >= 25, 240, "results of the live run",
                   ended=lambda: not runner.is_alive())  # fmt: skip
        url = f"rtsp://127.0.0.1:{port}/cam"
        players = [Player(url), Player(url)]
        for p in players:
            wait_until(lambda p=p: len(p.sizes) >= 10 or p.error, 60, "frames at a player")
            assert p.error is None, p.error
            assert set(p.sizes) == {(160, 120)}
        before = _rate(collector, 2.0)
        stalled = Player(url, stall=True)
        players.append(stalled)
        wait_until(lambda: stalled.sizes or stalled.error, 60, "the stalled player's frame")
        during = _rate(collector, 3.0)
        assert during >= 0.5 * before, (before, during)
        runner.join(300)
        assert not runner.is_alive()
    finally:
        for p in players:
            p.done.set()
        collector.close()
    counts = out["report"].extra["postprocess"]["sinks"]["rtsp"]
    assert counts["delivered"] >= 10 and counts["pending"] == 0
    assert (
        counts["delivered"] + sum(counts["dropped"].values())
        == out["report"].postprocess["cam"]["out"]
    )


def _rate(collector: Collector, seconds: float) -> float:
    t0, n0 = time.monotonic(), len(collector.headers())
    wait_until(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "the window to pass")
    return (len(collector.headers()) - n0) / (time.monotonic() - t0)
