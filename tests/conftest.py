"""Shared fixtures: real encoded clips (streamseg.tools.synth with PyAV/libx264) and configs."""

from __future__ import annotations

from pathlib import Path

import pytest

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
