"""`streamseg train --coco IMAGES ANNOTATIONS`: train or fine-tune a configured Mask R-CNN on a
COCO-format instance-segmentation dataset (streamseg.tools.coco_data checks and reads it).

Training runs epochs over the training images, in an order seeded by (seed, epoch), each image
flipped left-right with probability 1/2 seeded by (seed, epoch, image). The resume file keeps
the torch random state too (the RPN and ROI heads sample proposals with it), so a resumed run
makes exactly the steps of an uninterrupted one. After every epoch the held-out images are run
through the model and scored by `streamseg eval`'s own code. Files, each written atomically:

  OUT              the model and the dataset's label names (a streamseg checkpoint)
  OUT.resume.pt    model, optimizer, iteration and random state, for --resume
  OUT.toml         a model config for OUT: the training config's settings, names from OUT
  OUT.val.json     COCO ground truth of the held-out images (category ids = label ids)
  OUT.val.jsonl    the last epoch's results on them: streamseg eval OUT.val.jsonl --gt OUT.val.json

(OUT.toml of runs/pets.pt is runs/pets.pt.toml.)

Starting weights (`init`): "random", "coco" (torchvision's COCO weights for the COCO
architectures), or a checkpoint file. Layers whose shape depends on the class count are
replaced by fresh ones for the dataset's classes when the weights have another count (see
`load_for_finetuning`). Fine-tuning (any init but "random") freezes BatchNorm, as torchvision
does for pretrained backbones: small batches would ruin its statistics; the ResNet
architectures also keep their stem and first stage fixed (torchvision's default of 3
trainable stages).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from streamseg import shipped
from streamseg.config import COCO_ARCHS, ModelConfig, label_name, read_toml, replace
from streamseg.inference.model import (
    build_from_config,
    image_tensor,
    load_for_finetuning,
    read_weights,
    resolve_device,
    save_checkpoint,
)
from streamseg.pipeline.progress import Progress
from streamseg.tools import coco_data, evaluate
from streamseg.tools.coco_data import Dataset, DatasetError
from streamseg.tools.train import TrainConfig, learning_rate, log_due, progress_line
from streamseg.wire.results import Instance

MIN_HELD_OUT = 10
"""Fewer held-out images than this: a warning that their AP cannot judge the model."""
EVAL_SCORE_THRESHOLD = 0.05  # held-out AP counts detections down to this score, as torchvision's
# reference evaluation does; the config's own threshold applies when the model is used.


@dataclass
class RunResult:
    """What one call of `train_coco` did."""

    checkpoint: Path
    losses: list[float]
    """Total loss of each iteration run by this call, in order."""
    history: list[dict[str, Any]]
    """One entry per finished epoch of the whole run: epoch, loss and held-out AP figures."""


def output_paths(out: Path) -> dict[str, Path]:
    """OUT and the files written beside it, named OUT.*: never a user's own pets.toml or
    pets.val.json next to a pets.pt."""
    return {
        "checkpoint": out,
        **{k: out.with_name(out.name + v) for k, v in _BESIDE.items()},
    }


_BESIDE = {
    "resume": ".resume.pt",
    "config": ".toml",
    "val_gt": ".val.json",
    "val_results": ".val.jsonl",
}


# -- batches -------------------------------------------------------------------------------------


def epoch_order(train: list[int], seed: int, epoch: int) -> list[int]:
    """The training image indices in epoch `epoch`'s order (seeded: same seed, same order)."""
    return np.random.default_rng([seed, epoch]).permutation(np.asarray(train, np.int64)).tolist()


