"""Clips shorter than a batch through several inference workers: every frame has results.

A stream whose frames all go out in the first batch has its end-of-stream passed on by the
dispatcher before any of its results can reach postprocess (the workers are still running the
model), so postprocess must wait for them (postprocess.reorder); it once ended such streams at
once and lost every frame ("dropped 3 (in_transit 3)", exit 3).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamseg.tools import synth

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def annotate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "streamseg.cli", "annotate", "-q", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=cwd)


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory) -> list[Path]:
    """Clips of 1, 2 and 3 frames (streams "f1", "f2", "f3")."""
    d = tmp_path_factory.mktemp("short")
    for n in (1, 2, 3):
        synth.write_clip(d / f"f{n}.mp4", d / f"f{n}.json", seed=n, frames=n, size=(160, 120))
    return [d / f"f{n}.mp4" for n in (1, 2, 3)]


@pytest.mark.parametrize("workers", [2, 3])
def test_every_frame_of_clips_shorter_than_a_batch_has_results(
    workers, short_clips, random_config, tmp_path
):
    results = tmp_path / "r.jsonl"
    proc = annotate(
        *short_clips, "--results", results, "--config", random_config,
        "--workers", str(workers), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for n in (1, 2, 3):
        lines = (tmp_path / f"r.f{n}.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == list(range(n)), proc.stderr


def test_a_clip_with_no_decodable_frame_ends_with_the_usual_line(
    short_clips, random_config, tmp_path
):
    """Its end-of-stream is all that reaches the workers' side: the run ends at once, exit 3."""
    video = tmp_path / "blank.mp4"
    data = bytearray(short_clips[2].read_bytes())
    at = data.find(b"mdat")  # the frames' bytes zeroed: the container opens, nothing decodes
    size = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 : at - 4 + size] = bytes(size - 8)
    video.write_bytes(data)
    proc = annotate(
        video, "--results", tmp_path / "r.jsonl", "--config", random_config, "--workers", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "blank: decoded 0 of 3 frames" in proc.stderr
    assert "Traceback" not in proc.stderr
