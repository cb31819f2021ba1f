"""Model and runtime settings from `configs/*.toml`.

A config file has two flat tables:

    [model]    which network, which weights, thresholds, input resolution
    [runtime]  device and batching limits

Every field is documented once, on `ModelConfig` below. Paths inside a config file are relative to
the file's own folder. Configuration enters at a stage's `main()` and flows down as plain keyword
arguments; nothing below that reads the file again.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "shapes_mobilenet_v3_fpn")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    # -- [model] --
    arch: str
    """torchvision architecture: one of ARCHS."""
    weights: str = "coco"
    """"coco" (torchvision's weights API: the hub cache, or a download when online), "random"
    (untrained, for plumbing and benchmarks), or a path to a checkpoint file."""
    labels: tuple[str, ...] = ()
    """Label names by label id (index 0 is background). Empty: COCO names (for "coco" weights) or
    the names stored in the checkpoint."""
    score_threshold: float = 0.5
    """Instances scoring below this are dropped (torchvision's box_score_thresh)."""
    mask_threshold: float = 0.5
    """Mask probability above which a pixel belongs to the instance."""
    detections_per_img: int = 100
    """At most this many instances per frame (torchvision's box_detections_per_img)."""
    min_size: int = 800
    """Frames are resized so their short side is min_size (unless the long side would pass
    max_size): the network's input resolution. Results are always in frame pixels."""
    max_size: int = 1333
    # -- [runtime] --
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""
    max_batch: int = 4
    """Largest batch of frames the inference stage runs at once."""
    max_wait_ms: float = 10.0
    """How long the inference stage waits for a batch to fill once it holds a frame."""
    fp16: bool = True
    """Mixed precision (autocast) on CUDA; ignored on CPU."""
    path: str = ""
    """The config file this came from (set by load_config)."""


_MODEL_KEYS = {
    "arch",
    "weights",
    "labels",
    "score_threshold",
    "mask_threshold",
    "detections_per_img",
    "min_size",
    "max_size",
}
_RUNTIME_KEYS = {"device", "max_batch", "max_wait_ms", "fp16"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """Read a model config file; `overrides` (e.g. device="cpu") replace fields after reading."""
    path = Path(path)
    data = read_toml(path)
    unknown = set(data) - {"model", "runtime", "train"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {sorted(unknown)}; expected [model], [runtime]"
        )
    model = dict(data.get("model", {}))
    runtime = dict(data.get("runtime", {}))
    for table, keys, allowed in (
        ("model", model, _MODEL_KEYS),
        ("runtime", runtime, _RUNTIME_KEYS),
    ):
        bad = set(keys) - allowed
        if bad:
            raise ConfigError(f"{path}: unknown field(s) {sorted(bad)} in [{table}]")
    if "arch" not in model:
        raise ConfigError(f"{path}: [model] needs `arch`, one of {', '.join(ARCHS)}")
    fields = {**model, **runtime}
    if "labels" in fields:
        fields["labels"] = tuple(fields["labels"])
    weights = fields.get("weights", "coco")
    if weights not in ("coco", "random"):
        fields["weights"] = str((path.parent / weights).resolve())
    fields.update({k: v for k, v in overrides.items() if v is not None})
    cfg = ModelConfig(**fields, path=str(path))
    validate(cfg)
    return cfg


def validate(cfg: ModelConfig) -> None:
    """Raise ConfigError for values the pipeline cannot run with."""
    where = cfg.path or "config"
    if cfg.arch not in ARCHS:
        raise ConfigError(f"{where}: arch {cfg.arch!r} is not one of {', '.join(ARCHS)}")
    if not 0.0 <= cfg.score_threshold <= 1.0 or not 0.0 < cfg.mask_threshold < 1.0:
        raise ConfigError(f"{where}: score_threshold must be in [0, 1], mask_threshold in (0, 1)")
    if cfg.max_batch < 1 or cfg.max_wait_ms < 0 or cfg.detections_per_img < 1:
        raise ConfigError(
            f"{where}: max_batch and detections_per_img must be >= 1, max_wait_ms >= 0"
        )
    if cfg.min_size < 32 or cfg.max_size < cfg.min_size:
        raise ConfigError(f"{where}: need 32 <= min_size <= max_size")


def replace(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of `cfg` with `changes`, validated."""
    out = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    validate(out)
    return out