def make_batch(
    data: Dataset, indices: list[int], *, seed: int, epoch: int, flip: bool
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images float[3, H, W] in [0, 1] and targets (boxes float[N, 4] xyxy px, labels int64[N],
    masks uint8[N, H, W]) of dataset images `indices`, each flipped with probability 1/2 when
    `flip` (seeded by seed, epoch and image index)."""
    images, targets = [], []
    for i in indices:
        mirror = flip and bool(np.random.default_rng([seed, epoch, i]).random() < 0.5)
        pixels, labels, masks, boxes = coco_data.training_sample(data.images[i], flip=mirror)
        images.append(image_tensor(pixels))
        targets.append(
            {
                "boxes": torch.from_numpy(boxes).reshape(-1, 4),
                "labels": torch.from_numpy(labels),
                "masks": torch.from_numpy(masks),
            }
        )
    return images, targets


# -- starting weights ----------------------------------------------------------------------------


def initial_weights(model: nn.Module, arch: str, init: str) -> tuple[str, bool]:
    """Load `init` ("random", "coco", "streamseg:NAME" or a checkpoint path) into `model`;
    returns a line saying what was loaded, and whether the model's class layers are the
    starting weights' own (False: random, or replaced for another class count)."""
    if init == "random":
        return "starting from random weights", False
    source = str(shipped.weights_path(init)) if init.startswith(shipped.WEIGHTS_PREFIX) else init
    swapped = load_for_finetuning(model, read_weights(arch, source), source)
    if swapped:
        return f"fine-tuning {source}: class layers replaced for this dataset's classes", False
    return f"fine-tuning {source}", True


def freeze_for_finetuning(model: nn.Module, arch: str) -> None:
    """BatchNorm fixed (statistics and scale); for the ResNet architectures also the stem and
    first stage. Call again after every model.train(), which would unfreeze the statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.requires_grad_(False)
    if arch in COCO_ARCHS:
        body = model.backbone.body
        for name in ("conv1", "bn1", "layer1"):
            getattr(body, name).requires_grad_(False)


# -- held-out evaluation -------------------------------------------------------------------------


@torch.inference_mode()
def predict(
    model: nn.Module,
    data: Dataset,
    indices: list[int],
    *,
    names: tuple[str, ...],
    mask_threshold: float,
    batch_size: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Results records (the format of `--results`, frame k = indices[k]) of the model in eval
    mode on the dataset images `indices`."""
    records = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images = [data.images[i] for i in chunk]
        outs = model([image_tensor(coco_data.read_image(im), device) for im in images])
        for k, (im, out) in enumerate(zip(images, outs, strict=True)):
            masks = (out["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            rles = (
                mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
            )
            instances = []
            for box, score, label, rle in zip(
                out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), rles,
                strict=True,
            ):  # fmt: skip
                instances.append(
                    Instance(  # the results format's record, rounded there (wire.results)
                        label=int(label),
                        label_name=label_name(names, int(label)),
                        score=float(score),
                        box=tuple(float(v) for v in box),
                        rle={"size": list(rle["size"]), "counts": rle["counts"].decode()},
                    ).to_json()
                )
            records.append(
                {
                    "stream": "val",
                    "frame": start + k,
                    "width": im.width,
                    "height": im.height,
                    "instances": instances,
                }
            )
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def config_text(
    cfg: ModelConfig, weights: str, source: str, train: dict[str, Any] | None = None
) -> str:
    """A model config (TOML) with every setting of `cfg` (its [model] and [runtime] fields) and
    `weights`, and the [train] table it was trained with (`train`, as read from the file); no
    labels, so the names come from the checkpoint."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v, ensure_ascii=False) if isinstance(v, str) else repr(v)

    names = [f.name for f in dataclasses.fields(ModelConfig)]
    runtime_from = names.index("device")  # ModelConfig: [model] fields, then [runtime] ones
    model_keys = [k for k in names[:runtime_from] if k not in ("weights", "labels")]
    runtime_keys = [k for k in names[runtime_from:] if k != "path"]
    lines = [
        f"# Written by `streamseg train --coco` from {source}: the trained model in {weights},",
        "# which carries the dataset's label names (so this file names none).",
        "",
        "[model]",
        f"weights = {value(weights)}",
        *(f"{k} = {value(getattr(cfg, k))}" for k in model_keys),
        "",
        "[runtime]",
        *(f"{k} = {value(getattr(cfg, k))}" for k in runtime_keys),
    ]
    if train:
        lines += ["", "[train]", *(f"{k} = {value(v)}" for k, v in train.items())]
    return "\n".join(lines) + "\n"


# -- the loop ------------------------------------------------------------------------------------


def train_coco(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: Dataset,
    out: Path,
    *,
    epochs: int,
    val_fraction: float = 0.1,
    flip: bool = True,
    init: str = "random",
    resume: bool = False,
    device: str = "auto",
    threads: int | None = None,
    until: int | None = None,
) -> RunResult:
    """Train (or continue training) `model_cfg`'s architecture on `data` for `epochs` epochs.

    `until`: stop after this iteration, saved for --resume (a time-boxed session); the
    schedule stays that of `epochs`.

    Uses from `cfg`: batch_size, lr (AdamW peak, after warmup, cosine decay to 5%), warmup
    (capped at a tenth of the run: a small dataset's whole run can be shorter than it),
    weight_decay, grad_clip, seed, checkpoint_every, log_every.
    """
    if epochs < 1:
        raise DatasetError(f"--epochs must be >= 1, got {epochs}")
    if threads:
        torch.set_num_threads(threads)
    paths = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    names = data.names
    model_cfg = replace(model_cfg, labels=names, weights="random")
    train_idx, val_idx = coco_data.split(len(data.images), val_fraction, cfg.seed)
    steps = coco_data.steps_per_epoch(len(train_idx), cfg.batch_size)
    total = epochs * steps
    warmup = min(cfg.warmup, total // 10)
    fingerprint = {
        "names": list(names),
        "images": [im.id for im in data.images],
        "val": val_idx,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
    }

    torch.manual_seed(cfg.seed)  # the fresh layers' initial weights
    model = build_from_config(model_cfg)
    finetune = init != "random"
    resuming = resume and paths["resume"].is_file()
    # a resumed run takes its weights from the resume file: the starting ones are not read
    note, comparable = ("", False) if resuming else initial_weights(model, model_cfg.arch, init)
    model.to(dev).train()
    if finetune:
        freeze_for_finetuning(model, model_cfg.arch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    baseline: dict[str, float] | None = None  # the starting weights' held-out scores
    epoch_sum, epoch_n = 0.0, 0  # this epoch's summed loss and steps
    if resuming:
        state = torch.load(paths["resume"], map_location=dev, weights_only=True)
        if state.get("dataset") != fingerprint:
            raise DatasetError(
                f"{paths['resume']} is of another dataset, split or batch size; "
                "delete it, or write to another --out"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        start, history = int(state["iteration"]), list(state["history"])
        baseline = state.get("baseline")
        epoch_sum, epoch_n = float(state["epoch_loss"][0]), int(state["epoch_loss"][1])
        note = f"resuming from {paths['resume']} at iteration {start}"
    elif resume:
        note += f" (no {paths['resume']} yet)"
    print(f"{note}; {len(train_idx)} training, {len(val_idx)} held-out images", flush=True)
    if 0 < len(val_idx) < MIN_HELD_OUT:
        fraction = math.ceil(MIN_HELD_OUT / len(data.images) * 100) / 100
        fix = (
            f"--val-fraction {fraction:g}"
            if fraction <= 0.3
            else f"add images: the dataset has {len(data.images)}"
        )
        print(
            f"warning: only {len(val_idx)} held-out images: too few for their AP to judge the "
            f"model (one image moves it a lot); hold out at least {MIN_HELD_OUT} ({fix})",
            flush=True,
        )

    gt_path = paths["val_gt"]
    if val_idx:
        _write_atomic(gt_path, json.dumps(coco_data.ground_truth(data, val_idx)))

    def held_out_scores() -> dict[str, float]:
        """Mask and box AP of the model as it is now on the held-out images (eval mode at
        EVAL_SCORE_THRESHOLD), its results written to OUT.val.jsonl."""
        thresh = model.roi_heads.score_thresh
        model.eval()
        model.roi_heads.score_thresh = min(thresh, EVAL_SCORE_THRESHOLD)
        try:
            records = predict(
                model, data, val_idx, names=names, mask_threshold=model_cfg.mask_threshold,
                batch_size=cfg.batch_size, device=dev,
            )  # fmt: skip
        finally:
            model.roi_heads.score_thresh = thresh
            model.train()
            if finetune:
                freeze_for_finetuning(model, model_cfg.arch)
        _write_atomic(paths["val_results"], "".join(json.dumps(r) + "\n" for r in records))
        scores = evaluate.evaluate(evaluate.load_results(paths["val_results"]), gt_path)
        return {k: round(float(scores[k]), 5) for k in ("AP", "AP50", "AP75", "bbox_AP")}

    # what the starting weights score, to say whether training made them better: only where
    # their class layers are their own (replaced ones score nothing yet)
    if comparable and val_idx and not resuming:
        baseline = held_out_scores()
        print(
            f"starting weights: held-out mask AP {baseline['AP']:.3f} box AP "
            f"{baseline['bbox_AP']:.3f} ({len(val_idx)} images)",
            flush=True,
        )

    def save(it: int) -> None:
        extra = {
            "iteration": it,
            "epochs": epochs,
            "categories": [
                {"id": c, "name": n} for c, n in zip(data.category_ids, names[1:], strict=True)
            ],
            "history": history,
        }
        save_checkpoint(out, model, arch=model_cfg.arch, labels=names, extra=extra)
        tmp = paths["resume"].with_name(paths["resume"].name + ".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "iteration": it,
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                "history": history,
                "epoch_loss": [epoch_sum, epoch_n],  # a run stopped mid-epoch
                "baseline": baseline,
                "dataset": fingerprint,
            },
            tmp,
        )
        tmp.replace(paths["resume"])

    def held_out(epoch: int, loss: float) -> None:
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(loss, 5)}
        text = f"epoch {epoch}/{epochs} loss {loss:.3f}"
        if val_idx:
            scores = held_out_scores()
            entry |= scores
            text += (
                f" | held-out mask AP {scores['AP']:.3f} AP50 {scores['AP50']:.3f} "
                f"AP75 {scores['AP75']:.3f} box AP {scores['bbox_AP']:.3f} "
                f"({len(val_idx)} images)"
            )
        history.append(entry)
        bar.line(text)

    bar = Progress(total, unit="it")
    bar.done = start
    losses: list[float] = []
    sums: dict[str, float] = {}
    seen, t_log = 0, time.monotonic()
    t_start = t_log
    order: list[int] = []
    end = total if until is None else min(total, until)
    for it in range(start, end):
        epoch, step = divmod(it, steps)
        if step == 0 or not order:
            order = epoch_order(train_idx, cfg.seed, epoch)
        lr = learning_rate(it, lr=cfg.lr, warmup=warmup, iterations=total)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        images, targets = make_batch(data, batch, seed=cfg.seed, epoch=epoch, flip=flip)
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [{k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in targets]
        parts = model(images, targets)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {it}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        value = float(loss.detach())
        losses.append(value)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + value
        seen += 1
        epoch_sum, epoch_n = epoch_sum + value, epoch_n + 1
        done = it + 1
        bar.update(extra=f"epoch {epoch + 1}/{epochs} loss {value:.3f}")
        now = time.monotonic()
        if log_due(done, first=start, total=end, log_every=cfg.log_every, since_s=now - t_log):
            means = {k: v / seen for k, v in sums.items()}
            elapsed = now - t_start
            bar.line(progress_line(done, total, lr=lr, means=means, first=start, elapsed_s=elapsed))
            sums, seen, t_log = {}, 0, now
        if done % steps == 0:
            held_out(epoch + 1, epoch_sum / epoch_n)
            epoch_sum, epoch_n = 0.0, 0
            save(done)
        elif done % cfg.checkpoint_every == 0 or done == end:
            save(done)
    bar.close()
    if start >= total:
        print(f"already trained for {epochs} epochs: {out}")
    train_table = read_toml(model_cfg.path).get("train") if model_cfg.path else None
    text = config_text(model_cfg, out.name, model_cfg.path or "the config", train_table)
    _write_atomic(paths["config"], text)
    if baseline is not None and history and history[-1].get("AP", 1.0) < baseline["AP"]:
        print(
            f"warning: the trained model scores below its starting weights on the held-out "
            f"images (mask AP {history[-1]['AP']:.3f}, {init}: {baseline['AP']:.3f}): it got "
            "worse for them; keep the starting weights, or try a lower --lr, fewer --epochs "
            "or more data",
            flush=True,
        )
    return RunResult(out, losses, history)


def main(
    config: str,
    out: str,
    images: str,
    annotations: str,
    *,
    epochs: int,
    val_fraction: float,
    flip: bool = True,
    init: str | None = None,
    resume: bool = False,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> int:
    """`streamseg train --coco`: check the dataset, train, print where things are."""
    from streamseg.config import load_config
    from streamseg.tools.train import load_train_config

    model_cfg = load_config(config)
    cfg = load_train_config(model_cfg.path, batch_size=batch_size, lr=lr)
    data = coco_data.load_dataset(images, annotations)
    print(f"dataset: {data.summary()}", flush=True)
    result = train_coco(
        model_cfg,
        cfg,
        data,
        Path(out),
        epochs=epochs,
        val_fraction=val_fraction,
        flip=flip,
        init=init or model_cfg.weights,
        resume=resume,
        device=device,
        threads=threads,
    )
    paths = output_paths(result.checkpoint)
    print(f"checkpoint: {result.checkpoint} (labels: {', '.join(data.names[1:])})")
    print(f"config:     {paths['config']}  (streamseg annotate VIDEO --config {paths['config']})")
    if paths["val_results"].is_file():
        print(
            f"held-out:   streamseg eval {paths['val_results']} --gt {paths['val_gt']}",
        )
    return 0
