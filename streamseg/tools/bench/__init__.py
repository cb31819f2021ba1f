"""`streamseg bench`: the model's ceiling, a hand-written loop and the pipeline, from one run.

Three end-to-end figures on the same synthetic clip (streamseg.tools.synth), side by side:

  model-only  the bare torchvision model, `model(list_of_tensors)` (its own mask paste included),
              on frames decoded and uploaded beforehand; only the model is timed, after warm-up.
  naive loop  one process, frame by frame: decode (PyAV) -> model -> threshold -> COCO RLE of the
              full masks (pycocotools) -> overlay -> H.264 encode + results lines; the wall time of
              the whole process, interpreter start and model load included.
  pipeline    `streamseg.pipeline.supervisor.run` with the annotate pipeline writing the same
              outputs; the
              wall time of the run, stage start-up included.

plus two CPU micro figures: paste + RLE of K instances on a 1080p frame (postprocess's core) and
raw 1080p RGB frames through one ZeroMQ PUSH/PULL hop over ipc://. The naive loop runs as
`python -m streamseg.tools.bench naive JSON_KWARGS`, a process of its own like any user's script.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CONFIG = "shapes"
DEFAULT_PIPELINE = "annotate"
DEFAULT_INSTANCES = 20
MICRO_SIZE = (1920, 1080)  # (width, height) of the micro benchmarks' frames
# Model-only keeps at most this many bytes of float frames on the device and cycles through them:
# 8 streams x 450 1080p frames would be 90 GB; the model's cost does not depend on which frames.
POOL_BYTES = 1 << 30

JSON_KEYS = (
    "model_only_fps",
    "naive_fps",
    "pipeline_fps",
    "latency_p50_ms",
    "latency_p99_ms",
    "batch",
    "device",
    "size",
    "streams",
    "frames",
    "instances",
    "paste_rle_ms_1080p",
    "zmq_1080p_fps",
    "config",
)


class BenchError(RuntimeError):
    """A benchmark part that could not run; the message is one line for the user."""


# -- pure helpers ---------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """ "WxH" -> (width, height); ValueError with a one-line message otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WxH, e.g. 640x480, got {text!r}") from None
    if w < 2 or h < 2 or w % 2 or h % 2:
        raise ValueError(f"--size must be even numbers >= 2 (H.264 yuv420p), got {text!r}")
    return w, h


