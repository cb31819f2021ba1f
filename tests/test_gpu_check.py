"""`make gpu-check` (streamseg.tools.gpu_check): its budgeting, and its whole dry run on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamseg.tools.gpu_check import Point, estimate_s, matrix


def test_the_matrix_covers_both_models_every_batch_and_stream_count_smallest_useful_first():
    points = matrix(dry_run=False)
    assert points[0] == Point("maskrcnn_resnet50_fpn", 8, 8, 60, "1920x1080")
    for config in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
        grid = {(p.batch, p.streams) for p in points if p.config == config}
        assert grid == {(b, s) for b in (1, 4, 8) for s in (1, 4, 8)}
    assert len(set(points)) == len(points) == 18
    assert all(p.size == "1920x1080" for p in points)


def test_estimates_scale_with_frames_from_the_slowest_done_point_of_the_same_config():
    p = Point("a", 4, 4, 10, "x")
    assert estimate_s(p, [], first_guess_s=99.0) == 99.0
    done = [
        {"point": {"config": "a"}, "seconds": 30.0, "startup_s": 10.0, "frames": 10},  # 2 s/frame
        {"point": {"config": "a"}, "seconds": 20.0, "startup_s": 15.0, "frames": 10},  # 0.5
        {"point": {"config": "b"}, "seconds": 100.0, "startup_s": 0.0, "frames": 10},  # other
    ]
    assert estimate_s(p, done, first_guess_s=99.0) == pytest.approx(15.0 + 2.0 * 40)
    other = Point("c", 1, 1, 10, "x")  # nothing of its own: every config's worst
    assert estimate_s(other, done, first_guess_s=99.0) == pytest.approx(15.0 + 10.0 * 10)


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path):
    for args in (["--budget-s", "0"], ["--out", str(tmp_path / "no" / "such.json")]):
        proc = subprocess.run(
            [sys.executable, "-m", "streamseg.tools.gpu_check", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("gpu-check: error:") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_dry_run_runs_every_step_on_cpu_and_writes_one_json(tmp_path: Path):
    """Without CUDA the command falls back to a dry run by itself: parity on tiny inputs and
    the benchmark points that fit a 30 s budget (here, on 2 cores, the second does not: it is
    listed as skipped with its estimate)."""
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "streamseg.tools.gpu_check", "--out", str(out), "--no-tests"]
        + ["--budget-s", "30"]
        + ([] if not _cuda() else ["--dry-run"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["check"]["dry_run"] is True
    assert report["machine"]["torch"] and report["machine"]["cpu"]
    parity = report["parity"]
    assert parity["ok"] and parity["shapes/bfloat16"]["counted"] > 0
    assert "maskrcnn_resnet50_fpn_random/bfloat16" in parity
    runs, skipped = report["bench"]["runs"], report["bench"]["skipped"]
    assert len(runs) + len(skipped) == 2 and runs  # the first point always runs
    for run in runs:
        assert run["ok"] and run["device"] == "cpu" and run["frames"] == 8 * run["point"]["streams"]
        for key in ("model_only_fps", "naive_fps", "pipeline_fps", "latency_p99_ms"):
            assert run[key] > 0
        assert run["instances_per_frame"]["pipeline"] == 20  # the fixed load
    assert all(s["estimated_s"] > s["left_s"] for s in skipped)  # skipped: it would not fit
    assert not list(tmp_path.glob("*.tmp"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _result(boxes, scores, labels, masks=None) -> dict:
    import numpy as np

    n = len(scores)
    m = np.zeros((n, 28, 28), np.float32) if masks is None else masks
    if masks is None:
        m[:, 7:21, 7:21] = 0.9
    return {
        "boxes": np.array(boxes, np.float32).reshape(n, 4),
        "scores": np.array(scores, np.float32),
        "labels": np.array(labels, np.int64),
        "masks": m,
    }


def test_parity_counts_instances_clearly_inside_and_matches_them_within_the_limits():
    from streamseg.tools.bench.parity import compare

    box = [10.0, 10.0, 100.0, 100.0]
    ref = [_result([box, [200, 200, 300, 300]], [0.9, 0.51], [1, 2])]  # 0.51: on the cut
    same = [_result([[10.5, 9.6, 100.9, 100.0]], [0.88], [1])]  # within 1 px; the other gone
    p = compare(ref, same, score_threshold=0.5, limit=100)
    assert (p.counted, p.matched, p.extra, p.ok) == (1, 1, 0, True)
    assert p.max_box_px == pytest.approx(0.9, abs=1e-5)
    moved = [_result([[12.0, 10.0, 100.0, 100.0]], [0.9], [1])]  # 2 px
    assert not compare(ref, moved, score_threshold=0.5, limit=100).ok
    relabelled = [_result([box], [0.9], [3])]
    p = compare(ref, relabelled, score_threshold=0.5, limit=100)
    assert (p.matched, p.extra) == (0, 1)
    holed = _result([box], [0.9], [1])
    holed["masks"][0, 7:21, 7:14] = 0.1  # half the mask gone: IoU 0.5
    assert not compare(ref, [holed], score_threshold=0.5, limit=100).ok
    # a frame cut at `limit` instances: its lowest kept score is a cut too
    full = [_result([box, box], [0.9, 0.3], [1, 1])]
    assert compare(full, [_result([box], [0.9], [1])], score_threshold=0.0, limit=2).ok
    empty = [_result([], [], [])]
    assert compare(empty, empty, score_threshold=0.5, limit=100).ok
