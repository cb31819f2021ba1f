"""Reading files a user hands in (COCO datasets, ground truth, results files) without trusting
them: bounded JSON, frame sizes as the wire protocol caps them, and COCO RLE masks whose runs
add up to their image.

Python's json module turns hostile input into tracebacks (200k-deep nesting: RecursionError; a
5,000-digit integer: ValueError) or into values later code cannot use (1e999 is inf; NaN and
Infinity are accepted), and pycocotools trusts its input in C: a non-finite polygon coordinate
crashed the process, and a compressed RLE whose runs exceed its image decodes out of bounds.
Everything here raises UntrustedError, one line naming the file and the thing; callers re-raise
it as their own error type (DatasetError, ExportError, EvalError).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamseg.wire.fields import MAX_COORD, MAX_INT, MAX_SIDE

MAX_FILE_BYTES = 2 << 30
"""Largest JSON file read whole (COCO's own train2017 instances file is 0.45 GiB)."""
MAX_LINE_BYTES = 64 << 20
"""Longest results-file line: the largest message the transport accepts."""
_MAX_DIGITS = 19  # a JSON integer within int64 has at most 19 digits (sign aside)


class UntrustedError(ValueError):
    """A user's file that cannot be used; the message is one line naming the file and item."""


def _parse_int(digits: str) -> int:
    # called with the literal's text, before Python converts it: a 5,000-digit id costs nothing
    if len(digits.lstrip("-")) > _MAX_DIGITS or abs(value := int(digits)) > MAX_INT:
        raise UntrustedError(f"an integer out of range ({digits[:12]}...)")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedError(f"a number out of range ({text[:20]})")
    return value


def _parse_constant(name: str) -> float:
    raise UntrustedError(f"{name} is not a JSON number")


def parse_json(text: str | bytes, where: str, *, invalid: str = "not valid JSON") -> Any:
    """`text` as JSON with finite numbers and integers within int64; UntrustedError naming
    `where` for anything else (`invalid` says what a syntax error means), nesting too deep for
    Python's parser included."""
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except UntrustedError as e:
        raise UntrustedError(f"{where}: {e}") from None
    except RecursionError:
        raise UntrustedError(f"{where}: JSON nested too deep") from None
    except UnicodeDecodeError:
        raise UntrustedError(f"{where}: not a UTF-8 text file") from None
    except ValueError as e:  # json.JSONDecodeError, and any other refusal of the parser
        raise UntrustedError(f"{where}: {invalid} ({_first_line(e)})") from None


def read_json(path: str | Path, *, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The whole JSON file at `path` (parse_json's rules), at most `max_bytes` long; `what`
    names it in messages ("ground truth")."""
    try:
        with open(path, "rb") as f:
            # (read(max_bytes + 1) would reserve that much at once: ask the size first)
            if os.fstat(f.fileno()).st_size > max_bytes:
                raise UntrustedError(f"{path}: larger than {max_bytes >> 20} MiB")
            data = f.read()
    except OSError as e:
        raise UntrustedError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise UntrustedError(f"{path}: larger than {max_bytes >> 20} MiB")
    return parse_json(data, str(path))


def json_lines(
    path: str | Path, *, what: str = "results file", max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file (parse_json's rules);
    a line over `max_line_bytes` is refused before it is held whole."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UntrustedError(f"cannot read {what} {path}: {e.strerror}") from None
    with f:
        n = 0
        while line := f.readline(max_line_bytes + 1):
            n += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                raise UntrustedError(f"{path}:{n}: a line longer than {max_line_bytes >> 20} MiB")
            if line.strip():
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    raise UntrustedError(f"{path}: not a text (UTF-8) results file") from None
                yield n, parse_json(text, f"{path}:{n}", invalid="not a JSON line")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


# -- values ---------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    """A JSON integer (a bool is not one)."""
    return type(value) is int


def side(value: Any, what: str) -> int:
    """A frame or image width or height: an integer in [1, MAX_SIDE], as the wire caps it."""
    if not is_int(value) or not 1 <= value <= MAX_SIDE:
        raise UntrustedError(f"{what} must be an integer in [1, {MAX_SIDE}], got {show(value)}")
    return value


def show(value: Any) -> str:
    """A short repr of a received value for a message (huge integers are not printed)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


# -- COCO RLE -------------------------------------------------------------------------------------


def rle_runs(counts: str) -> np.ndarray:
    """The run lengths (int64[N]) of a COCO compressed RLE string, decoded as pycocotools'
    rleFrString does; UntrustedError for characters outside its alphabet or a cut-off value.

    Each run is a little-endian base-32 number over characters 48..111 (bit 5: more follows;
    bit 4 of the last: negative), and from the fourth run on a difference to the run two back.
    """
    if not counts:
        return np.zeros(0, np.int64)
    if not counts.isascii():
        raise UntrustedError("its RLE counts hold characters outside COCO's alphabet")
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise UntrustedError("its RLE counts hold characters outside COCO's alphabet")
    ends = np.flatnonzero((c & 0x20) == 0)
    if len(ends) == 0 or ends[-1] != len(c) - 1:
        raise UntrustedError("its RLE counts end in the middle of a number")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:  # 35 bits: more than any run of an image this size
        raise UntrustedError("its RLE counts hold a number out of range")
    group = np.repeat(np.arange(len(ends)), lengths)
    shift = 5 * (np.arange(len(c)) - starts[group])
    values = np.zeros(len(ends), np.int64)
    np.add.at(values, group, (c & 0x1F) << shift)
    negative = (c[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:]  # run m (m > 2) adds run m - 2
    runs[4::2] = np.cumsum(values[2::2])[1:]
    return runs


def check_rle(rle: Any, height: int, width: int, what: str = "its RLE") -> dict[str, Any]:
    """A COCO RLE of a `height` x `width` image, checked: {"size": [h, w], "counts": str (the
    compressed form) or list of ints (the plain form)}, every run >= 0 and the runs adding up to
    the image exactly (pycocotools decodes past its buffer otherwise). Returns it as given."""
    if not isinstance(rle, dict):
        raise UntrustedError(f"{what} is not an object")
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(map(is_int, size))):
        raise UntrustedError(f'{what} needs "size": [height, width]')
    if size != [height, width]:
        raise UntrustedError(
            f"{what} is {show(size[1])}x{show(size[0])}, the image {width}x{height}"
        )
    if isinstance(counts, str):
        runs = rle_runs(counts)
    elif isinstance(counts, list) and all(map(is_int, counts)):
        if len(counts) > height * width + 1:
            raise UntrustedError(f"{what} has more runs than its image has pixels")
        runs = np.array(counts, np.int64) if counts else np.zeros(0, np.int64)
    else:
        raise UntrustedError(f'{what} needs "counts": a string or a list of integers')
    if len(runs) and runs.min() < 0:
        raise UntrustedError(f"{what} has a negative run")
    if len(runs) and runs.max() > height * width:  # (and the sum below cannot overflow)
        raise UntrustedError(f"{what} has a run longer than its image")
    total = int(runs.sum()) if len(runs) else 0
    if total != height * width:
        raise UntrustedError(f"{what}'s runs cover {total} pixels, its image {height * width}")
    return rle


# -- polygons -------------------------------------------------------------------------------------

MAX_POLYGON_PATH = 2_000_000
"""Longest outline (pixels, summed over a segmentation's polygons) converted to a mask:
pycocotools draws it at 5x in memory (8 bytes a point: 80 MB here)."""


def outlines(polys: list[list[float]]) -> list[list[float]]:
    """The polygons of a segmentation that outline an area (3 points or more). pycocotools
    reads a first polygon of 4 numbers as a box and fails on a shorter one or on none; real COCO
    files have a few such degenerate polygons beside proper ones."""
    return [p for p in polys if len(p) >= 6]


def check_polygons(polys: list[list[float]], height: int, width: int, what: str) -> None:
    """Polygons [[x1, y1, x2, y2, ...], ...] (numbers already) that pycocotools can rasterise:
    finite, within one image size outside the image (x in [-width, 2 * width], y likewise),
    and outlines no longer than MAX_POLYGON_PATH in all."""
    path = 0.0
    for poly in polys:
        if len(poly) % 2:
            raise UntrustedError(f"{what} has a polygon with an odd number of coordinates")
        xy = np.asarray(poly, np.float64).reshape(-1, 2)
        if not len(xy):
            continue
        if not np.isfinite(xy).all():
            raise UntrustedError(f"{what} has a polygon coordinate that is not a finite number")
        x, y = xy[:, 0], xy[:, 1]
        if x.min() < -width or x.max() > 2 * width or y.min() < -height or y.max() > 2 * height:
            raise UntrustedError(
                f"{what} has a polygon point outside x in [{-width}, {2 * width}], "
                f"y in [{-height}, {2 * height}] (its image is {width}x{height})"
            )
        closed = np.concatenate((xy, xy[:1]))
        path += float(np.abs(np.diff(closed, axis=0)).max(axis=1).sum())
    if path > MAX_POLYGON_PATH:
        raise UntrustedError(
            f"{what} has polygons {path:.0f} px long, more than {MAX_POLYGON_PATH}"
        )


# -- results records and ground truth -----------------------------------------------------------


def _number(value: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and lo <= value <= hi


def results_record_problem(rec: Any) -> str | None:
    """What makes a decoded results-file line unusable for export or eval, or None: a frame as
    the wire caps it (sizes, int64 numbers, finite scores and boxes within MAX_COORD) whose
    instances' RLEs cover exactly their frame. (docs/results-format.md has the whole format.)"""
    if not isinstance(rec, dict):
        return "not a JSON object"
    try:
        if not is_int(rec.get("frame")) or rec["frame"] < 0:
            return 'no integer "frame" >= 0'
        height = side(rec.get("height"), '"height"')
        width = side(rec.get("width"), '"width"')
        if not isinstance(rec.get("instances"), list):
            return 'no "instances" list'
        for i, inst in enumerate(rec["instances"]):
            where = f"instance {i}"
            if not isinstance(inst, dict):
                return f"{where} is not an object"
            if not is_int(inst.get("label")):
                return f"{where} has no integer label"
            if not _number(inst.get("score")):
                return f"{where} has a score that is not a finite number"
            box = inst.get("box")
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
                return f"{where} has no box [x1, y1, x2, y2] of finite numbers"
            if max(abs(v) for v in box) > MAX_COORD:
                return f"{where} has a box coordinate beyond {MAX_COORD:g}"
            tid = inst.get("track_id")
            if tid is not None and not is_int(tid):
                return f"{where} has a track_id that is not an integer"
            rle = inst.get("rle")
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str):
                return f"{where} has no rle {{size: [height, width], counts: str}}"
            check_rle(rle, height, width, f"{where}'s rle")
    except UntrustedError as e:
        return str(e)
    return None


def ground_truth_problem(data: Any) -> str | None:
    """What makes decoded COCO ground truth unusable by pycocotools' evaluation, or None:
    images with integer ids and sizes as the wire caps them, annotations of known images with
    an integer category, a finite area and bbox, and a segmentation (polygons or RLE) that
    pycocotools can rasterise safely."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return 'not a JSON object with an "images" list'
    if not isinstance(data.get("annotations", []), list):
        return '"annotations" is not a list'
    if not isinstance(data.get("categories", []), list):
        return '"categories" is not a list'
    sizes: dict[int, tuple[int, int]] = {}
    try:
        for n, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not is_int(img.get("id")):
                return f"image #{n} has no integer id"
            if "frame" in img and not is_int(img["frame"]):
                return f"image {img['id']} has a frame that is not an integer"
            what = f"image {img['id']}"
            sizes[img["id"]] = (
                side(img.get("height"), f"{what} height"),
                side(img.get("width"), f"{what} width"),
            )
        for n, cat in enumerate(data.get("categories", [])):
            if not isinstance(cat, dict) or not is_int(cat.get("id")):
                return f"category #{n} has no integer id"
        for n, ann in enumerate(data.get("annotations", [])):
            if not isinstance(ann, dict) or not is_int(ann.get("id")):
                return f"annotation #{n} has no integer id"
            what = f"annotation {ann['id']}"
            if not is_int(ann.get("image_id")) or ann["image_id"] not in sizes:
                return f"{what} is not of an image in images"
            if not is_int(ann.get("category_id")):
                return f"{what} has no integer category_id"
            if not _number(ann.get("area"), lo=0.0):
                return f"{what} has no finite area >= 0"
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
                return f"{what} has no bbox [x, y, w, h] of finite numbers"
            if ann.get("iscrowd", 0) not in (0, 1):
                return f"{what} has an iscrowd that is not 0 or 1"
            if "track_id" in ann and not is_int(ann["track_id"]):
                return f"{what} has a track_id that is not an integer"
            height, width = sizes[ann["image_id"]]
            seg = ann.get("segmentation")
            if isinstance(seg, dict):
                check_rle(seg, height, width, f"{what}'s RLE")
            elif isinstance(seg, list) and all(
                isinstance(p, list) and len(p) % 2 == 0 and all(_number(v) for v in p) for p in seg
            ):
                if not outlines(seg):
                    return f"{what} has no polygon of 3 points or more"
                check_polygons(seg, height, width, what)
            else:
                return f"{what} has no segmentation (polygons or an RLE)"
    except UntrustedError as e:
        return str(e)
    return None
