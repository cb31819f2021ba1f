"""Property tests of the readers of user files (streamseg.tools.untrusted and its callers):
whatever a COCO dataset, ground truth or results file holds, `coco_data.load_dataset`,
`export.read_results`, `evaluate.load_results` and `evaluate.load_gt` return something usable
or raise their one-line error (never another exception), within a memory bound; and what they
accept can be used: every accepted mask decodes to its frame's size.

Inputs: (a) raw texts (random bytes, deep nesting, long integers, non-finite numbers),
(b) valid files with one field replaced by a random JSON value, (c) random COCO RLE strings.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamseg.tools import coco_data, evaluate, export, untrusted

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples in every CI run: a failure there is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FACTOR = 64  # Python objects per byte of JSON read, worst case, with room for messages
SLACK = 8 << 20  # numpy, pycocotools wrappers, one 64x48 image


def within_memory(read: Callable[[], Any], size: int) -> Any:
    """read(), failing if it allocated more than FACTOR x the file's bytes + SLACK at peak."""
    tracemalloc.start()
    try:
        return read()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= FACTOR * size + SLACK, f"peak {peak} bytes for a {size}-byte file"


# -- values -------------------------------------------------------------------------------------

HUGE = st.integers(min_value=-(10**30), max_value=10**30) | st.sampled_from(
    [0, -1, 1, 2**31, 2**63, 16384, 16385, 200_000]
)
NUMBERS = HUGE | st.floats(allow_nan=True, allow_infinity=True)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
RLE_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=130), max_size=40)


def raw_texts() -> st.SearchStrategy[bytes]:
    deep = st.integers(0, 50_000).map(lambda n: ("[" * n + "]" * n).encode())
    digits = st.integers(0, 6000).map(lambda n: ('{"frame": 1' + "0" * n + "}").encode())
    words = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
    constants = words.map(lambda w: b'{"frame": 0, "width": ' + w + b"}")
    return deep | digits | constants | st.binary(max_size=200)


def write(path: Path, data: Any) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def replace_somewhere(doc: Any, path: list[int], value: Any) -> Any:
    """`doc` with the node that `path` (indices taken modulo each container's size) leads to
    replaced by `value`."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc.keys()) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    out[key] = replace_somewhere(doc[key], path[1:], value)
    return out


MUTATION = st.tuples(st.lists(st.integers(0, 100), max_size=6), JSON)


# -- results files --------------------------------------------------------------------------------


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


def results_record() -> dict[str, Any]:
    mask = np.zeros((48, 64), bool)
    mask[5:20, 8:30] = True
    inst = {"label": 1, "label_name": "circle", "score": 0.5, "box": [8, 5, 30, 20],
            "rle": rle_of(mask), "track_id": 3}  # fmt: skip
    return {"stream": "s", "frame": 0, "pts": 0.0, "width": 64, "height": 48, "instances": [inst]}


def check_results_readers(path: Path) -> None:
    size = path.stat().st_size
    for read, error in ((export.read_results, export.ExportError),
                        (evaluate.load_results, evaluate.EvalError)):  # fmt: skip
        try:
            records = within_memory(lambda read=read: read(path), size)
        except error as e:
            assert "\n" not in str(e) and str(e)
            continue
        for rec in records:  # what is accepted decodes to its frame's size
            h, w = rec["height"], rec["width"]
            if h * w > 1 << 20:
                continue  # (valid, but too large to decode for every example)
            for inst in rec["instances"]:
                mask = mask_utils.decode({"size": [h, w], "counts": inst["rle"]["counts"].encode()})
                assert mask.shape == (h, w)
        if read is export.read_results and all(
            r["height"] * r["width"] <= 1 << 20 for r in records
        ):
            for rec in records:
                export.frame_id_image(rec, "index")


@SETTINGS
@given(raw_texts())
def test_results_readers_on_raw_text(tmp_path_factory, text):
    check_results_readers(write(tmp_path_factory.mktemp("r") / "r.jsonl", text + b"\n"))


@SETTINGS
@given(MUTATION)
def test_results_readers_on_a_mutated_record(tmp_path_factory, mutation):
    where, value = mutation
    rec = replace_somewhere(results_record(), where, value)
    text = json.dumps(rec).encode()  # NaN and Infinity as Python writes them
    check_results_readers(write(tmp_path_factory.mktemp("r") / "r.jsonl", text + b"\n"))


@SETTINGS
@given(RLE_TEXT, st.integers(1, 64), st.integers(1, 64))
def test_rle_check_agrees_with_decoding(counts, height, width):
    """An RLE check_rle accepts decodes to exactly its size with its runs' pixels set."""
    rle = {"size": [height, width], "counts": counts}
    try:
        untrusted.check_rle(rle, height, width)
    except untrusted.UntrustedError:
        return
    runs = untrusted.rle_runs(counts)
    mask = mask_utils.decode({"size": [height, width], "counts": counts.encode()})
    assert mask.shape == (height, width)
    assert int(mask.sum()) == int(runs[1::2].sum())


# -- COCO datasets and ground truth --------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "a.png"), np.full((48, 64, 3), 90, np.uint8))
    return folder


def dataset() -> dict[str, Any]:
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle_of(mask),
             "area": 600.0, "bbox": [10, 10, 30, 20], "iscrowd": 0, "track_id": 1},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 100.0,
             "segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0, 1.0, 20.0]],
             "bbox": [1, 1, 19, 19]},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}],
    }  # fmt: skip


def check_dataset_readers(images: Path, path: Path) -> None:
    size = path.stat().st_size
    try:
        data = within_memory(lambda: coco_data.load_dataset(images, path), size)
    except coco_data.DatasetError as e:
        assert "\n" not in str(e) and str(e)
    else:  # what is accepted trains: every image's targets are built
        for image in data.images:
            pixels, labels, masks, boxes = coco_data.training_sample(image)
            assert masks.shape == (len(labels), image.height, image.width)
    try:
        gt = within_memory(lambda: evaluate.load_gt(path), size)
    except evaluate.EvalError as e:
        assert "\n" not in str(e) and str(e)
    else:  # what is accepted evaluates
        for ann in gt.dataset["annotations"]:
            assert gt.annToMask(ann).shape == (gt.imgs[ann["image_id"]]["height"],
                                               gt.imgs[ann["image_id"]]["width"])  # fmt: skip


@SETTINGS
@given(raw_texts())
def test_dataset_readers_on_raw_text(images, tmp_path_factory, text):
    check_dataset_readers(images, write(tmp_path_factory.mktemp("d") / "ann.json", text))


@SETTINGS
@given(MUTATION)
def test_dataset_readers_on_a_mutated_dataset(images, tmp_path_factory, mutation):
    where, value = mutation
    data = replace_somewhere(dataset(), where, value)
    check_dataset_readers(images, write(tmp_path_factory.mktemp("d") / "ann.json", data))


def test_a_valid_dataset_and_results_pass(images, tmp_path):
    """The unmutated files are accepted (so the properties above test refusals of changes)."""
    data = coco_data.load_dataset(images, write(tmp_path / "ann.json", dataset()))
    assert len(data.images[0].annotations) == 2
    assert evaluate.load_gt(tmp_path / "ann.json").imgs[1]["width"] == 64
    path = write(tmp_path / "r.jsonl", json.dumps(results_record()).encode() + b"\n")
    assert export.read_results(path)[0]["instances"][0]["track_id"] == 3
    assert math.isclose(evaluate.load_results(path)[0]["instances"][0]["score"], 0.5)
