"""`streamseg train`: train the small shapes Mask R-CNN on generated data.

Every training frame is generated on the fly by `streamseg.tools.synth.random_sample`, seeded by
(seed, iteration, index), so a resumed run sees exactly the frames an uninterrupted run would.
Two files are written every `checkpoint_every` iterations, each atomically:
  OUT              the model alone (a streamseg checkpoint: what configs point at)
  OUT.resume.pt    model + optimizer + iteration, for `--resume`
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.config import ConfigError, ModelConfig, load_config, read_toml, validate_train
from streamseg.inference.model import (
    build_from_config,
    image_tensor,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)
from streamseg.pipeline.progress import Progress
from streamseg.tools import synth


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 6000
    """Optimizer steps in the whole schedule."""
    batch_size: int = 8
    lr: float = 0.002
    """AdamW peak learning rate, reached after `warmup`, then cosine decay to 5% of it."""
    weight_decay: float = 0.05
    warmup: int = 300
    grad_clip: float = 10.0
    seed: int = 0
    frame_sizes: tuple[tuple[int, int], ...] = ((640, 480),)
    """(width, height) choices for generated frames; the model resizes them to min_size."""
    input_sizes: tuple[int, ...] = ()
    """Multi-scale training: network input sizes (shorter side) to choose from, one per image,
    the longer side capped in the config's max_size / min_size ratio; the config's min_size
    is what the trained model then runs at. Empty: always the config's min_size."""
    checkpoint_every: int = 100
    log_every: int = 20


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    table = dict(read_toml(path).get("train", {}))
    known = {f.name for f in fields(TrainConfig)}
    bad = set(table) - known
    if bad:
        raise ConfigError(f"{path}: unknown field(s) {sorted(bad)} in [train]")
    validate_train(table, path)
    validate_train({k: v for k, v in overrides.items() if v is not None}, path, flags=True)
    if "frame_sizes" in table:
        table["frame_sizes"] = tuple((int(w), int(h)) for w, h in table["frame_sizes"])
    if "input_sizes" in table:
        sizes = table["input_sizes"]
        if not isinstance(sizes, list) or not all(isinstance(v, int) and v > 0 for v in sizes):
            raise ConfigError(f"{path}: [train] input_sizes must be a list of integers > 0")
        table["input_sizes"] = tuple(sizes)
    table.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**table)


def learning_rate(it: int, *, lr: float, warmup: int, iterations: int) -> float:
    """Linear warmup to `lr`, then cosine decay to 5% of it at `iterations`."""
    if it < warmup:
        return lr * (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, iterations - warmup))
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


LOG_EVERY_S = 30.0
"""A training run prints a progress line at least this often, however slow its iterations."""


def log_due(done: int, *, first: int, total: int, log_every: int, since_s: float) -> bool:
    """Whether the iteration that makes `done` gets a progress line: the first one of this
    run (a slow run says at once what it does), every `log_every`, the last, and any after
    LOG_EVERY_S without a line (`since_s`: seconds since the last)."""
    return done == first + 1 or done % log_every == 0 or done == total or since_s >= LOG_EVERY_S


