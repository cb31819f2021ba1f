"""Model and runtime settings from `configs/*.toml`.

A config is found by path or by the name of a shipped one (`shapes`, see `streamseg.shipped`).
It has two flat tables:

    [model]    which network, which weights, thresholds, input resolution
    [runtime]  device and batching limits

Every field is documented once, on `ModelConfig` below. Paths inside a config file are relative to
the file's own folder; "streamseg:NAME" names a file shipped in the package. Configuration enters
at a stage's `main()` and flows down as plain keyword arguments; nothing below that reads the
file again.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamseg import checkpoint_meta, shipped

ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "shapes_mobilenet_v3_fpn")
COCO_ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
COCO_URLS = {
    "maskrcnn_resnet50_fpn": "https://download.pytorch.org/models/"
    "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "maskrcnn_resnet50_fpn_v2": "https://download.pytorch.org/models/"
    "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
}
"""torchvision's COCO weights by arch (its weights' .url; a test checks they match), for
the preflight that looks for them without importing torch."""

# torchvision's COCO category names by label id (its weights' meta["categories"]); a test
# checks they match. Kept here so that resolving names needs no torch import.
COCO_LABELS: tuple[str, ...] = (
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def coco_fix(arch: str, cached: Path, url: str, config_path: str, why: str) -> str:
    """The one line that says how to supply COCO weights that are not here: the preflight's,
    and the model module's when a download fails."""
    where = f"[model] of {config_path}" if config_path else "[model] of the config"
    return (
        f"COCO weights for {arch} are not in the torch hub cache ({cached}) and {why}. "
        f"On a machine with network access download {url} and either copy it to {cached}, "
        f'or pass --weights /path/to/{cached.name} (or set weights = "/path/to/{cached.name}" '
        f"in {where})"
    )


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the field and the fix."""


class WeightsError(RuntimeError):
    """Weights that cannot be had or do not fit; the message says how to supply them."""


@dataclass(frozen=True)
class ModelConfig:
    # -- [model] --
    arch: str
    """torchvision architecture: one of ARCHS."""
    weights: str = "coco"
    """"coco" (torchvision's weights API: the hub cache, or a download when online), "random"
    (untrained, for plumbing and benchmarks), a path to a checkpoint file (relative to the config
    file), or "streamseg:NAME" for a checkpoint shipped in the package (streamseg/data/NAME)."""
    labels: tuple[str, ...] = ()
    """Label names by label id (index 0 is background). Default: the names a streamseg
    checkpoint carries (a config naming others is refused); else, for the COCO architectures,
    torchvision's COCO names; other architectures must name theirs."""
    score_threshold: float = 0.5
    """Results hold no instance scoring below this, except as track_score_threshold says."""
    track_score_threshold: float = 0.0
    """Where tracking is on, an instance scoring at least this, but below score_threshold, is
    a result only when it continues a track followed the frame before (ByteTrack's low-score
    association: a partly hidden object scores lower). The model then keeps instances from
    this score on (torchvision's box_score_thresh); postprocess drops the low ones no track
    took. 0, or not below score_threshold: off (the COCO configs; shapes: 0.3)."""
    mask_threshold: float = 0.5
    """Mask probability above which a pixel belongs to the instance."""
    mask_nms: float = 0.0
    """Postprocess drops an instance whose mask overlaps a higher-scored one of the same label
    by this IoU or more: a duplicate box NMS missed because the boxes differ (visible masks
    of opaque objects do not overlap). 0: keep them (the COCO configs; shapes: 0.3)."""
    mask_nms_cross_label: float = 0.0
    """The same for an instance of another label: the model calling one object by two names
    (torchvision's box NMS is per label). 0: keep them (the COCO configs; shapes: 0.6)."""
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
    threads: int | str = "auto"
    """CPU threads for the model per inference worker (torch.set_num_threads): "auto" shares
    the cores between the stages (streamseg.threads); 0: torch's default (all cores)."""
    path: str = ""
    """The config file this came from (set by load_config)."""


_MODEL_KEYS = {
    "arch",
    "weights",
    "labels",
    "score_threshold",
    "track_score_threshold",
    "mask_threshold",
    "mask_nms",
    "mask_nms_cross_label",
    "detections_per_img",
    "min_size",
    "max_size",
}
_RUNTIME_KEYS = {"device", "max_batch", "max_wait_ms", "fp16", "threads"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_config(name_or_path: str | Path, **overrides: Any) -> ModelConfig:
    """Read a model config, given by path or by the name of a shipped one ("shapes");
    `overrides` (e.g. device="cpu") replace fields after reading."""
    try:
        path = shipped.find("config", name_or_path)
    except shipped.NotFound as e:
        raise ConfigError(str(e)) from None
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
    if not isinstance(weights, str):
        raise ConfigError(f'{path}: weights must be a string ("coco", "random" or a path)')
    if "weights" in fields:
        fields["weights"] = weights_value(weights, path.parent)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "weights" in given:  # --weights FILE: a path from the command line, not the file
        given["weights"] = weights_value(given["weights"], Path.cwd())
        meta = checkpoint_meta.read_meta(given["weights"])
        stored = meta["labels"] if meta is not None else None
        if "labels" not in given and stored is not None:  # its names, not the config's
            given["labels"] = stored
        elif stored is not None and tuple(given["labels"]) != stored:
            raise ConfigError(
                f"--labels: {given['weights']} carries its own class names "
                f"({', '.join(stored[1:])}); leave out --labels to use them"
            )
    if "labels" in given:
        given["labels"] = tuple(given["labels"])
    fields.update(given)
    _labels_from_checkpoint(fields, path)
    if not fields.get("labels") and fields["arch"] in COCO_ARCHS:
        fields["labels"] = COCO_LABELS
    cfg = ModelConfig(**fields, path=str(path))
    validate(cfg, flags=tuple(given))
    return cfg


def weights_value(value: str, folder: Path) -> str:
    """A `weights` value as the model module reads it: "coco" and "random" as they are,
    "streamseg:NAME" the shipped file, a path resolved from `folder` (the config's own folder,
    or the working directory for --weights)."""
    if value in ("coco", "random"):
        return value
    if value.startswith(shipped.WEIGHTS_PREFIX):
        return str(shipped.weights_path(value))
    return str((folder / Path(value).expanduser()).resolve())


def parse_labels(text: str) -> tuple[str, ...]:
    """--labels: class names "a,b,c", or a file with one name a line (blank lines and # comments
    skipped) -> label names by id, "__background__" first (added when not given).
    ValueError with one line for an empty list or a repeated name."""
    path = Path(text)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        names = [v.strip() for v in lines if v.strip() and not v.strip().startswith("#")]
    else:
        names = [v.strip() for v in text.split(",")]
    if not names or not all(names):
        raise ValueError(
            f"--labels {text!r}: give class names separated by commas (cat,dog) or a file "
            "with one name a line"
        )
    if names[0] != "__background__":
        names.insert(0, "__background__")
    repeated = sorted({v for v in names if names.count(v) > 1})
    if repeated:
        raise ValueError(f"--labels {text!r}: {', '.join(repeated)} named twice")
    return tuple(names)


def _labels_from_checkpoint(fields: dict[str, Any], path: Path) -> None:
    """A streamseg checkpoint names its labels (e.g. a dataset's classes, by `streamseg train
    --coco`): a config without `labels` takes them; a config whose labels differ is refused,
    since its names would be wrong for the model's label ids."""
    weights = fields.get("weights")
    if weights in ("coco", "random") or not isinstance(weights, str):
        return
    meta = checkpoint_meta.read_meta(weights)
    if meta is None or meta["labels"] is None:
        return  # no names in the file (torchvision's own .pth): the config's apply
    stored = meta["labels"]
    if not fields.get("labels"):
        fields["labels"] = stored
    elif tuple(fields["labels"]) != stored:
        raise ConfigError(
            f"{path}: labels {list(fields['labels'])} are not those of its checkpoint "
            f"{weights} ({len(stored) - 1} classes: {', '.join(stored[1:])}); delete `labels` "
            "from [model] to use the checkpoint's names"
        )


_TYPES: dict[str, tuple[type, ...]] = {
    "arch": (str,),
    "weights": (str,),
    "score_threshold": (int, float),
    "track_score_threshold": (int, float),
    "mask_threshold": (int, float),
    "mask_nms": (int, float),
    "mask_nms_cross_label": (int, float),
    "detections_per_img": (int,),
    "min_size": (int,),
    "max_size": (int,),
    "device": (str,),
    "max_batch": (int,),
    "max_wait_ms": (int, float),
    "fp16": (bool,),
    "threads": (int, str),
}


MAX_BATCH = 256
"""Largest max_batch: 256 frames of 1080p are 1.6 GB of pixels before the model's own memory
(a batch of 100000 asked for gigabytes and ended in an allocator traceback)."""

# The allowed range of every numeric field, (least, most), finite: NaN or inf in a threshold or
# a wait would silently turn a check off.
RANGES: dict[str, tuple[float, float]] = {
    "score_threshold": (0.0, 1.0),
    "track_score_threshold": (0.0, 1.0),
    "mask_threshold": (0.0, 1.0),  # both ends excluded below
    "mask_nms": (0.0, 1.0),
    "mask_nms_cross_label": (0.0, 1.0),
    "detections_per_img": (1, 1000),
    "min_size": (32, 16384),  # the wire's largest frame side
    "max_size": (32, 16384),
    "max_batch": (1, MAX_BATCH),
    "max_wait_ms": (0.0, 10_000.0),
    "threads": (0, 1024),
}


_OFF_AT_ZERO = ("track_score_threshold", "mask_nms", "mask_nms_cross_label")


def _table(name: str) -> str:
    return "runtime" if name in _RUNTIME_KEYS else "model"


def validate(cfg: ModelConfig, flags: Sequence[str] = ()) -> None:
    """Raise ConfigError for values the pipeline cannot run with: one line naming the file, the
    field and its allowed range. `flags`: the fields set from the command line (named as their
    option, --max-batch, in the message)."""
    where = cfg.path or "config"
    for name, types in _TYPES.items():
        value = getattr(cfg, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            kind = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: {name} must be a {kind}, got {value!r}")
    for name, (lo, hi) in RANGES.items():
        value = getattr(cfg, name)
        if isinstance(value, str):  # threads = "auto", checked below
            continue
        # (an int may exceed any float: isfinite only for floats)
        if not ((isinstance(value, int) or math.isfinite(value)) and lo <= value <= hi):
            kind = "an integer in" if _TYPES[name] == (int,) or name == "threads" else "in"
            off = " (0: off)" if name in _OFF_AT_ZERO else ""
            given = f"--{name.replace('_', '-')}" if name in flags else f"[{_table(name)}]"
            raise ConfigError(
                f"{where}: {name} must be {kind} [{lo:g}, {hi:g}]{off}, got {value!r} ({given})"
            )
    if not all(isinstance(v, str) for v in cfg.labels):
        raise ConfigError(f"{where}: labels must be a list of strings")
    if cfg.arch not in ARCHS:
        raise ConfigError(f"{where}: arch {cfg.arch!r} is not one of {', '.join(ARCHS)}")
    if not 0.0 <= cfg.score_threshold <= 1.0 or not 0.0 < cfg.mask_threshold < 1.0:
        raise ConfigError(f"{where}: score_threshold must be in [0, 1], mask_threshold in (0, 1)")
    if not 0.0 <= cfg.track_score_threshold <= 1.0:
        raise ConfigError(
            f"{where}: track_score_threshold must be in [0, 1] (0: off), "
            f"got {cfg.track_score_threshold}"
        )
    if not 0.0 <= cfg.mask_nms <= 1.0:
        raise ConfigError(f"{where}: mask_nms must be in [0, 1] (0: off), got {cfg.mask_nms}")
    if not 0.0 <= cfg.mask_nms_cross_label <= 1.0:
        raise ConfigError(
            f"{where}: mask_nms_cross_label must be in [0, 1] (0: off), "
            f"got {cfg.mask_nms_cross_label}"
        )
    if cfg.max_batch < 1 or cfg.max_wait_ms < 0 or cfg.detections_per_img < 1:
        raise ConfigError(
            f"{where}: max_batch and detections_per_img must be >= 1, max_wait_ms >= 0"
        )
    if not cfg.labels:
        raise ConfigError(f"{where}: set `labels` in [model]: names by label id, 0 = background")
    if (isinstance(cfg.threads, str) and cfg.threads != "auto") or (
        isinstance(cfg.threads, int) and cfg.threads < 0
    ):
        raise ConfigError(
            f'{where}: threads must be "auto" or an integer >= 0, got {cfg.threads!r}'
        )
    if cfg.min_size < 32 or cfg.max_size < cfg.min_size:
        raise ConfigError(f"{where}: need 32 <= min_size <= max_size")


TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "iterations": (1, 10_000_000),
    "batch_size": (1, MAX_BATCH),
    "lr": (1e-9, 1.0),
    "weight_decay": (0.0, 1.0),
    "warmup": (0, 10_000_000),
    "grad_clip": (1e-6, 1e6),
    "seed": (0, 2**63 - 1),
    "checkpoint_every": (1, 10_000_000),
    "log_every": (1, 10_000_000),
}
"""The allowed range of each number of a config's [train] table (streamseg.tools.train)."""
_TRAIN_INTS = ("iterations", "batch_size", "warmup", "seed", "checkpoint_every", "log_every")


def validate_train(values: dict[str, Any], where: str | Path, flags: bool = False) -> None:
    """ConfigError (one line: the file, the key, the allowed range) unless every value of a
    [train] table (or, with `flags`, of the command-line options that override it) is of its
    type and within TRAIN_RANGES; frame_sizes are [[width, height], ...] and input_sizes
    [size, ...] of frame sides within the wire's [32, 16384]."""
    for name, value in values.items():
        shown = f"--{name.replace('_', '-')}" if flags else f"[train] {name}"
        if name in TRAIN_RANGES:
            lo, hi = TRAIN_RANGES[name]
            is_int = type(value) is int
            number = is_int or (type(value) is float and name not in _TRAIN_INTS)
            if not (number and (is_int or math.isfinite(value)) and lo <= value <= hi):
                if name in _TRAIN_INTS:
                    kind, bounds = "an integer in", f"[{int(lo)}, {int(hi)}]"
                else:
                    kind, bounds = "a number in", f"[{lo:g}, {hi:g}]"
                raise ConfigError(f"{where}: {shown} must be {kind} {bounds}, got {value!r}")
        elif name in ("frame_sizes", "input_sizes"):
            pairs = name == "frame_sizes"
            items = value if isinstance(value, list | tuple) else [None]
            ok = bool(items) and all(
                (isinstance(v, list | tuple) and len(v) == 2 and all(_side(n) for n in v))
                if pairs
                else _side(v)
                for v in items
            )
            if not ok and not (not pairs and value in ([], ())):  # input_sizes = []: off
                must = "[[width, height], ...]" if pairs else "a list of sizes"
                raise ConfigError(
                    f"{where}: {shown} must be {must} of integers in [32, 16384], got {value!r}"
                )


def _side(value: Any) -> bool:
    return type(value) is int and 32 <= value <= 16384


def model_score_threshold(cfg: ModelConfig) -> float:
    """The least score of an instance the model keeps: track_score_threshold when it is on
    (above 0 and below score_threshold), else score_threshold."""
    low = cfg.track_score_threshold
    return low if 0.0 < low < cfg.score_threshold else cfg.score_threshold


def replace(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of `cfg` with `changes`, validated."""
    out = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    validate(out)
    return out


def to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Every field, JSON-ready: how a resolved config travels to a stage process."""
    data = dataclasses.asdict(cfg)
    data["labels"] = list(cfg.labels)
    return data


def from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of to_dict, validated."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - fields
    if unknown:
        raise ConfigError(f"unknown model config field(s) {sorted(unknown)}")
    cfg = ModelConfig(**{**data, "labels": tuple(data.get("labels", ()))})
    validate(cfg)
    return cfg


def label_name(labels: Sequence[str], label: int) -> str:
    """The name of label id `label` (its number as text when the names do not cover it)."""
    return labels[label] if 0 <= label < len(labels) else str(label)


def parse_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480); ValueError with a one-line message for anything else."""
    parts = str(text).lower().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"size must be WxH in pixels, e.g. 640x480; got {text!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return w, h
