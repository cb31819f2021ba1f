"""The three end-to-end figures on one clip: the bare model, a hand-written loop, the pipeline.

  model_only   `model(list_of_tensors)` alone on frames decoded and uploaded beforehand.
  naive_loop   one process, frame by frame, everything in line (run_naive runs it in a process
               of its own, `python -m streamseg.tools.bench naive JSON_KWARGS`).
  run_pipeline the stage processes (streamseg.pipeline.supervisor.run) writing the same outputs.

torch, PyAV and pycocotools are imported inside the functions: the CLI imports this package for
every command, and the naive loop's load time should include its imports, as a script's would.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamseg.config import ModelConfig, from_dict, label_name, to_dict
from streamseg.tools.bench.figures import BenchError, combine_latency, stage_breakdown
from streamseg.tools.bench.fixtures import count_instances, decode_clip

# Model-only keeps at most this many bytes of float frames on the device and cycles through them:
# 8 streams x 450 1080p frames would be 90 GB; the model's cost does not depend on which frames.
POOL_BYTES = 1 << 30


def model_only(
    cfg: ModelConfig, clip: Path, *, total: int, batch: int, warmup: int | None = None
) -> dict[str, Any]:
    """Frames per second of `model(batch_of_tensors)` alone over `total` frames of `clip`.

    Frames are decoded, converted to float and placed on the device first; a pool of at most
    POOL_BYTES is cycled. Precision and memory format as the pipeline's inference stage (on CUDA
    channels-last, and mixed precision when the config says fp16). `warmup` batches (default 3
    on CUDA, 1 on CPU) run untimed first.
    Returns fps, seconds, frames (= total), instances_per_frame and device.
    """
    import torch

    from streamseg.inference.executor import Executor
    from streamseg.inference.model import image_tensor, load_model

    model = load_model(cfg)
    runner = Executor(model, fp16=cfg.fp16)  # same device set-up as the inference stage
    device, cuda = runner.device, runner.cuda
    first = decode_clip(clip, 1)[0]
    per_frame = first.size * 4  # float32 bytes
    pool_n = max(1, min(total, max(batch, POOL_BYTES // per_frame)))
    with torch.inference_mode():
        pool = [image_tensor(im, device) for im in decode_clip(clip, pool_n)]
        batches = [
            [pool[(i + j) % len(pool)] for j in range(min(batch, total - i))]
            for i in range(0, total, batch)
        ]
        warmup = warmup if warmup is not None else (3 if cuda else 1)
        instances = 0
        # no autocast here: the Executor made the model mixed-precision (networks in fp16,
        # geometry in fp32; streamseg.inference.precision) as the inference stage runs it
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


def naive_loop(*, config: dict[str, Any], clips: list[str], out_dir: str) -> dict[str, Any]:
    """What a user writes by hand: one process, one frame at a time, everything in line.

    decode (PyAV) -> model([frame]) (torchvision pastes full masks) -> threshold -> COCO RLE
    of the full masks (pycocotools) -> overlay (streamseg.postprocess.render) -> H.264
    (VideoSink) + results line, into OUT_DIR/naive{i}.mp4 and naive{i}.jsonl for clip i.
    `config` is the model config as `streamseg.config.to_dict` gives it.
    Returns frames, instances, and the seconds of model load (imports included) and of the loop.
    """
    t_start = time.perf_counter()
    import av
    import pycocotools.mask as mask_utils
    import torch

    from streamseg.inference.model import image_tensor, load_model, model_labels
    from streamseg.postprocess.masks import LocalMasks
    from streamseg.postprocess.render import draw_instances
    from streamseg.postprocess.sinks import VideoSink
    from streamseg.wire.results import Instance

    cfg = from_dict(config)
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
                    image = frame.to_ndarray(format="rgb24")  # uint8[H, W, 3]
                    with torch.inference_mode(), torch.autocast("cuda", enabled=fp16):
                        det = model([image_tensor(image, device)])[0]
                    masks = (det["masks"][:, 0] > cfg.mask_threshold).cpu().numpy()  # bool[N, H, W]
                    boxes = det["boxes"].float().cpu().numpy()  # float32[N, 4], xyxy, pixels
                    scores = det["scores"].float().cpu().numpy()  # float32[N]
                    labels = det["labels"].cpu().numpy()  # int64[N]
                    full = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
                    rles = mask_utils.encode(full) if len(masks) else []
                    record = {
                        "stream": f"naive{i}",
                        "frame": n,
                        "pts": frame.time,
                        "width": vs.width,
                        "height": vs.height,
                        "instances": [
                            Instance(
                                label=int(labels[k]),
                                label_name=label_name(names, int(labels[k])),
                                score=float(scores[k]),
                                box=tuple(float(v) for v in boxes[k]),
                                rle={"size": r["size"], "counts": r["counts"].decode()},
                            ).to_json()
                            for k, r in enumerate(rles)
                        ],
                    }
                    results.write(json.dumps(record, separators=(",", ":")) + "\n")
                    h, w = image.shape[:2]
                    n_inst = len(masks)
                    local = LocalMasks(  # each mask is its own full-frame crop
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


def run_naive(cfg: ModelConfig, clips: list[str], out_dir: Path) -> dict[str, Any]:
    """The naive loop in a fresh process (as a user's script runs); wall time from its start.

    Returns naive_loop's figures plus wall_s and fps (frames / wall_s).
    """
    kwargs = {"config": to_dict(cfg), "clips": clips, "out_dir": str(out_dir)}
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
    cfg: ModelConfig, clip: Path, *, streams: int, out_dir: Path, pipeline_path: str | Path
) -> dict[str, Any]:
    """`streams` copies of `clip` through the stage processes, writing video and results into
    `out_dir` (pipeline*.mp4, pipeline*.jsonl).

    Returns frames, wall_s, fps (frames / wall_s), run_s, latency_p50_ms, latency_p99_ms
    (combine_latency over the streams), busy_s per stage and instances_per_frame.
    """
    from streamseg.pipeline.report import summary
    from streamseg.pipeline.spec import load_pipeline
    from streamseg.pipeline.supervisor import run
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
    frames, instances = count_instances(sorted(out_dir.glob("pipeline*.jsonl")))
    return {
        "frames": report.frames_done(),
        "wall_s": wall,
        "fps": report.frames_done() / wall,
        "run_s": report.elapsed_s,
        "latency_p50_ms": latency[0],
        "latency_p99_ms": latency[1],
        "busy_s": dict(report.busy_s),
        "stages": stage_breakdown(report.extra, report.busy_s, report.sources, wall),
        "instances_per_frame": instances / frames if frames else float("nan"),
    }
