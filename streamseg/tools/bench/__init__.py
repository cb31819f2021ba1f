"""`streamseg bench`: the model's ceiling, a hand-written loop and the pipeline, from one run.

Three end-to-end figures on the same synthetic clip (streamseg.tools.synth), side by side
(`scenarios`):

  model-only  the bare torchvision model, `model(list_of_tensors)` (its own mask paste included),
              on frames decoded and uploaded beforehand; only the model is timed, after warm-up.
  naive loop  one process, frame by frame: decode (PyAV) -> model -> threshold -> COCO RLE of the
              full masks (pycocotools) -> overlay -> H.264 encode + results lines; the wall time of
              the whole process, interpreter start and model load included.
  pipeline    `streamseg.pipeline.supervisor.run` with the annotate pipeline writing the same
              outputs; the wall time of the run, stage start-up included.

plus two CPU micro figures (`micro`): paste + RLE of K instances on a 1080p frame (postprocess's
core) and raw 1080p RGB frames through one ZeroMQ PUSH/PULL hop over ipc://. The inputs are in
`fixtures`, the machine description in `machine`, the arithmetic and the report in `figures`.
This module runs them in order (`bench`) and is the command line (`register`, `cmd_bench`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from streamseg import threads
from streamseg.config import ConfigError, WeightsError, parse_size
from streamseg.tools.bench import machine, micro, scenarios
from streamseg.tools.bench.figures import BenchError, format_report, json_safe, ratio
from streamseg.tools.bench.fixtures import DEFAULT_INSTANCES, prepare_config

DEFAULT_CONFIG = "shapes"
DEFAULT_PIPELINE = "annotate"


def _note(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _check_args(args: argparse.Namespace) -> tuple[int, int]:
    """The clip's (width, height) from --size; BenchError naming the option for a bad value."""
    try:
        width, height = parse_size(args.size)
    except ValueError as e:
        raise BenchError(f"--size: {e}") from None
    if width % 2 or height % 2:
        raise BenchError(
            f"--size must be even numbers (the clip is H.264 yuv420p), got {args.size!r}"
        )
    if args.frames < 1 or args.streams < 1:
        raise BenchError("--frames and --streams must be >= 1")
    if args.batch is not None and args.batch < 1:
        raise BenchError("--batch must be >= 1")
    if args.instances is not None and args.instances < 1:
        raise BenchError("--instances must be >= 1")
    return width, height


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every part of the benchmark; the figures as one flat dict (see figures.JSON_KEYS)."""
    size = _check_args(args)
    from streamseg.inference.model import resolve_device  # torch: only once the args are good
    from streamseg.tools import synth

    k = args.instances if args.instances is not None else DEFAULT_INSTANCES
    with tempfile.TemporaryDirectory(prefix="streamseg-bench-") as tmp:
        tmpdir = Path(tmp)
        cfg, load, fixed = prepare_config(
            args.config,
            device=args.device,
            batch=args.batch,
            random_weights=args.random_weights,
            instances=args.instances,
        )
        device = resolve_device(cfg.device)
        host = machine.machine_info(device)
        _note(f"{host['device_name']}; {load}")

        _note(f"micro: paste+RLE of {k} instances at 1920x1080, ZeroMQ 1080p hop")
        paste_ms = micro.paste_rle_ms(k)
        zmq = micro.zmq_fps()

        clip = tmpdir / "clip.mp4"
        _note(f"writing a {args.frames}-frame {size[0]}x{size[1]} clip")
        synth.write_clip(clip, tmpdir / "clip.json", seed=0, frames=args.frames, size=size)
        total = args.streams * args.frames

        _note(f"model-only: {total} frames, batch {cfg.max_batch}")
        mo = scenarios.model_only(cfg, clip, total=total, batch=cfg.max_batch)

        _note(f"naive loop: {args.streams} clip(s) one after another")
        naive_dir = tmpdir / "naive"
        naive_dir.mkdir()
        nv = scenarios.run_naive(cfg, [str(clip)] * args.streams, naive_dir)

        _note(f"pipeline: {args.streams} stream(s) at once")
        pipe_dir = tmpdir / "pipeline"
        pipe_dir.mkdir()
        pl = scenarios.run_pipeline(
            cfg, clip, streams=args.streams, out_dir=pipe_dir, pipeline_path=args.pipeline
        )
    if pl["frames"] != total or nv["frames"] != total:
        raise BenchError(
            f"frame counts differ: {total} expected, naive loop {nv['frames']}, "
            f"pipeline {pl['frames']}"
        )
    return {
        "model_only_fps": mo["fps"],
        "naive_fps": nv["fps"],
        "pipeline_fps": pl["fps"],
        "pipeline_vs_model_only": ratio(pl["fps"], mo["fps"]),
        "pipeline_vs_naive": ratio(pl["fps"], nv["fps"]),
        "latency_p50_ms": pl["latency_p50_ms"],
        "latency_p99_ms": pl["latency_p99_ms"],
        "busy_s": pl["busy_s"],
        "stages": pl["stages"],
        "threads": {
            **dataclasses.asdict(
                threads.plan(cfg.threads, cores=threads.usable_cores(), cuda=device.type == "cuda")
            ),
            "requested": cfg.threads,
        },
        "model_only_s": mo["seconds"],
        "naive_wall_s": nv["wall_s"],
        "naive_load_s": nv["load_s"],
        "pipeline_wall_s": pl["wall_s"],
        "instances_per_frame": {
            "model_only": mo["instances_per_frame"],
            "naive": nv["instances"] / max(1, nv["frames"]),
            "pipeline": pl["instances_per_frame"],
        },
        "paste_rle_ms_1080p": paste_ms,
        "zmq_1080p_fps": zmq,
        "batch": cfg.max_batch,
        "device": mo["device"],
        "size": f"{size[0]}x{size[1]}",
        "streams": args.streams,
        "frames": args.frames,
        "instances": k,
        "fixed_load": fixed,
        "load": load,
        "config": str(args.config),
        "arch": cfg.arch,
        "weights": cfg.weights,
        "score_threshold": cfg.score_threshold,
        **host,
    }


def cmd_bench(args: argparse.Namespace) -> int:
    """`streamseg bench`: the report on stdout (and --json's line); 2 with one error line."""
    try:
        result = bench(args)
    except (BenchError, ConfigError) as e:
        print(f"streamseg bench: error: {e}", file=sys.stderr)
        return 2
    except WeightsError as e:
        hint = "; or benchmark with --random-weights" if "COCO weights" in str(e) else ""
        print(f"streamseg bench: error: {e}{hint}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        print(json.dumps(json_safe(result), allow_nan=False, separators=(",", ":")))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `bench` command to the `streamseg` command line."""
    p = sub.add_parser(
        "bench",
        help="measure model-only, naive-loop and pipeline throughput side by side",
        description="Benchmark one model config on a synthetic clip, from one run: the bare "
        "model's throughput on pre-decoded, pre-uploaded batches (the ceiling); a naive "
        "single-process loop (decode, model, paste, RLE, overlay, encode, frame by frame); "
        "and the streamseg pipeline writing the same annotated video and results; plus "
        "latency p50/p99, per-stage busy time, and two CPU micro figures (paste+RLE of K "
        "instances at 1080p, raw 1080p frames through one ZeroMQ ipc hop). Wall times include "
        "start-up. Use --json for a machine-readable last line.",
    )
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="model config (configs/*.toml); default: the shapes model (%(default)s)",
    )
    p.add_argument("--size", default="640x480", help="clip size WxH (default %(default)s)")
    p.add_argument(
        "--streams",
        type=int,
        default=1,
        help="copies of the clip through the pipeline at once (default %(default)s)",
    )
    p.add_argument(
        "--frames", type=int, default=450, help="frames per clip (default %(default)s: 15 s)"
    )
    p.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:N")
    p.add_argument("--batch", type=int, help="batch size (default: the config's max_batch)")
    p.add_argument(
        "--instances",
        type=int,
        help=f"K: instances per frame for the micro paste+RLE figure (default "
        f"{DEFAULT_INSTANCES}); given, or with random weights, also a fixed detection load "
        "(score threshold 0, K detections per frame)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained weights (for COCO configs offline): fixed load of K instances per frame",
    )
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="pipeline file (%(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as a JSON last line")
    p.set_defaults(func=cmd_bench)