def combine_latency(per_stream: list[tuple[float, float]]) -> tuple[float, float]:
    """Run-level (p50, p99) in ms from each stream's (p50, p99): the median of the streams' p50s
    and the worst stream's p99. NaN entries (a stream with no frames) are ignored; all NaN -> NaN.
    """
    p50s = [p50 for p50, _ in per_stream if not math.isnan(p50)]
    p99s = [p99 for _, p99 in per_stream if not math.isnan(p99)]
    if not p50s or not p99s:
        return float("nan"), float("nan")
    return float(statistics.median(p50s)), float(max(p99s))


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is not a positive number."""
    return a / b if b > 0 else float("nan")


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def synthetic_detections(n: int, size: tuple[int, int], *, seed: int = 0) -> Any:
    """Detections of `n` blob-shaped instances (boxes 40-400 px, inside the frame) on a frame
    of `size` (W, H).

    Masks are smooth 28x28 ellipses with soft edges, like a mask head's output, so RLE run
    counts are realistic (noise would make them far longer).
    """
    from streamseg.wire.protocol import Detections

    rng = np.random.default_rng(seed)
    width, height = size
    bw = rng.uniform(min(40, width / 2), min(400, width), n)
    bh = rng.uniform(min(40, height / 2), min(400, height), n)
    x0 = rng.uniform(0, width - bw)
    y0 = rng.uniform(0, height - bh)
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)
    grid = (np.arange(28, dtype=np.float32) + 0.5) / 28 - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    rx = rng.uniform(0.3, 0.48, n)[:, None, None]
    ry = rng.uniform(0.3, 0.48, n)[:, None, None]
    r = np.sqrt((xx / rx) ** 2 + (yy / ry) ** 2)
    masks = (1.0 / (1.0 + np.exp((r - 1.0) / 0.08))).astype(np.float32)
    scores = np.sort(rng.uniform(0.05, 1.0, n).astype(np.float32))[::-1].copy()
    labels = rng.integers(1, 4, n).astype(np.int64)
    return Detections("bench", 0, 0.0, 0.0, width, height, boxes, scores, labels, masks)


def count_instances(paths: list[Path]) -> tuple[int, int]:
    """(frames, instances) over results files (.jsonl, one frame a line)."""
    frames = instances = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                frames += 1
                instances += len(json.loads(line)["instances"])
    return frames, instances


# -- machine --------------------------------------------------------------------------------------


def machine_info(device: Any) -> dict[str, Any]:
    """Device name, CPU, versions, date and load: what a figure needs to be compared."""
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = f"{cpu} ({cores} cores)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {
        "device_name": name,
        "cpu": cpu,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# -- the three end-to-end figures -----------------------------------------------------------------


def decode_clip(path: str | Path, limit: int) -> list[np.ndarray]:
    """The first `limit` frames of a video as uint8[H, W, 3] RGB."""
    import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) >= limit:
                break
    return out


def model_only(
    cfg: Any, clip: Path, *, total: int, batch: int, warmup: int | None = None
) -> dict[str, Any]:
    """Frames per second of `model(batch_of_tensors)` alone over `total` frames.

    Frames are decoded, converted to float and placed on the device first; a pool of at most
    POOL_BYTES is cycled. Precision and memory format as the pipeline's Runner (fp16 autocast and
    channels-last on CUDA when the config says fp16).
    """
    import torch

    from streamseg.inference.executor import Executor
    from streamseg.inference.model import image_tensor, load_model

    model = load_model(cfg)
    runner = Executor(model, fp16=cfg.fp16)  # same device set-up as the inference stage
    device, cuda = runner.device, runner.cuda
    first = decode_clip(clip, 1)[0]
    per_frame = first.size * 4
    pool_n = max(1, min(total, max(batch, POOL_BYTES // per_frame)))
    with torch.inference_mode():
        pool = [image_tensor(im, device) for im in decode_clip(clip, pool_n)]
        batches = [
            [pool[(i + j) % len(pool)] for j in range(min(batch, total - i))]
            for i in range(0, total, batch)
        ]
        warmup = warmup if warmup is not None else (3 if cuda else 1)
        instances = 0
        with torch.autocast("cuda", dtype=torch.float16, enabled=runner.fp16):
            for b in batches[:warmup]:
                model(b)
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for b in batches:
                for det in model(b):
                    instances += int(det["boxes"].shape[0])  # shape: no device sync
            if cuda:
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
    del model, runner, pool, batches
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {
        "fps": total / seconds,
        "seconds": seconds,
        "frames": total,
        "instances_per_frame": instances / total,
        "device": str(device),
    }


def naive_loop(*, model: dict[str, Any], clips: list[str], out_dir: str) -> dict[str, Any]:
    """What a user writes by hand: one process, one frame at a time, everything in line.

    decode (PyAV) -> model([frame]) (torchvision pastes full masks) -> threshold -> COCO RLE
    of the full masks (pycocotools) -> overlay (streamseg.postprocess.render) -> H.264 (PyAV)
    + results line.
    Returns frames, instances and the model-load and loop seconds.
    """
    t_start = time.perf_counter()
    import av
    import pycocotools.mask as mask_utils
    import torch

    from streamseg.config import from_dict
    from streamseg.inference.model import image_tensor, load_model, model_labels
    from streamseg.postprocess.masks import LocalMasks
    from streamseg.postprocess.render import draw_instances
    from streamseg.postprocess.sinks import VideoSink

    cfg = from_dict(model)
    model = load_model(cfg)
    device = next(model.parameters()).device
    fp16 = cfg.fp16 and device.type == "cuda"
    names = model_labels(model)
    t_loop = time.perf_counter()
    frames = instances = 0
    for i, clip in enumerate(clips):
        with av.open(clip) as container, open(Path(out_dir) / f"naive{i}.jsonl", "w") as results:
            vs = container.streams.video[0]
            fps = float(vs.average_rate or 30)
            video = VideoSink(Path(out_dir) / f"naive{i}.mp4", vs.width, vs.height, fps)
            try:
                for n, frame in enumerate(container.decode(vs)):
                    image = frame.to_ndarray(format="rgb24")
                    x = image_tensor(image, device)
                    with torch.inference_mode(), torch.autocast("cuda", enabled=fp16):
                        det = model([x])[0]
                    masks = (det["masks"][:, 0] > cfg.mask_threshold).cpu().numpy()
                    boxes = det["boxes"].float().cpu().numpy()
                    scores = det["scores"].float().cpu().numpy()
                    labels = det["labels"].cpu().numpy()
                    full = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
                    rles = mask_utils.encode(full) if len(masks) else []
                    record = {
                        "stream": f"naive{i}",
                        "frame": n,
                        "pts": frame.time,
                        "width": vs.width,
                        "height": vs.height,
                        "instances": [
                            {
                                "label": int(labels[k]),
                                "label_name": names[labels[k]],
                                "score": round(float(scores[k]), 5),
                                "box": [round(float(v), 2) for v in boxes[k]],
                                "rle": {"size": r["size"], "counts": r["counts"].decode()},
                            }
                            for k, r in enumerate(rles)
                        ],
                    }
                    results.write(json.dumps(record, separators=(",", ":")) + "\n")
                    h, w = image.shape[:2]
                    n_inst = len(masks)
                    local = LocalMasks(
                        masks,
                        np.zeros(n_inst, np.int32),
                        np.zeros(n_inst, np.int32),
                        np.full(n_inst, h, np.int32),
                        np.full(n_inst, w, np.int32),
                        (h, w),
                    )
                    video.write(draw_instances(image, local, boxes, labels, scores, names))
                    frames += 1
                    instances += n_inst
            finally:
                video.close()
    t_end = time.perf_counter()
    return {
        "frames": frames,
        "instances": instances,
        "load_s": t_loop - t_start,
        "loop_s": t_end - t_loop,
    }


def run_naive(cfg: Any, clips: list[str], out_dir: Path) -> dict[str, Any]:
    """The naive loop in a fresh process (as a user's script runs); wall time from its start."""
    from streamseg.config import to_dict

    kwargs = {"model": to_dict(cfg), "clips": clips, "out_dir": str(out_dir)}
    cmd = [sys.executable, "-m", "streamseg.tools.bench", "naive", json.dumps(kwargs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"the naive loop failed with exit code {proc.returncode} (see above)")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    out["fps"] = out["frames"] / wall
    return out


def run_pipeline(
    cfg: Any, clip: Path, *, streams: int, out_dir: Path, pipeline_path: str | Path
) -> dict[str, Any]:
    """`streams` copies of `clip` through the stage processes, writing video and results."""
    from streamseg.pipeline.supervisor import load_pipeline, run, summary
    from streamseg.source.spec import SourceSpec

    pipeline = load_pipeline(pipeline_path)
    specs = [SourceSpec(f"s{i}", str(clip), "file") for i in range(streams)]
    results = out_dir / "pipeline.jsonl"
    t0 = time.perf_counter()
    report = run(
        pipeline, specs, cfg, video=str(out_dir / "pipeline.mp4"), results=str(results), quiet=True
    )
    wall = time.perf_counter() - t0
    if report.exit_code != 0:
        raise BenchError(
            f"the pipeline run failed (exit code {report.exit_code}): "
            + summary(report).replace("\n", "; ")
        )
    latency = combine_latency(
        [
            (c.get("latency_p50_ms", float("nan")), c.get("latency_p99_ms", float("nan")))
            for c in report.postprocess.values()
        ]
    )
    paths = sorted(out_dir.glob("pipeline*.jsonl"))
    frames, instances = count_instances(paths)
    return {
        "frames": report.frames_done(),
        "wall_s": wall,
        "fps": report.frames_done() / wall,
        "run_s": report.elapsed_s,
        "latency_p50_ms": latency[0],
        "latency_p99_ms": latency[1],
        "busy_s": dict(report.busy_s),
        "instances_per_frame": instances / frames if frames else float("nan"),
    }


# -- micro figures --------------------------------------------------------------------------------


def paste_rle_ms(
    instances: int, *, size: tuple[int, int] = MICRO_SIZE, repeats: int = 20, threads: int = 1
) -> float:
    """Median ms of `make_result` (paste + threshold + RLE) for one frame of `instances`, on the
    CPU with `threads` torch threads (the postprocess stage runs with 1)."""
    import torch

    from streamseg.postprocess.main import make_result

    det = synthetic_detections(instances, size)
    names = ["__background__", "a", "b", "c"]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        make_result(det, mask_threshold=0.5, label_names=names)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            make_result(det, mask_threshold=0.5, label_names=names)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times) * 1000.0


def zmq_fps(*, size: tuple[int, int] = MICRO_SIZE, frames: int = 100) -> float:
    """Raw RGB frames of `size` per second through one PUSH/PULL hop over ipc://: the
    streamseg.wire.transport send (zero-copy) and Receiver (decode wraps the buffer), as stages use
    them, with the pipeline's high-water marks; the sender is a thread (pyzmq drops the GIL)."""
    from streamseg.wire import transport
    from streamseg.wire.protocol import Frame

    width, height = size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="streamseg-zmq-") as d:
        endpoint = f"ipc://{d}/frames"
        pull = transport.pull(endpoint, bind=True, hwm=16)
        push = transport.push(endpoint, bind=False, hwm=8)
        receiver = transport.Receiver(pull, name="bench")

        def send_all() -> None:
            for i in range(frames + 1):  # +1: the first one only opens the connection
                transport.send(push, Frame("bench", i, 0.0, time.time(), image))

        sender = threading.Thread(target=send_all, daemon=True)
        try:
            sender.start()
            if receiver.recv(10_000) is None:
                raise BenchError("ZeroMQ micro benchmark: no frame arrived within 10 s")
            t0 = time.perf_counter()
            for _ in range(frames):
                msg = receiver.recv(10_000)
                if not isinstance(msg, Frame) or msg.image.shape != image.shape:
                    raise BenchError("ZeroMQ micro benchmark: a frame did not arrive intact")
            seconds = time.perf_counter() - t0
            sender.join(timeout=10.0)
        finally:
            push.close(linger=0)
            pull.close(linger=0)
    return frames / seconds


