"""End to end: `streamseg annotate` as a user runs it, on real encoded video, with real stage
processes and ZeroMQ sockets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from harness import Run

import streamseg
from streamseg.tools import synth

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # each annotate may take 300 s


def annotate(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "streamseg.cli", "annotate", "-q", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_annotate_writes_results_and_video(clip, random_config, tmp_path):
    video, _ = clip
    out, results = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    report = tmp_path / "report.json"
    proc = annotate(
        video, "-o", out, "--results", results, "--config", random_config, "--report", report
    )
    assert proc.returncode == 0, proc.stderr
    assert "done: 10/10 frames with results" in proc.stderr

    records = read_results(results)
    assert [r["frame"] for r in records] == list(range(10))
    assert all(r["stream"] == "shapes" and (r["width"], r["height"]) == (320, 240) for r in records)
    pts = [r["pts"] for r in records]
    assert pts == sorted(pts) and pts[1] == pytest.approx(1 / 25)
    n_instances = 0
    for r in records:
        for inst in r["instances"]:
            n_instances += 1
            assert set(inst) >= {"label", "label_name", "score", "box", "rle"}
            assert inst["label_name"] in synth.CLASSES
            mask = mask_utils.decode(inst["rle"])
            assert mask.shape == (240, 320)
    # score threshold 0, detections_per_img 5: every instance is in the results, or counted
    # as a fragment that postprocess joined to another (the random model's masks overlap)
    counts = json.loads(report.read_text())["postprocess"]["shapes"]
    merged = counts.get("fragments_joined", 0) + counts.get("duplicates", 0)
    assert n_instances + merged == 10 * 5 and n_instances >= 10

    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        frames = list(c.decode(vs))
        assert (vs.codec_context.width, vs.codec_context.height) == (320, 240)
        assert vs.average_rate == 25
    assert len(frames) == 10


def test_results_match_torchvision_reference(clip, shapes_config, tmp_path):
    """Parity: the pipeline's instances equal torchvision's own model(images) output (with
    the shipped config's duplicate rules and low-score tracking off: they choose instances
    after the model)."""
    video, _ = clip
    text, n = re.subn(
        r"(?m)^(mask_nms|mask_nms_cross_label|track_score_threshold) = .*$",
        r"\1 = 0.0",
        shapes_config.read_text(),
    )
    assert n == 3
    config = tmp_path / "shapes.toml"
    config.write_text(text)
    results = tmp_path / "out.jsonl"
    proc = annotate(video, "--results", results, "--config", config, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    records = read_results(results)

    model = streamseg.load_model(str(config), device="cpu")
    frames = decode_frames(video)
    assert len(frames) == len(records) == 10
    total = 0
    with torch.inference_mode():
        for image, record in zip(frames, records, strict=True):
            x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            ref = model([x])[0]
            got = record["instances"]
            assert len(got) == len(ref["boxes"])
            for inst, box, label, mask in zip(
                got, ref["boxes"], ref["labels"], ref["masks"], strict=True
            ):
                total += 1
                assert inst["label"] == int(label)
                np.testing.assert_allclose(inst["box"], box.numpy(), atol=1.0)
                ours = mask_utils.decode(inst["rle"]).astype(bool)
                theirs = (mask[0] > 0.5).numpy()
                union = np.logical_or(ours, theirs).sum()
                iou = np.logical_and(ours, theirs).sum() / union if union else 1.0
                assert iou >= 0.98
    assert total >= 10, "the shipped model should find the shapes in this clip"


def test_missing_file_is_one_clear_line(tmp_path):
    proc = annotate(tmp_path / "nope.mp4", "--results", tmp_path / "r.jsonl", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"streamseg: error: no such file: {tmp_path / 'nope.mp4'}"


def test_non_video_file_is_one_clear_line(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n")
    proc = annotate(bogus, "--results", tmp_path / "r.jsonl", timeout=60)
    assert proc.returncode == 2
    assert "not a video file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_truncated_file_gives_partial_results_warning_and_error_code(random_config, tmp_path):
    # moov atom in front (faststart) so a cut-off file still opens, like a broken download
    video = tmp_path / "cut.mp4"
    with av.open(str(video), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(40):
            img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode(None))
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    results = tmp_path / "r.jsonl"
    proc = annotate(video, "--results", results, "--config", random_config)
    assert proc.returncode == 3, proc.stderr
    assert "truncated" in proc.stderr or "decoding stopped" in proc.stderr
    records = read_results(results)
    assert 0 < len(records) < 40
    assert [r["frame"] for r in records] == list(range(len(records)))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _lines(path: Path) -> int:
    """Whole lines written to `path` so far."""
    return path.read_text().count("\n") if path.exists() else 0


def test_ctrl_c_stops_every_stage(random_config, tmp_path):
    video = tmp_path / "long.mp4"
    synth.write_clip(video, tmp_path / "long.json", seed=1, frames=300, size=(320, 240))
    results = tmp_path / "o.jsonl"
    args = ["-o", tmp_path / "o.mp4", "--results", results, "--config", random_config]
    with Run(tmp_path, "annotate", "-q", video, *args) as run:  # (killed, stages too, on failure)
        # precondition: frames flow through every stage, so Ctrl-C is tested mid-run
        run.wait_for(lambda: _lines(results) >= 30, 120, "30 results (frames flowing)")
        stages = _children(run.proc.pid)
        # postprocess, source, inference (with workers = "auto" on 2+ cores: a dispatcher and
        # workers)
        assert len(stages) >= 3
        assert run.interrupt(timeout=30) == 130  # SIGINT to the session: what Ctrl-C does
    for pid in stages:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # the video written so far is a valid, playable file
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) > 0
