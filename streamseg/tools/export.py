"""`streamseg export`: a results file (.jsonl) as what other tools read directly.

--coco OUT.json      COCO results list (``pycocotools.coco.COCO.loadRes``): image_id, category_id,
                     segmentation (compressed RLE), bbox (xywh), score, and track_id when present.
                     Image ids: frame + 1 (what `streamseg synth` writes), frame + N with
                     --first-image-id N, or those of --gt GT.json's images (by their "frame",
                     else id - 1).
--polygons OUT.jsonl one line per instance: its mask's OpenCV contours (cv2.findContours with
                     RETR_CCOMP) as rings, each outer ring with the holes inside it.
--png-masks DIR      one single-channel uint16 PNG per frame, DIR/FRAME.png (frame number, at
                     least 6 digits): 0 is background, else the instance's track id, or its
                     index in the frame's instances + 1 (see --png-values). Where instances
                     overlap the higher score wins.

docs/tracking.md describes each format.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from streamseg.tools import untrusted

PngValues = Literal["auto", "track", "index"]
PNG_MAX = 65535  # uint16


class ExportError(ValueError):
    """A results file or an output that cannot be used; one line for the user."""


# --- reading -----------------------------------------------------------------------------------


def _check_record(rec: Any) -> str | None:
    """What is wrong with a results record, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for key in ("frame", "width", "height"):
        if not isinstance(rec.get(key), int) or rec[key] < 0:
            return f'no integer "{key}"'
    if not isinstance(rec.get("instances"), list):
        return 'no "instances" list'
    for i, inst in enumerate(rec["instances"]):
        where = f"instance {i}"
        if not isinstance(inst, dict):
            return f"{where} is not an object"
        if not isinstance(inst.get("label"), int) or not isinstance(inst.get("score"), int | float):
            return f"{where} has no integer label or no score"
        box = inst.get("box")
        if not isinstance(box, list) or len(box) != 4:
            return f"{where} has no box [x1, y1, x2, y2]"
        rle = inst.get("rle")
        if (
            not isinstance(rle, dict)
            or rle.get("size") != [rec["height"], rec["width"]]
            or not isinstance(rle.get("counts"), str)
        ):
            return f"{where} has no rle {{size: [height, width], counts: str}}"
        tid = inst.get("track_id")
        if tid is not None and not isinstance(tid, int):
            return f"{where} has a track_id that is not an integer"
    return None


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The frame records of a results file, each checked; ExportError (one line) otherwise."""
    records: list[dict[str, Any]] = []
    try:  # bounded lines, depth and numbers (streamseg.tools.untrusted)
        for n, rec in untrusted.json_lines(path):
            problem = _check_record(rec) or untrusted.results_record_problem(rec)
            if problem:
                raise ExportError(f"{path}:{n}: not a streamseg results record: {problem}")
            records.append(rec)
    except untrusted.UntrustedError as e:
        raise ExportError(str(e)) from None
    if not records:
        raise ExportError(f"{path}: no frames (an empty results file)")
    streams = sorted({str(r.get("stream")) for r in records})
    if len(streams) > 1:
        raise ExportError(
            f"{path}: frames of several streams ({', '.join(streams)}); export one stream's file"
        )
    frames = [r["frame"] for r in records]
    if len(set(frames)) != len(frames):
        raise ExportError(f"{path}: a frame number appears twice")
    return records


def image_ids_from_gt(gt_path: str | Path) -> dict[int, int]:
    """Frame -> image id of a COCO ground truth's images ("frame", else id - 1)."""
    try:
        data = untrusted.read_json(gt_path, what="ground truth")
    except untrusted.UntrustedError as e:
        raise ExportError(str(e)) from None
    try:
        images = data["images"]
        return {int(img.get("frame", img["id"] - 1)): int(img["id"]) for img in images}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ExportError(f"{gt_path}: not COCO ground truth (JSON with images)") from None


