"""Tests for streamseg.tools.bench: the pure helpers, the micro figures, and one real tiny run."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from streamseg.config import load_config
from streamseg.postprocess.main import make_result
from streamseg.tools import bench


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamseg")
    bench.register(parser.add_subparsers(dest="command"))
    return parser


def test_parse_size():
    assert bench.parse_size("640x480") == (640, 480)
    assert bench.parse_size("1920X1080") == (1920, 1080)
    for bad in ("640", "axb", "641x480", "0x0"):
        with pytest.raises(ValueError, match="--size"):
            bench.parse_size(bad)


def test_combine_latency():
    assert bench.combine_latency([(10.0, 50.0)]) == (10.0, 50.0)
    assert bench.combine_latency([(10.0, 50.0), (30.0, 40.0), (20.0, 90.0)]) == (20.0, 90.0)
    nan = float("nan")
    assert bench.combine_latency([(nan, nan), (5.0, 7.0)]) == (5.0, 7.0)
    assert all(math.isnan(v) for v in bench.combine_latency([]))
    assert all(math.isnan(v) for v in bench.combine_latency([(nan, nan)]))


def test_ratio_and_json_safe():
    assert bench.ratio(3.0, 2.0) == 1.5
    assert math.isnan(bench.ratio(1.0, 0.0))
    assert bench._json_safe({"a": float("nan"), "b": [1.0, float("inf")]}) == {
        "a": None,
        "b": [1.0, None],
    }


def test_prepare_config_fixed_load(random_config):
    cfg, load, fixed = bench.prepare_config(
        str(random_config), device="cpu", batch=3, random_weights=False, instances=7
    )
    assert fixed and "7 instances/frame" in load and "score threshold 0" in load
    assert (cfg.score_threshold, cfg.detections_per_img, cfg.max_batch) == (0.0, 7, 3)
    original = load_config(random_config)
    for name in ("arch", "weights", "labels", "min_size", "max_size", "mask_threshold"):
        assert getattr(cfg, name) == getattr(original, name)


def test_prepare_config_keeps_real_detections(tmp_path):
    path = tmp_path / "ckpt.toml"
    path.write_text(
        '[model]\narch = "shapes_mobilenet_v3_fpn"\nweights = "weights/x.pt"\n'
        'labels = ["bg", "a"]\nscore_threshold = 0.4\n'
    )
    cfg, load, fixed = bench.prepare_config(
        str(path), device=None, batch=None, random_weights=False, instances=None
    )
    assert not fixed and "real detections" in load and cfg.score_threshold == 0.4
    assert cfg.weights == str((tmp_path / "weights" / "x.pt").resolve())


@pytest.mark.parametrize("n", [0, 1, 20])
def test_synthetic_detections_paste_and_rle(n):
    det = bench.synthetic_detections(n, (320, 240), seed=1)
    assert det.boxes.shape == (n, 4) and det.masks.shape == (n, 28, 28)
    assert (det.boxes[:, 2] <= 320).all() and (det.boxes[:, 3] <= 240).all()
    result, local = make_result(det, mask_threshold=0.5, label_names=["bg", "a", "b", "c"])
    assert len(result.instances) == n
    if n:
        assert (local.areas() > 0).all()  # blobs, not empty masks


def test_micro_figures_are_positive():
    assert bench.paste_rle_ms(3, size=(320, 240), repeats=2) > 0
    assert bench.zmq_fps(size=(320, 240), frames=5) > 0


def test_bench_rejects_bad_arguments(random_config, capsys):
    args = _parser().parse_args(["bench", "--config", str(random_config), "--size", "641x480"])
    assert args.func(args) == 2
    assert "--size" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_end_to_end_json(random_config, capsys):
    """A real tiny run (clip, model-only, naive loop process, pipeline processes): every key of
    the JSON last line is there with a sane value. No timing thresholds."""
    argv = [
        "bench", "--config", str(random_config), "--size", "160x120", "--frames", "8",
        "--device", "cpu", "--instances", "3", "--json",
    ]  # fmt: skip
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert set(bench.JSON_KEYS) <= set(r)
    for key in ("model_only_fps", "naive_fps", "pipeline_fps", "paste_rle_ms_1080p"):
        assert r[key] > 0, key
    assert r["zmq_1080p_fps"] > 0
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
    assert r["pipeline_vs_model_only"] == pytest.approx(r["pipeline_fps"] / r["model_only_fps"])
    assert r["pipeline_vs_naive"] == pytest.approx(r["pipeline_fps"] / r["naive_fps"])
    assert (r["batch"], r["device"], r["size"]) == (2, "cpu", "160x120")
    assert (r["streams"], r["frames"], r["instances"], r["config"]) == (1, 8, 3, str(random_config))
    # random weights, score threshold 0: every frame carries exactly K instances, in all three
    assert r["instances_per_frame"] == {"model_only": 3.0, "naive": 3.0, "pipeline": 3.0}
    assert set(r["busy_s"]) >= {"inference", "postprocess"}
    assert all(v >= 0 for v in r["busy_s"].values())
    assert "random weights, 3 instances/frame, score threshold 0" in "\n".join(out[:-1])
