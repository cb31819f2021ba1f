"""Tests for streamseg.tools.bench: the figures' arithmetic and report, the fixtures, the micro
figures with an injected clock, argument errors, and one real tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseg.config import load_config
from streamseg.postprocess.results import make_result
from streamseg.tools import bench
from streamseg.tools.bench import figures, fixtures, machine, micro, scenarios

NAN = float("nan")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamseg")
    bench.register(parser.add_subparsers(dest="command"))
    return parser


def _steps(*deltas: float) -> Callable[[], float]:
    """A clock whose successive readings are 0, then each delta added in turn."""
    readings: Iterator[float] = iter(np.cumsum((0.0, *deltas)).tolist())
    return lambda: next(readings)


# -- figures --------------------------------------------------------------------------------------


def test_ratio():
    assert figures.ratio(3.0, 2.0) == 1.5
    assert figures.ratio(0.0, 4.0) == 0.0
    for b in (0.0, -2.0, NAN):
        assert math.isnan(figures.ratio(1.0, b)), b


def test_combine_latency():
    assert figures.combine_latency([(10.0, 50.0)]) == (10.0, 50.0)
    # median of the p50s, worst p99 (not the p99 of the stream with the median p50)
    assert figures.combine_latency([(10.0, 50.0), (30.0, 40.0), (20.0, 90.0)]) == (20.0, 90.0)
    assert figures.combine_latency([(10.0, 50.0), (30.0, 40.0)]) == (20.0, 50.0)  # even: mean
    assert figures.combine_latency([(NAN, NAN), (5.0, 7.0), (NAN, NAN)]) == (5.0, 7.0)
    for per_stream in ([], [(NAN, NAN)], [(5.0, NAN)]):
        assert all(math.isnan(v) for v in figures.combine_latency(per_stream)), per_stream


def test_json_safe():
    value = {"a": NAN, "b": [1.0, float("inf")], "c": (2, -float("inf")), "d": {"e": "x", "f": 0}}
    safe = figures.json_safe(value)
    assert safe == {"a": None, "b": [1.0, None], "c": [2, None], "d": {"e": "x", "f": 0}}
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
    assert figures.json_safe({}) == {} and figures.json_safe(3.5) == 3.5


def _result(**changes: Any) -> dict[str, Any]:
    """A bench() result with hand-picked figures."""
    r = {
        "config": "shapes",
        "arch": "shapes_mobilenet_v3_fpn",
        "streams": 2,
        "size": "640x480",
        "frames": 450,
        "device": "cuda:0",
        "batch": 4,
        "device_name": "NVIDIA H200",
        "cpu": "Xeon (16 cores)",
        "torch": "2.5.0",
        "torchvision": "0.20.0",
        "date": "2025-01-02T03:04:05+00:00",
        "load_avg_1m": 0.5,
        "load": "load: random weights, 20 instances/frame, score threshold 0",
        "instances_per_frame": {"model_only": 20.0, "naive": 20.0, "pipeline": 19.96},
        "model_only_fps": 120.0,
        "model_only_s": 7.5,
        "naive_fps": 30.0,
        "naive_wall_s": 30.04,
        "pipeline_fps": 108.0,
        "pipeline_wall_s": 8.33,
        "pipeline_vs_model_only": 0.9,
        "pipeline_vs_naive": 3.6,
        "latency_p50_ms": 85.4,
        "latency_p99_ms": 210.6,
        "busy_s": {"postprocess": 4.31, "inference": 6.0},
        "instances": 20,
        "paste_rle_ms_1080p": 3.14,
        "zmq_1080p_fps": 1234.4,
    }
    return {**r, **changes}


def test_format_report():
    assert figures.format_report(_result()).splitlines() == [
        "streamseg bench: shapes (shapes_mobilenet_v3_fpn), 2 x 640x480 x 450 frames, "
        "device cuda:0, batch 4",
        "machine: NVIDIA H200, Xeon (16 cores); torch 2.5.0, torchvision 0.20.0; "
        "2025-01-02T03:04:05+00:00; load avg 0.5",
        "load: random weights, 20 instances/frame, score threshold 0 "
        "(measured: 20.0 instances/frame)",
        "",
        "                  fps   seconds  what",
        "model-only     120.00       7.5  bare model(list), frames on device",
        "naive loop      30.00      30.0  1 process, frame by frame, start-up in",
        "pipeline       108.00       8.3  stage processes, start-up in",
        "",
        "pipeline / model-only 0.90, pipeline / naive 3.60",
        "latency capture -> results: p50 85 ms, p99 211 ms",
        "busy: inference 6.0 s, postprocess 4.3 s",
        "micro (CPU): paste+RLE of 20 instances at 1920x1080 3.1 ms; "
        "ZeroMQ ipc 1080p RGB 1234 frames/s",
    ]


def test_stage_breakdown_accounts_for_every_second():
    extra = {
        "inference": {"startup_s": 4.0, "wait_in_s": 1.5, "wait_out_s": 0.25, "ready": True},
        "postprocess": {"startup_s": 2.5, "wait_in_s": 6.0, "wait_out_s": 0.0},
        "old": {"batches": 3},  # no start-up figure: not a row
    }
    busy = {"inference": 12.0, "postprocess": 5.0, "source": 3.0}
    sources = {
        "a": {"startup_s": 0.5, "busy_s": 1.0, "wait_out_s": 10.0},
        "b": {"startup_s": 0.7, "busy_s": 2.0, "wait_out_s": 12.0},
    }
    got = figures.stage_breakdown(extra, busy, sources, 20.0)
    assert got == {
        "inference": {
            "startup_s": 4.0, "busy_s": 12.0, "wait_in_s": 1.5, "wait_out_s": 0.25, "other_s": 2.25
        },
        "postprocess": {
            "startup_s": 2.5, "busy_s": 5.0, "wait_in_s": 6.0, "wait_out_s": 0.0, "other_s": 6.5
        },
        "source": {
            "startup_s": 0.6, "busy_s": 1.5, "wait_in_s": 0.0, "wait_out_s": 11.0, "other_s": 6.9
        },
    }  # fmt: skip
    # more accounted than the wall time (clock rounding): "other" is 0, never negative
    over = figures.stage_breakdown({"x": {"startup_s": 3.0}}, {"x": 8.0}, {}, 10.0)
    assert over["x"]["other_s"] == 0.0
    assert figures.format_breakdown(got)[:2] == [
        "stage           start-up    busy  wait in  wait out   other",
        "inference            4.0    12.0      1.5       0.2     2.2",
    ]
    assert figures.format_breakdown({}) == []


def test_format_report_cpu_device_and_no_busy_time():
    lines = figures.format_report(
        _result(device_name="Xeon (16 cores)", busy_s={}, load_avg_1m=None)
    ).splitlines()
    assert lines[1] == (
        "machine: Xeon (16 cores); torch 2.5.0, torchvision 0.20.0; "
        "2025-01-02T03:04:05+00:00; load avg None"
    )
    assert lines[11] == "busy: n/a"


# -- fixtures -------------------------------------------------------------------------------------


def test_prepare_config_fixed_load(random_config):
    cfg, load, fixed = fixtures.prepare_config(
        str(random_config), device="cpu", batch=3, random_weights=False, instances=7
    )
    assert fixed and load == "load: random weights, 7 instances/frame, score threshold 0"
    assert (cfg.score_threshold, cfg.detections_per_img, cfg.max_batch) == (0.0, 7, 3)
    original = load_config(random_config)
    for name in ("arch", "weights", "labels", "min_size", "max_size", "mask_threshold"):
        assert getattr(cfg, name) == getattr(original, name)


def test_prepare_config_random_weights_default_k(tmp_path):
    path = tmp_path / "ckpt.toml"
    path.write_text(
        '[model]\narch = "shapes_mobilenet_v3_fpn"\nweights = "weights/x.pt"\n'
        'labels = ["bg", "a"]\nscore_threshold = 0.4\n'
    )
    cfg, load, fixed = fixtures.prepare_config(
        str(path), device=None, batch=None, random_weights=True, instances=None
    )
    k = fixtures.DEFAULT_INSTANCES
    assert fixed and load == f"load: random weights, {k} instances/frame, score threshold 0"
    assert (cfg.weights, cfg.score_threshold, cfg.detections_per_img) == ("random", 0.0, k)


def test_prepare_config_keeps_real_detections(tmp_path):
    path = tmp_path / "ckpt.toml"
    path.write_text(
        '[model]\narch = "shapes_mobilenet_v3_fpn"\nweights = "weights/x.pt"\n'
        'labels = ["bg", "a"]\nscore_threshold = 0.4\ndetections_per_img = 9\n'
    )
    cfg, load, fixed = fixtures.prepare_config(
        str(path), device=None, batch=None, random_weights=False, instances=None
    )
    weights = str((tmp_path / "weights" / "x.pt").resolve())
    assert not fixed
    assert load == f"load: weights {weights}, real detections, score threshold 0.4"
    assert (cfg.weights, cfg.score_threshold, cfg.detections_per_img) == (weights, 0.4, 9)


@pytest.mark.parametrize("n", [0, 1, 20])
def test_synthetic_detections(n):
    det = fixtures.synthetic_detections(n, (320, 240), seed=1)
    assert (det.width, det.height) == (320, 240)
    assert det.boxes.shape == (n, 4) and det.boxes.dtype == np.float32
    assert det.masks.shape == (n, 28, 28) and det.masks.dtype == np.float32
    assert det.scores.shape == (n,) and det.labels.shape == (n,) and det.labels.dtype == np.int64
    x1, y1, x2, y2 = det.boxes.T
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 320).all() and (y2 <= 240).all()
    assert (x2 - x1 >= 40 - 1e-3).all() and (x2 - x1 <= 320).all()  # 40..min(400, width)
    assert (y2 - y1 >= 40 - 1e-3).all() and (y2 - y1 <= 240).all()
    assert (np.diff(det.scores) <= 0).all() and ((det.scores >= 0.05) & (det.scores < 1)).all()
    assert set(det.labels.tolist()) <= {1, 2, 3}
    assert ((det.masks > 0) & (det.masks < 1)).all()
    if n:  # blobs: inside at the centre, outside in the corners
        assert (det.masks[:, 14, 14] > 0.9).all() and (det.masks[:, 0, 0] < 0.1).all()
    again = fixtures.synthetic_detections(n, (320, 240), seed=1)
    assert np.array_equal(again.boxes, det.boxes) and np.array_equal(again.masks, det.masks)
    result, local = make_result(det, mask_threshold=0.5, label_names=["bg", "a", "b", "c"])
    assert len(result.instances) == n
    assert (local.areas() > 0).all()  # every blob survives the paste


def test_count_instances(tmp_path):
    a, b, empty = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "empty.jsonl"
    a.write_text('{"instances": [{}, {}]}\n{"instances": []}\n')
    b.write_text('{"instances": [{}, {}, {}]}\n')
    empty.write_text("")
    assert fixtures.count_instances([a, b, empty]) == (3, 5)
    assert fixtures.count_instances([empty]) == (0, 0)
    assert fixtures.count_instances([]) == (0, 0)


def test_decode_clip(clip):
    video, _ = clip  # 320x240, 10 frames
    frames = fixtures.decode_clip(video, 4)
    assert len(frames) == 4
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    assert len(fixtures.decode_clip(video, 100)) == 10


# -- machine --------------------------------------------------------------------------------------


def test_machine_info_cpu():
    info = machine.machine_info(torch.device("cpu"))
    assert set(info) == {"device_name", "cpu", "torch", "torchvision", "date", "load_avg_1m"}
    assert info["device_name"] == info["cpu"] == machine.cpu_name()
    assert info["cpu"].endswith(" cores)")
    assert info["torch"] == torch.__version__
    assert info["date"][:4].isdigit() and info["date"][10] == "T"
    assert info["load_avg_1m"] is None or info["load_avg_1m"] >= 0


# -- micro ----------------------------------------------------------------------------------------


def test_paste_rle_ms_is_the_median_in_ms():
    threads = torch.get_num_threads()
    # clock readings in pairs around each timed call: 9 ms, 1 ms, 2 ms -> median 2 (mean 4)
    ms = micro.paste_rle_ms(3, size=(320, 240), repeats=3, clock=_steps(0.009, 1, 0.001, 1, 0.002))
    assert ms == pytest.approx(2.0)
    assert torch.get_num_threads() == threads  # restored


def test_zmq_fps_is_frames_over_the_timed_span():
    # every frame must arrive intact (BenchError otherwise); 5 frames in 0.25 s -> 20 fps
    assert micro.zmq_fps(size=(320, 240), frames=5, clock=_steps(0.25)) == pytest.approx(20.0)


# -- the command ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--size", "640"),
        ("--size", "axb"),
        ("--size", "641x480"),
        ("--size", "0x0"),
        ("--frames", "0"),
        ("--streams", "0"),
        ("--batch", "0"),
        ("--instances", "0"),
    ],
)
def test_bench_rejects_bad_arguments(random_config, capsys, option, value):
    args = _parser().parse_args(["bench", "--config", str(random_config), option, value])
    assert args.func(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("streamseg bench: error: ")
    assert option in err and "Traceback" not in err


def test_naive_entry_point_usage():
    proc = subprocess.run(
        [sys.executable, "-m", "streamseg.tools.bench"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "usage: python -m streamseg.tools.bench naive JSON_KWARGS"


def _written(out_dir: Path) -> dict[str, Any]:
    """What a scenario left in `out_dir`: per results file, each line's (frame, instances);
    per video, its frames' shapes."""
    results = {}
    for path in sorted(out_dir.glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        results[path.name] = [(r["frame"], r["instances"]) for r in records]
    videos = {
        path.name: [f.shape for f in fixtures.decode_clip(path, 10_000)]
        for path in sorted(out_dir.glob("*.mp4"))
    }
    return {"results": results, "videos": videos}


def _spy(
    real: Callable[..., dict[str, Any]], name: str, seen: dict[str, Any]
) -> Callable[..., dict[str, Any]]:
    """`real` (a scenario writing into its `out_dir`), recording into `seen[name]` its figures
    and what it wrote, read before bench() removes its temporary folder."""

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        out = real(*args, **kwargs)
        out_dir = kwargs["out_dir"] if "out_dir" in kwargs else args[2]
        seen[name] = (out, _written(Path(out_dir)))
        return out

    return spy


@pytest.fixture
def spied(monkeypatch) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The naive loop's and the pipeline's (figures, outputs) by function name."""
    seen: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for name in ("run_naive", "run_pipeline"):
        monkeypatch.setattr(scenarios, name, _spy(getattr(scenarios, name), name, seen))
    return seen


@pytest.mark.slow
def test_bench_end_to_end_json(random_config, capsys, spied):
    """A real tiny run (clip, model-only, naive loop process, pipeline processes): the outputs
    of the naive loop and the pipeline agree with the clip and each other, and every printed
    figure is the arithmetic of the measured ones. No timing thresholds."""
    argv = [
        "bench", "--config", str(random_config), "--size", "160x120", "--frames", "8",
        "--device", "cpu", "--instances", "3", "--json",
    ]  # fmt: skip
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    *report, last = out.strip().splitlines()
    r = json.loads(last)
    assert set(figures.JSON_KEYS) <= set(r)
    assert "\n".join(report) == figures.format_report(r)  # the table shows the JSON's figures
    assert "bench: model-only: 8 frames, batch 2" in err

    # both wrote one results line and one video frame per clip frame, K instances on every line
    labels = load_config(random_config).labels
    naive, naive_out = spied["run_naive"]
    pipe, pipe_out = spied["run_pipeline"]
    assert (naive["frames"], naive["instances"], pipe["frames"]) == (8, 8 * 3, 8)
    assert naive_out["videos"] == {"naive0.mp4": [(120, 160, 3)] * 8}
    assert pipe_out["videos"] == {"pipeline.mp4": [(120, 160, 3)] * 8}
    for lines in (naive_out["results"]["naive0.jsonl"], pipe_out["results"]["pipeline.jsonl"]):
        assert [frame for frame, _ in lines] == list(range(8))
        assert [len(instances) for _, instances in lines] == [3] * 8
        for _, instances in lines:
            for inst in instances:
                assert inst["rle"]["size"] == [120, 160]
                assert inst["label_name"] == labels[inst["label"]]
    assert r["instances_per_frame"] == {"model_only": 3.0, "naive": 3.0, "pipeline": 3.0}

    # fps = frames / seconds, ratios of those fps
    assert r["naive_fps"] == pytest.approx(8 / r["naive_wall_s"]) == pytest.approx(naive["fps"])
    assert r["pipeline_fps"] == pytest.approx(8 / r["pipeline_wall_s"])
    assert r["model_only_fps"] == pytest.approx(8 / r["model_only_s"])
    assert r["pipeline_vs_model_only"] == pytest.approx(r["pipeline_fps"] / r["model_only_fps"])
    assert r["pipeline_vs_naive"] == pytest.approx(r["pipeline_fps"] / r["naive_fps"])
    assert 0 < r["naive_load_s"] < r["naive_wall_s"]

    # every stage process is in the breakdown, and its phases fit in the run's wall time
    # inference is the dispatcher when workers = "auto" gives several: each worker is a row too
    workers = {k for k in r["stages"] if k.startswith("inference[")}
    assert set(r["stages"]) - workers == {"inference", "postprocess", "source"}
    # (other_s is defined as the rest of the wall time: what is checked is that the measured
    # phases fit in it, so that the five add up to it, each rounded to 1 ms)
    wall = r["pipeline_wall_s"]
    for stage, t in r["stages"].items():
        assert t["startup_s"] > 0, stage
        assert min(t.values()) >= 0, stage
        own = t["startup_s"] + t["wait_in_s"] + t["wait_out_s"]
        if stage == "inference" and workers:
            # the dispatcher's busy_s is its workers' model time added up, and they run side by
            # side: that may pass the wall time; its own phases fit
            assert own <= wall + 0.005, (stage, t, wall)
        else:
            assert own + t["busy_s"] <= wall + 0.005, (stage, t, wall)
            assert sum(t.values()) == pytest.approx(wall, abs=0.005), (stage, t, wall)
    assert r["stages"]["inference"]["busy_s"] == pytest.approx(r["busy_s"]["inference"], abs=1e-3)
    if workers:  # the stage's model time is its workers'
        total = sum(r["stages"][w]["busy_s"] for w in workers)
        assert total == pytest.approx(r["busy_s"]["inference"], abs=0.01)
    assert r["threads"]["requested"] == "auto" or isinstance(r["threads"]["requested"], int)
    # latencies and busy times happen inside the pipeline's wall time
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["pipeline_wall_s"] * 1000
    assert {"inference", "postprocess"} <= set(r["busy_s"])
    assert all(0 <= v <= r["pipeline_wall_s"] for v in r["busy_s"].values())
    assert r["paste_rle_ms_1080p"] > 0 and r["zmq_1080p_fps"] > 0

    assert (r["batch"], r["device"], r["size"]) == (2, "cpu", "160x120")
    assert (r["streams"], r["frames"], r["instances"], r["config"]) == (1, 8, 3, str(random_config))
    assert (r["fixed_load"], r["weights"], r["score_threshold"]) == (True, "random", 0.0)
    assert r["load"] == "load: random weights, 3 instances/frame, score threshold 0"
    assert r["device_name"] == r["cpu"] == machine.cpu_name()