# -- the command ----------------------------------------------------------------------------------


def prepare_config(
    path: str,
    *,
    device: str | None,
    batch: int | None,
    random_weights: bool,
    instances: int | None,
) -> tuple[Any, str, bool]:
    """The benchmark's model config (every process gets exactly this one).

    Returns (config, load description, fixed load?). A fixed load (random weights, or
    --instances given) is score threshold 0 and detections_per_img = K: every frame carries
    K instances whatever the weights see, so runs on different machines compare.
    """
    from streamseg.config import load_config, replace

    cfg = load_config(path, device=device)
    k = instances if instances is not None else DEFAULT_INSTANCES
    fixed = random_weights or cfg.weights == "random" or instances is not None
    changes: dict[str, Any] = {"max_batch": batch}
    if random_weights:
        changes["weights"] = "random"
    if fixed:
        changes.update(score_threshold=0.0, detections_per_img=k)
    cfg = replace(cfg, **changes)
    weights = "random weights" if cfg.weights == "random" else f"weights {cfg.weights}"
    if fixed:
        load = f"load: {weights}, {k} instances/frame, score threshold 0"
    else:
        load = f"load: {weights}, real detections, score threshold {cfg.score_threshold:g}"
    return cfg, load, fixed


def _note(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every part of the benchmark; the figures as one flat dict (see JSON_KEYS)."""
    from streamseg.inference.model import resolve_device
    from streamseg.tools import synth

    try:
        size = parse_size(args.size)
    except ValueError as e:
        raise BenchError(str(e)) from None
    if args.frames < 1 or args.streams < 1:
        raise BenchError("--frames and --streams must be >= 1")
    if args.batch is not None and args.batch < 1:
        raise BenchError("--batch must be >= 1")
    if args.instances is not None and args.instances < 1:
        raise BenchError("--instances must be >= 1")
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
        machine = machine_info(device)
        _note(f"{machine['device_name']}; {load}")

        _note(f"micro: paste+RLE of {k} instances at 1920x1080, ZeroMQ 1080p hop")
        paste_ms = paste_rle_ms(k)
        zmq = zmq_fps()

        clip = tmpdir / "clip.mp4"
        _note(f"writing a {args.frames}-frame {size[0]}x{size[1]} clip")
        synth.write_clip(clip, tmpdir / "clip.json", seed=0, frames=args.frames, size=size)
        total = args.streams * args.frames

        _note(f"model-only: {total} frames, batch {cfg.max_batch}")
        mo = model_only(cfg, clip, total=total, batch=cfg.max_batch)

        _note(f"naive loop: {args.streams} clip(s) one after another")
        naive_dir = tmpdir / "naive"
        naive_dir.mkdir()
        nv = run_naive(cfg, [str(clip)] * args.streams, naive_dir)

        _note(f"pipeline: {args.streams} stream(s) at once")
        pipe_dir = tmpdir / "pipeline"
        pipe_dir.mkdir()
        pl = run_pipeline(
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
        **machine,
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of a bench() result."""
    ipf = r["instances_per_frame"]
    busy = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["busy_s"].items())) or "n/a"
    machine = (
        r["device_name"] if r["device_name"] == r["cpu"] else f"{r['device_name']}, {r['cpu']}"
    )
    load_note = f" (measured: {ipf['pipeline']:.1f} instances/frame)"
    rows = [
        (
            "model-only",
            r["model_only_fps"],
            r["model_only_s"],
            "bare model(list), frames on device",
        ),
        ("naive loop", r["naive_fps"], r["naive_wall_s"], "1 process, frame by frame, start-up in"),
        ("pipeline", r["pipeline_fps"], r["pipeline_wall_s"], "stage processes, start-up in"),
    ]
    lines = [
        f"streamseg bench: {r['config']} ({r['arch']}), {r['streams']} x {r['size']} x "
        f"{r['frames']} frames, device {r['device']}, batch {r['batch']}",
        f"machine: {machine}; torch {r['torch']}, torchvision {r['torchvision']}; {r['date']}; "
        f"load avg {r['load_avg_1m']}",
        r["load"] + load_note,
        "",
        f"{'':12}{'fps':>9}{'seconds':>10}  what",
    ]
    lines += [f"{name:12}{fps:9.2f}{sec:10.1f}  {what}" for name, fps, sec, what in rows]
    lines += [
        "",
        f"pipeline / model-only {r['pipeline_vs_model_only']:.2f}, "
        f"pipeline / naive {r['pipeline_vs_naive']:.2f}",
        f"latency capture -> results: p50 {r['latency_p50_ms']:.0f} ms, "
        f"p99 {r['latency_p99_ms']:.0f} ms",
        f"busy: {busy}",
        f"micro (CPU): paste+RLE of {r['instances']} instances at 1920x1080 "
        f"{r['paste_rle_ms_1080p']:.1f} ms; ZeroMQ ipc 1080p RGB {r['zmq_1080p_fps']:.0f} frames/s",
    ]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    from streamseg.config import ConfigError
    from streamseg.inference.model import WeightsError

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
        print(json.dumps(_json_safe(result), allow_nan=False, separators=(",", ":")))
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