# --- COCO results ------------------------------------------------------------------------------


def coco_results(
    records: list[dict[str, Any]], image_ids: dict[int, int] | None = None, first_image_id: int = 1
) -> list[dict[str, Any]]:
    """COCO results list of `records`.

    Image id of frame f: image_ids[f] when given (ExportError for a frame it lacks), else
    f + first_image_id.
    """
    out = []
    for rec in records:
        frame = rec["frame"]
        if image_ids is None:
            image_id = frame + first_image_id
        elif frame in image_ids:
            image_id = image_ids[frame]
        else:
            raise ExportError(f"frame {frame} has no image in the ground truth")
        for inst in rec["instances"]:
            x1, y1, x2, y2 = (float(v) for v in inst["box"])
            det = {
                "image_id": image_id,
                "category_id": inst["label"],
                "segmentation": inst["rle"],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(inst["score"]),
            }
            if inst.get("track_id") is not None:
                det["track_id"] = inst["track_id"]
            out.append(det)
    return out


# --- polygons ----------------------------------------------------------------------------------


def mask_polygons(mask: np.ndarray) -> list[dict[str, Any]]:
    """The outlines of a binary mask, as cv2.findContours(RETR_CCOMP, CHAIN_APPROX_SIMPLE) sees
    them.

    Args:
        mask: bool or uint8[H, W], nonzero = in the mask.

    Returns:
        One {"exterior": ring, "holes": [ring, ...]} per connected part, where a ring is
        [[x, y], ...] of int pixel coordinates (column, row) of the boundary pixels; an
        exterior runs along the part's outermost pixels, a hole ring along the part's pixels
        around the hole (those pixels are in the mask). A part inside a hole is a part of
        its own.
    """
    contours, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    links = hierarchy[0]  # per contour: next, previous, first child, parent
    parts = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue  # a hole: listed with its parent
        holes, child = [], int(links[i][2])
        while child != -1:
            holes.append(contours[child].reshape(-1, 2).tolist())
            child = int(links[child][0])
        parts.append({"exterior": contour.reshape(-1, 2).tolist(), "holes": holes})
    return parts


