"""COCO-format instance-segmentation datasets for `streamseg train --coco`: checking, class
mapping, the held-out split, and one image with its training targets.

`load_dataset` checks the whole annotations file before training starts. What it does with each
kind of problem:

  error (DatasetError, one line naming the file, the item and the fix):
    unreadable JSON or missing "images" / "annotations" / "categories"; no categories;
    a category, image or annotation id used twice; two categories of the same name;
    an annotation of an unknown image id or category id; image files missing under the
    images folder; a segmentation that is neither polygons nor an RLE of its image's size;
    no usable annotation at all (e.g. a detection-only dataset with boxes but no masks).
    Found only when the image is first read (reading every image up front would take as
    long as an epoch): an unreadable image file, or one of another size than its entry says.
  skipped and counted (reported in the summary line):
    annotations without a usable segmentation (none, empty, every polygon under 3 points,
    zero area); crowd annotations (iscrowd = 1), which Mask R-CNN cannot learn from (it has
    no "ignore" region): they are not training targets, but stay in the held-out ground
    truth, where pycocotools treats them as regions to ignore.
  kept: images without annotations train as background-only images.

Category ids map to contiguous label ids 1..K in order of category id; label 0 is background.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from streamseg.tools import untrusted
from streamseg.wire.fields import MAX_INT

BACKGROUND = "__background__"


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message names the file, the item and the fix."""


@dataclass(frozen=True)
class Annotation:
    label: int
    """Contiguous label id 1..K (not the file's category id)."""
    rle: dict[str, Any]
    """The instance's mask as compressed COCO RLE of its image's size (polygons converted)."""
    iscrowd: bool


@dataclass(frozen=True)
class Image:
    id: int
    """The image id in the annotations file."""
    path: Path
    width: int
    height: int
    annotations: tuple[Annotation, ...]


@dataclass(frozen=True)
class Dataset:
    names: tuple[str, ...]
    """Label names by label id; index 0 is "__background__"."""
    category_ids: tuple[int, ...]
    """The file's category id of each label 1..K (category_ids[label - 1])."""
    images: tuple[Image, ...]
    """Every image of the file, in order of image id."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Annotations not used for training, by reason."""

    def summary(self) -> str:
        """One line: images, instances, classes, and what was skipped."""
        anns = [a for im in self.images for a in im.annotations]
        used = sum(not a.iscrowd for a in anns)
        empty = sum(not im.annotations for im in self.images)
        text = (
            f"{len(self.images)} images ({empty} without annotations), {used} instances, "
            f"{len(self.names) - 1} classes: {', '.join(self.names[1:])}"
        )
        skipped = dict(self.skipped)
        crowd = len(anns) - used
        if crowd:
            skipped["crowd, not trained on"] = crowd
        if skipped:
            text += "; skipped " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        return text


# -- checking ----------------------------------------------------------------------------------


def read_annotations(path: str | Path) -> dict[str, Any]:
    """The annotations file as a dict; DatasetError for a missing or malformed one."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotations file not found: {path}")
    try:  # bounded: nesting, integers within int64, finite numbers (streamseg.tools.untrusted)
        data = untrusted.read_json(path, what="annotations file")
    except untrusted.UntrustedError as e:
        raise DatasetError(str(e)) from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a COCO annotations file (a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f'{path}: not a COCO instances file: needs a "{key}" list '
                "(COCO instance-segmentation format)"
            )
    return data


def _unique_ids(items: list[Any], what: str, where: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not untrusted.is_int(item.get("id")):
            raise DatasetError(f"{where}: {what} #{n} has no integer id")
        if abs(item["id"]) > MAX_INT:
            raise DatasetError(f"{where}: {what} #{n} has an id out of range (64-bit integers)")
        if item["id"] in out:
            raise DatasetError(f"{where}: {what} id {item['id']} is used twice")
        out[item["id"]] = item
    return out


def _image_size(image: dict[str, Any], path: Path, where: str) -> tuple[int, int]:
    """(width, height) from the file's entry, else from the image itself."""
    w, h = image.get("width"), image.get("height")
    if w is None and h is None:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise DatasetError(f"{where}: image id {image['id']}: cannot read {path}")
        w, h = int(pixels.shape[1]), int(pixels.shape[0])
    try:  # capped as the wire caps frames: masks of this size are decoded in memory
        return untrusted.side(w, "width"), untrusted.side(h, "height")
    except untrusted.UntrustedError as e:
        raise DatasetError(f"{where}: image id {image['id']}: {e}") from None


