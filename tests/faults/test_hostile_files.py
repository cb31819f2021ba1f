"""Forged files handed to `streamseg train --coco`, `export` and `eval`: each is refused with
exit 2 and one line naming the file and the thing, never a traceback, a crash inside
pycocotools or a huge allocation. Each command runs as a user runs it, in a process of its own
with its address space capped (a 200000x200000 frame would ask for 74.5 GiB)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from streamseg import cli

pytestmark = pytest.mark.slow  # (each case a streamseg process)

MEMORY_CAP = 4 << 30  # bytes of address space each command may use (torch imports fit)
TINY = """\
[model]
arch = "shapes_mobilenet_v3_fpn"
weights = "random"
labels = ["__background__", "circle", "square", "triangle"]
min_size = 96
max_size = 128
[runtime]
device = "cpu"
threads = 1
"""


def streamseg(tmp: Path, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # (its thread stacks fit the cap)
    return subprocess.run(
        [sys.executable, "-m", "streamseg.cli", *map(str, args)],
        cwd=tmp, env=env, preexec_fn=cap, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def one_line_refusal(out: subprocess.CompletedProcess, command: str, message: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert out.stderr.startswith(f"streamseg {command}: error: "), out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in out.stderr, out.stderr


# -- train --coco -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 images 128x96 from `streamseg synth --images`, RLE and polygon masks."""
    root = tmp_path_factory.mktemp("coco")
    argv = ["synth", "--images", str(root), "--count", "4", "--size", "128x96", "--seed", "5"]
    assert cli.main([*argv, "--segmentation", "mixed"]) == 0
    (root / "tiny.toml").write_text(TINY)
    return root


def first(data: dict, form: type) -> dict:
    return next(a for a in data["annotations"] if isinstance(a["segmentation"], form))


def polygon_at(value: float) -> Callable[[dict, Path], None]:
    def change(data: dict, root: Path) -> None:
        first(data, list)["segmentation"] = [[10.0, 10.0, value, 10.0, 30.0, 40.0]]

    return change


def long_runs(data: dict, root: Path) -> None:
    """An RLE of its image's declared size whose runs cover a 200x200 image."""
    big = mask_utils.encode(np.asfortranarray(np.eye(200, dtype=np.uint8)))
    first(data, dict)["segmentation"] = {"size": [96, 128], "counts": big["counts"].decode()}


def outside(data: dict, root: Path) -> None:
    """file_name leading out of the images folder, to an image that exists there."""
    out = root.parent / f"{root.name}-elsewhere"
    out.mkdir(exist_ok=True)
    name = data["images"][0]["file_name"]
    shutil.copy(root / "images" / name, out / "stolen.png")
    data["images"][0]["file_name"] = f"../../{root.name}-elsewhere/stolen.png"


CASES = {
    "nan polygon": (polygon_at(float("nan")), "NaN is not a JSON number"),
    "1e12 polygon": (polygon_at(1e12), "polygon point outside"),
    "huge id": (None, "integer out of range"),
    "deep": (None, "JSON nested too deep"),
    "long runs": (long_runs, "runs cover 40000 pixels, its image 12288"),
    "outside": (outside, "leads outside the images folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_refuses_a_hostile_dataset(case, dataset, tmp_path):
    change, message = CASES[case]
    root = tmp_path / "d"
    shutil.copytree(dataset / "images", root / "images")
    text = (dataset / "annotations.json").read_text()
    if case == "huge id":
        text = text.replace('"id": 1,', '"id": 1' + "0" * 5000 + ",", 1)
    elif case == "deep":
        text = '{"images": ' + "[" * 200_000 + "]" * 200_000 + "}"
    else:
        data = json.loads(text)
        change(data, root)
        text = json.dumps(data)  # (NaN written as JSON's NaN, as Python writes it)
    (root / "annotations.json").write_text(text)
    out = streamseg(
        tmp_path, "train", "--coco", root / "images", root / "annotations.json",
        "--config", dataset / "tiny.toml", "--out", "m.pt", "--epochs", "1",
    )  # fmt: skip
    one_line_refusal(out, "train", message)
    assert str(root / "annotations.json") in out.stderr
    assert not (tmp_path / "m.pt").exists()


# -- export and eval ----------------------------------------------------------------------------


def rle_of(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


def record(frame: int = 0, width: int = 60, height: int = 40, **inst: object) -> dict:
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:15] = True
    instance = {"label": 1, "label_name": "circle", "score": 0.9, "box": [5, 5, 15, 15],
                "rle": rle_of(mask), "track_id": 1} | inst  # fmt: skip
    return {"stream": "s", "frame": frame, "pts": 0.0, "width": width, "height": height,
            "instances": [instance]}  # fmt: skip


@pytest.fixture()
def gt(tmp_path) -> Path:
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:15] = True
    data = {
        "images": [{"id": 1, "frame": 0, "width": 60, "height": 40, "file_name": "f#0"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle_of(mask),
                         "area": 100.0, "bbox": [5, 5, 10, 10], "iscrowd": 0, "track_id": 1}],
        "categories": [{"id": 1, "name": "circle"}],
    }  # fmt: skip
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


BAD_RESULTS = {
    "deep": ('{"frame": ' + "[" * 200_000 + "]" * 200_000 + "}", "JSON nested too deep"),
    "huge int": ('{"frame": 1' + "0" * 5000 + "}", "integer out of range"),
    "bad rle": (json.dumps(record(rle={"size": [40, 60], "counts": "0~~~~"})), "COCO's alphabet"),
    "long rle": (
        json.dumps(record(rle={"size": [40, 60], "counts": rle_of(np.eye(90))["counts"]})),
        "runs cover 8100 pixels, its image 2400",
    ),
    "huge frame": (
        json.dumps(
            record(width=200_000, height=200_000, rle={"size": [200_000, 200_000], "counts": "0"})
        ),
        '"height" must be an integer in [1, 16384], got 200000',
    ),  # fmt: skip
    "nan score": (json.dumps(record(score=float("nan"))), "NaN is not a JSON number"),
}


@pytest.mark.parametrize("command", ["export", "eval"])
@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_export_and_eval_refuse_a_forged_results_file(case, command, gt, tmp_path):
    text, message = BAD_RESULTS[case]
    results = tmp_path / "r.jsonl"
    results.write_text(text + "\n")
    if command == "export":
        out = streamseg(tmp_path, "export", results, "--png-masks", "png", "--polygons", "p.jsonl")
    else:
        out = streamseg(tmp_path, "eval", results, "--gt", gt, "--tracks")
    one_line_refusal(out, command, message)
    assert str(results) in out.stderr


def test_eval_refuses_forged_ground_truth(gt, tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(record()) + "\n")
    assert streamseg(tmp_path, "eval", results, "--gt", gt).returncode == 0  # the honest pair
    data = json.loads(gt.read_text())
    data["annotations"][0]["segmentation"] = [[10.0, 10.0, 1e12, 10.0, 30.0, 40.0]]
    gt.write_text(json.dumps(data))
    one_line_refusal(streamseg(tmp_path, "eval", results, "--gt", gt), "eval", "polygon point")