def polygon_lines(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One record per instance: stream, frame, index (in the frame's instances), label,
    label_name, score, track_id (when present), box, polygons (:func:`mask_polygons`)."""
    for rec in records:
        for i, inst in enumerate(rec["instances"]):
            line = {"stream": rec.get("stream"), "frame": rec["frame"], "index": i}
            line |= {k: inst[k] for k in ("label", "label_name", "score") if k in inst}
            if inst.get("track_id") is not None:
                line["track_id"] = inst["track_id"]
            line["box"] = inst["box"]
            line["polygons"] = mask_polygons(mask_utils.decode(inst["rle"]))
            yield line


# --- PNG masks ---------------------------------------------------------------------------------


def png_values(
    records: list[dict[str, Any]], values: PngValues = "auto"
) -> Literal["track", "index"]:
    """What the PNG pixels hold: "track" ids when every instance has one (values "auto" or
    "track"; ExportError for "track" when some lack one), else "index" + 1."""
    tracked = all(
        isinstance(i.get("track_id"), int) and i["track_id"] >= 1
        for r in records
        for i in r["instances"]
    )
    if values == "track" and not tracked:
        raise ExportError("--png-values track: some instances have no track_id (>= 1)")
    if values == "index" or not tracked:
        return "index"
    return "track"


def frame_id_image(record: dict[str, Any], values: Literal["track", "index"]) -> np.ndarray:
    """uint16[H, W] of one frame: 0 background, else the instance's track id or index + 1;
    where instances overlap the higher score wins (ties: the earlier instance)."""
    image = np.zeros((record["height"], record["width"]), np.uint16)
    insts = record["instances"]
    ids = [i["track_id"] if values == "track" else k + 1 for k, i in enumerate(insts)]
    if max(ids, default=0) > PNG_MAX:
        raise ExportError(f"frame {record['frame']}: id {max(ids)} does not fit a 16-bit PNG")
    # Paint lowest score first, so the highest is painted last (stable: ties keep list order).
    order = sorted(range(len(insts)), key=lambda k: (insts[k]["score"], -k))
    for k in order:
        image[mask_utils.decode(insts[k]["rle"]).astype(bool)] = ids[k]
    return image


def png_name(frame: int) -> str:
    return f"{frame:06d}.png"


# --- writing -----------------------------------------------------------------------------------


def export(
    results: str | Path,
    *,
    coco: str | Path | None = None,
    polygons: str | Path | None = None,
    png_masks: str | Path | None = None,
    gt: str | Path | None = None,
    first_image_id: int = 1,
    values: PngValues = "auto",
) -> list[str]:
    """Write the asked-for exports of a results file; returns one line per output written."""
    if coco is None and polygons is None and png_masks is None:
        raise ExportError("nothing to write: give --coco, --polygons and/or --png-masks")
    records = read_results(results)
    done = []
    if coco is not None:
        image_ids = image_ids_from_gt(gt) if gt is not None else None
        dets = coco_results(records, image_ids, first_image_id)
        _write_text(coco, json.dumps(dets))
        done.append(f"{coco}: {len(dets)} COCO results of {len(records)} frames")
    if polygons is not None:
        lines = [json.dumps(line) for line in polygon_lines(records)]
        _write_text(polygons, "".join(line + "\n" for line in lines))
        done.append(f"{polygons}: polygons of {len(lines)} instances")
    if png_masks is not None:
        kind = png_values(records, values)
        folder = Path(png_masks)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExportError(f"cannot create folder {folder}: {e.strerror}") from None
        for rec in records:
            path = folder / png_name(rec["frame"])
            if not cv2.imwrite(str(path), frame_id_image(rec, kind)):
                raise ExportError(f"cannot write {path}")
        pixel = "track id" if kind == "track" else "instance index + 1"
        done.append(f"{folder}: {len(records)} uint16 PNGs (pixel = {pixel}, 0 = background)")
    return done


def _write_text(path: str | Path, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror}") from None


# --- command line ------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the `export` command to the CLI's subparsers."""
    p = sub.add_parser(
        "export",
        help="write a results file as COCO results, polygons or PNG masks",
        description="Convert a results file (.jsonl from annotate/watch) into what other tools "
        "read directly: a COCO results list (pycocotools COCO.loadRes), OpenCV polygons with "
        "holes, and per-frame uint16 PNG id masks. Formats: docs/tracking.md.",
    )
    p.add_argument("results", help="results file (.jsonl)")
    p.add_argument("--coco", metavar="OUT.json", help="COCO results list")
    p.add_argument(
        "--gt",
        metavar="GT.json",
        help="COCO ground truth whose image ids --coco uses (matched by frame)",
    )
    p.add_argument(
        "--first-image-id",
        type=int,
        default=1,
        metavar="N",
        help="without --gt, image id = frame + N (default %(default)s, as `streamseg synth`)",
    )
    p.add_argument("--polygons", metavar="OUT.jsonl", help="polygons, one line per instance")
    p.add_argument("--png-masks", metavar="DIR", help="one uint16 PNG per frame into DIR")
    p.add_argument(
        "--png-values",
        choices=("auto", "track", "index"),
        default="auto",
        help="PNG pixel values: track ids, instance index + 1, or auto: track ids when every "
        "instance has one (default %(default)s)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    try:
        lines = export(
            args.results,
            coco=args.coco,
            polygons=args.polygons,
            png_masks=args.png_masks,
            gt=args.gt,
            first_image_id=args.first_image_id,
            values=args.png_values,
        )
    except ExportError as e:
        print(f"streamseg export: error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(f"wrote {line}")
    return 0