def duration(seconds: float) -> str:
    """ "45s", "12m05s", "3h07m": a time left, to the second it deserves."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(
    done: int, total: int, *, lr: float, means: dict[str, float], first: int, elapsed_s: float
) -> str:
    """`it 3/120 lr 2.0e-04 box_reg 0.210 ... loss 1.234 (4.10 s/it, 8m00s left)`: the mean
    losses since the last line, and the pace of this run so far (`first`: the iteration it
    started at, `elapsed_s`: its seconds since)."""
    per_it = elapsed_s / max(1, done - first)
    parts = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in sorted(means.items()))
    left = duration(per_it * (total - done))
    return f"it {done}/{total} lr {lr:.2e} {parts} ({per_it:.2f} s/it, {left} left)"


def make_batch(
    seed: int, it: int, batch_size: int, frame_sizes: tuple[tuple[int, int], ...]
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Generated frames and torchvision-style targets for iteration `it`.

    Returns images float[3, H, W] in [0, 1] and targets with boxes float[N, 4] (xyxy, px),
    labels int64[N], masks uint8[N, H, W].
    """
    images, targets = [], []
    for i in range(batch_size):
        rng = np.random.default_rng([seed, it, i])
        w, h = frame_sizes[int(rng.integers(len(frame_sizes)))]
        s = synth.random_sample(rng, w, h)
        images.append(image_tensor(s.image))
        targets.append(
            {
                "boxes": torch.from_numpy(s.boxes).float().reshape(-1, 4),
                "labels": torch.from_numpy(s.labels).long(),
                "masks": torch.from_numpy(s.masks).to(torch.uint8),
            }
        )
    return images, targets


def training_model(model_cfg: ModelConfig, cfg: TrainConfig, init: str | None = None) -> Any:
    """The config's model to train: `init`'s weights if given, and with cfg.input_sizes, a
    transform that resizes each image to one of them (torchvision picks while training)."""
    model = build_from_config(model_cfg)
    if init:
        model.load_state_dict(read_checkpoint(init)["model"])
    if cfg.input_sizes:
        model.transform.min_size = tuple(cfg.input_sizes)
        ratio = model_cfg.max_size / model_cfg.min_size
        model.transform.max_size = round(max(cfg.input_sizes) * ratio)
    return model


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    init: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> Path:
    """Run (or continue) the training schedule; returns the path of the final checkpoint."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    labels = tuple(model_cfg.labels)
    model = training_model(model_cfg, cfg, init)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    resume_path = out.with_name(out.name + ".resume.pt")
    start = 0
    if resume and resume_path.is_file():
        state = torch.load(resume_path, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        print(f"resuming from {resume_path} at iteration {start}", flush=True)
    elif resume:
        print(f"no {resume_path} yet; starting from iteration 0", flush=True)

    def save(it: int) -> None:
        save_checkpoint(out, model, arch=model_cfg.arch, labels=labels, extra={"iteration": it})
        tmp = resume_path.with_name(resume_path.name + ".tmp")
        torch.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it}, tmp
        )
        tmp.replace(resume_path)

    bar = Progress(cfg.iterations, unit="it")
    bar.done = start
    sums: dict[str, float] = {}
    seen, t_log = 0, time.monotonic()
    t_start = t_log
    for it in range(start, cfg.iterations):
        lr = learning_rate(it, lr=cfg.lr, warmup=cfg.warmup, iterations=cfg.iterations)
        for group in opt.param_groups:
            group["lr"] = lr
        images, targets = make_batch(cfg.seed, it, cfg.batch_size, cfg.frame_sizes)
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [{k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {it}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        seen += 1
        bar.update(extra=f"loss {float(loss.detach()):.3f}")
        done = it + 1
        now = time.monotonic()
        total = cfg.iterations
        if log_due(done, first=start, total=total, log_every=cfg.log_every, since_s=now - t_log):
            means = {k: v / seen for k, v in sums.items()}
            elapsed = now - t_start
            bar.line(progress_line(done, total, lr=lr, means=means, first=start, elapsed_s=elapsed))
            sums, seen, t_log = {}, 0, now
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            save(done)
    bar.close()
    if start >= cfg.iterations:
        print(f"already trained to {cfg.iterations} iterations: {out}")
    return out


def main(
    config: str,
    out: str,
    *,
    resume: bool = False,
    init: str | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> int:
    model_cfg = load_config(config, weights="random")
    cfg = load_train_config(model_cfg.path, iterations=iterations, batch_size=batch_size)
    path = train(
        model_cfg,
        cfg,
        Path(out),
        resume=resume,
        init=init,
        device=device,
        threads=threads,
    )
    print(f"checkpoint: {path}")
    return 0
