"""`streamseg demo` end to end, as the README's main command runs it (shortened clip)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the demo may take 300 s


def test_demo_runs_offline_and_reports_fps_and_mask_ap(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "streamseg.cli", "demo", "-q", "--out", str(out)]
    cmd += ["--frames", "40", "--size", "320x240", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"output folder {out}" in proc.stdout
    assert re.search(r"frames: 40 .*fps", proc.stdout)
    row = proc.stdout.splitlines()[proc.stdout.splitlines().index(
        next(line for line in proc.stdout.splitlines() if line.strip().startswith("mask AP"))
    ) + 1]  # fmt: skip
    ap, ap50 = (float(v) for v in row.split()[:2])
    assert ap50 >= 0.8 and ap >= 0.6, proc.stdout  # the shipped model, on a clip it never saw
    for name in ("clip.mp4", "clip_gt.json", "annotated.mp4", "results.jsonl"):
        assert (out / name).stat().st_size > 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 40