def _to_rle(seg: Any, width: int, height: int) -> dict[str, Any] | None:
    """A segmentation (polygons or RLE) as one compressed RLE; None when it has no usable shape;
    ValueError when it is neither form or not of this image's size."""
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
            raise ValueError('an RLE needs "size": [height, width] and "counts"')
        # runs that do not add up to the image would be decoded out of bounds (pycocotools)
        untrusted.check_rle(seg, height, width)
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(counts, list) else seg
        if isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    elif isinstance(seg, list):
        if seg and all(isinstance(v, (int, float)) for v in seg):
            seg = [seg]  # one polygon written flat, as some tools do
        numbers = (int, float)
        if not all(isinstance(p, list) and all(isinstance(v, numbers) for v in p) for p in seg):
            raise ValueError("polygons must be lists of numbers [x1, y1, x2, y2, ...]")
        polys = [[float(v) for v in p] for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return None
        # pycocotools rasterises in C without checks: NaN or 1e12 crashed the process
        untrusted.check_polygons(polys, height, width, "its segmentation")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif seg is None:
        return None
    else:
        raise ValueError("segmentation must be polygons (a list) or an RLE (an object)")
    if int(mask_utils.area(rle)) == 0:
        return None
    return rle


def _inside(name: str) -> bool:
    """Whether an image's file_name stays inside the images folder, as written: relative, no
    '..' part, no NUL (links the folder's owner made are theirs to make)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and "\0" not in name and not name.startswith("/") and ".." not in parts


def check_dataset(data: dict[str, Any], images_dir: str | Path, *, where: str) -> Dataset:
    """Check a parsed annotations file against its images folder (see the module docstring for
    what is an error and what is skipped). `where` names the file in messages."""
    images_dir = Path(images_dir)
    cats = _unique_ids(data["categories"], "category", where)
    if not cats:
        raise DatasetError(f"{where}: no categories: instance segmentation needs at least one")
    category_ids = tuple(sorted(cats))
    names = [str(cats[c].get("name", c)) for c in category_ids]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        raise DatasetError(f"{where}: two categories are named {dup[0]!r}; names must be unique")
    label_of = {c: i + 1 for i, c in enumerate(category_ids)}
    images = _unique_ids(data["images"], "image", where)
    if not images:
        raise DatasetError(f"{where}: no images")
    anns = _unique_ids(data["annotations"], "annotation", where)
    if not anns:
        raise DatasetError(f"{where}: no annotations: nothing to learn from")

    for img in images.values():
        name = img.get("file_name")
        if isinstance(name, str) and not _inside(name):
            raise DatasetError(
                f"{where}: image id {img['id']}: file_name {name[:80]!r} leads outside the "
                f"images folder; give a path relative to {images_dir}, without '..'"
            )
    missing = []
    for img in images.values():
        name = img.get("file_name")
        if not isinstance(name, str) or not (images_dir / name).is_file():
            missing.append(str(name)[:80])
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DatasetError(
            f"{where}: {len(missing)} of {len(images)} images are not in {images_dir}: {shown} "
            "(file_name is relative to the images folder)"
        )

    sizes = {i: _image_size(img, images_dir / img["file_name"], where) for i, img in images.items()}
    per_image: dict[int, list[Annotation]] = {i: [] for i in images}
    skipped: Counter[str] = Counter()
    for ann in anns.values():
        image_id = ann.get("image_id")
        if not untrusted.is_int(image_id) or image_id not in images:
            raise DatasetError(
                f"{where}: annotation {ann['id']} is of image id {untrusted.show(image_id)}, "
                "which is not in images"
            )
        category = ann.get("category_id")
        if not untrusted.is_int(category) or category not in label_of:
            raise DatasetError(
                f"{where}: annotation {ann['id']} has category id {untrusted.show(category)}, "
                f"which is not in categories (ids {', '.join(map(str, category_ids))})"
            )
        w, h = sizes[ann["image_id"]]
        try:
            rle = _to_rle(ann.get("segmentation"), w, h)
        except ValueError as e:  # untrusted.UntrustedError included
            raise DatasetError(f"{where}: annotation {ann['id']}: {e}") from None
        if rle is None:
            skipped["without a usable segmentation"] += 1
            continue
        crowd = bool(ann.get("iscrowd", 0))
        per_image[ann["image_id"]].append(Annotation(label_of[ann["category_id"]], rle, crowd))
    if not any(not a.iscrowd for v in per_image.values() for a in v):
        raise DatasetError(
            f"{where}: no annotation has a usable mask (segmentation polygons or RLE); "
            "boxes alone cannot train Mask R-CNN"
        )
    return Dataset(
        names=(BACKGROUND, *names),
        category_ids=category_ids,
        images=tuple(
            Image(i, images_dir / images[i]["file_name"], *sizes[i], tuple(per_image[i]))
            for i in sorted(images)
        ),
        skipped=dict(skipped),
    )


def load_dataset(images_dir: str | Path, annotations: str | Path) -> Dataset:
    """Read and check a COCO instances file and its images folder."""
    if not Path(images_dir).is_dir():
        raise DatasetError(f"images folder not found: {images_dir}")
    return check_dataset(read_annotations(annotations), images_dir, where=str(annotations))


# -- split ---------------------------------------------------------------------------------------


def split(n_images: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) image indices: a seeded shuffle, round(n * val_fraction) held out
    (at least one when val_fraction > 0, and never all). Same arguments, same split."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = 0
    if val_fraction > 0 and n_images >= 2:
        n_val = min(n_images - 1, max(1, round(n_images * val_fraction)))
    order = np.random.default_rng([seed, n_images]).permutation(n_images)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


# -- one image -----------------------------------------------------------------------------------


def read_image(image: Image) -> np.ndarray:
    """uint8[H, W, 3] RGB pixels of `image`; DatasetError when unreadable or of another size
    than the annotations file says."""
    bgr = cv2.imread(str(image.path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot read image {image.path} (not an image file, or damaged)")
    h, w = bgr.shape[:2]
    if (w, h) != (image.width, image.height):
        raise DatasetError(
            f"{image.path} is {w}x{h}, but its annotations say {image.width}x{image.height}"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """float32[N, 4] xyxy boxes, x2/y2 exclusive, tight around each of masks (bool[N, H, W],
    none empty)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def training_sample(
    image: Image, *, flip: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image and its targets (crowd annotations left out), flipped left-right if `flip`.

    Returns pixels uint8[H, W, 3] RGB, labels int64[N] (1..K), masks uint8[N, H, W] (0/1),
    boxes float32[N, 4] (xyxy, px, tight around each mask). N may be 0.
    """
    pixels = read_image(image)
    anns = [a for a in image.annotations if not a.iscrowd]
    labels = np.array([a.label for a in anns], np.int64)
    if anns:
        masks = mask_utils.decode([a.rle for a in anns]).transpose(2, 0, 1)
    else:
        masks = np.zeros((0, image.height, image.width), np.uint8)
    if flip:
        pixels, masks = pixels[:, ::-1], masks[:, :, ::-1]
    pixels, masks = np.ascontiguousarray(pixels), np.ascontiguousarray(masks)
    return pixels, labels, masks, boxes_from_masks(masks)


# -- held-out ground truth -------------------------------------------------------------------


def ground_truth(data: Dataset, indices: Sequence[int]) -> dict[str, Any]:
    """COCO ground truth of the images `indices`, as `streamseg eval` reads it: image k of the
    list is frame k (image id k + 1), category ids are the label ids, masks are RLE. Crowd
    annotations keep iscrowd = 1 (ignored regions in the evaluation)."""
    images, annotations = [], []
    for frame, index in enumerate(indices):
        img = data.images[index]
        images.append(
            {
                "id": frame + 1,
                "frame": frame,
                "file_name": str(img.path),
                "source_id": img.id,
                "width": img.width,
                "height": img.height,
            }
        )
        for ann in img.annotations:
            x, y, w, h = (float(v) for v in mask_utils.toBbox(ann.rle))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": frame + 1,
                    "category_id": ann.label,
                    "segmentation": {
                        "size": [int(v) for v in ann.rle["size"]],
                        "counts": ann.rle["counts"].decode("ascii"),
                    },
                    "area": float(mask_utils.area(ann.rle)),
                    "bbox": [x, y, w, h],
                    "iscrowd": int(ann.iscrowd),
                }
            )
    categories = [{"id": i, "name": n} for i, n in enumerate(data.names) if i > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(n_images / batch_size))
