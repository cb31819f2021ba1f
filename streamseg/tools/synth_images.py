"""A COCO instance-segmentation image dataset of synthetic shapes: image files plus one
instances JSON, in the layout labelling tools export and `streamseg train --coco` reads.

    DIR/images/000001.png ...
    DIR/annotations.json      images (file_name relative to DIR/images), annotations (RLE or
                              polygons), categories

    streamseg train --coco DIR/images DIR/annotations.json ...

Frames come from `streamseg.tools.synth.random_sample`, seeded by (seed, index), so the same
arguments write the same dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from streamseg.tools import synth

Segmentation = Literal["rle", "polygon", "mixed"]
SEGMENTATIONS: tuple[str, ...] = ("rle", "polygon", "mixed")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg")


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons [[x1, y1, x2, y2, ...], ...] of the outer contours of mask (bool[H, W]),
    in pixel-corner coordinates; contours of under 3 points are left out. Holes are lost,
    as in most polygon labelling tools."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # cv2 gives pixel centres; a polygon through them covers about half a pixel less on
    # every side than the mask, so move each point outwards by half a pixel.
    polys = []
    for c in contours:
        if len(c) < 3:
            continue
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5
        centre = pts.mean(axis=0)
        pts += np.sign(pts - centre) * 0.5
        polys.append([round(float(v), 2) for v in pts.reshape(-1)])
    return polys


def write_image_dataset(
    out: str | Path,
    *,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (640, 480),
    segmentation: Segmentation = "rle",
    image_format: str = "png",
) -> dict[str, Any]:
    """Write `count` images to OUT/images and their annotations to OUT/annotations.json;
    returns the COCO dict. `segmentation`: "rle" (exact), "polygon" (outer contours), or
    "mixed" (images alternate: even image ids RLE, odd ones polygons)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}")
    width, height = size
    if width < 32 or height < 32:
        raise ValueError(f"size must be at least 32x32, got {width}x{height}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        image_id = i + 1
        sample = synth.random_sample(np.random.default_rng([seed, i]), width, height)
        name = f"{image_id:06d}.{image_format}"  # relative to the images folder, as in COCO
        if not cv2.imwrite(
            str(out / "images" / name), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
        ):
            raise ValueError(f"cannot write {out / 'images' / name}")
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        anns = synth.coco_annotations(sample, image_id=image_id, first_id=len(annotations) + 1)
        if segmentation == "polygon" or (segmentation == "mixed" and image_id % 2):
            for ann, mask in zip(anns, sample.masks, strict=True):
                ann["segmentation"] = mask_polygons(mask)
        annotations += anns
    coco = {
        "info": {"generator": "streamseg.tools.synth_images", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(synth.CLASSES)],
    }
    (out / "annotations.json").write_text(json.dumps(coco))
    return coco
