"""Shared fixtures (real encoded clips made by streamseg.tools.synth with PyAV/libx264, configs,
a real RTSP camera) and the one place where a marker's needs are checked.

Markers (registered in pyproject.toml): a test marked with a need below is skipped, with the
line that says how to meet it, where this machine lacks it. `slow` tests run real stage
processes; `make test-fast` leaves them out, `make test` runs everything.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rtspfixture import RtspServer, free_port, rtsp_available

from streamseg.tools import synth

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = ROOT / "configs" / "shapes.toml"  # a link to the shipped streamseg/data/configs


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """A 320x240, 10-frame H.264 clip of moving shapes and its COCO ground truth."""
    d = tmp_path_factory.mktemp("clip")
    video, gt = d / "shapes.mp4", d / "shapes.json"
    synth.write_clip(video, gt, seed=123, frames=10, size=(320, 240), fps=25)
    return video, gt


@pytest.fixture(scope="session")
def shapes_config() -> Path:
    """The shipped offline model (trained by `streamseg train`, committed in streamseg/data)."""
    return SHAPES_CONFIG


@pytest.fixture(scope="session")
def random_config(tmp_path_factory) -> Path:
    """The small architecture with random weights: plumbing tests that need no accuracy."""
    path = tmp_path_factory.mktemp("cfg") / "random.toml"
    path.write_text(
        "[model]\n"
        'arch = "shapes_mobilenet_v3_fpn"\n'
        'weights = "random"\n'
        'labels = ["__background__", "circle", "square", "triangle"]\n'
        "score_threshold = 0.0\n"
        "detections_per_img = 5\n"
        "min_size = 128\n"
        "max_size = 160\n"
        "[runtime]\n"
        'device = "cpu"\n'
        "max_batch = 2\n"
        "max_wait_ms = 5.0\n"
        "threads = 1\n"  # plumbing tests leave a core for the other stages
    )
    return path


@pytest.fixture
def camera(tmp_path) -> Iterator[RtspServer]:
    """A real RTSP camera on loopback: a 160x120, 25 fps, 25-frame synth clip served in a loop
    as one live stream. Tests using it are marked `rtsp`."""
    clip = tmp_path / "cam.mp4"
    synth.write_clip(clip, tmp_path / "cam.json", seed=3, frames=25, size=(160, 120), fps=25)
    server = RtspServer(clip, loop=True, port=free_port()).start()
    yield server
    server.stop()


# -- what a marker needs -----------------------------------------------------------------------


def _cuda() -> str | None:
    import torch  # here: collecting the pure-core tests imports no torch for this

    return None if torch.cuda.is_available() else "needs a CUDA GPU (torch sees none)"


def _rtsp() -> str | None:
    if rtsp_available():
        return None
    return "GStreamer RTSP server missing: apt-get install $(cat .ci/apt-packages.txt)"


def _ray() -> str | None:
    return None if importlib.util.find_spec("ray") else "ray missing: pip install ray"


def _program(name: str, package: str) -> Callable[[], str | None]:
    def check() -> str | None:
        # (Debian puts daemons such as mosquitto in /usr/sbin, off a user's PATH)
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        return None if found else f"{name} missing: apt-get install {package}"

    return check


NEEDS: dict[str, Callable[[], str | None]] = {
    "cuda": _cuda,
    "rtsp": _rtsp,
    "ray": _ray,
    "mqtt": _program("mosquitto", "mosquitto"),
    "redis": _program("redis-server", "redis-server"),
}
"""Marker -> a check: None where this machine has what the marker needs, else why not (one
line naming the fix). Each check runs once, and only when a test with its marker runs."""


@functools.cache
def _missing(marker: str) -> str | None:
    return NEEDS[marker]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose markers need what this machine lacks, before its fixtures start."""
    for marker in NEEDS:
        if item.get_closest_marker(marker) is not None and (why := _missing(marker)):
            pytest.skip(why)
