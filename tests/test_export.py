"""Each export loaded by the tool it is for: pycocotools, OpenCV, PNG readers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.tools import export as ex
from streamseg.tools import synth


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


def instance(mask: np.ndarray, label: int = 1, score: float = 0.9, track_id: int | None = None):
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    inst = {"label": label, "label_name": "x", "score": score, "rle": rle(mask), "box": box}
    if track_id is not None:
        inst["track_id"] = track_id
    return inst


def record(frame: int, instances: list[dict], h: int = 40, w: int = 60) -> dict:
    return {"stream": "s", "frame": frame, "pts": frame / 30, "width": w, "height": h,
            "instances": instances}  # fmt: skip


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ring_with_island(h: int = 40, w: int = 60) -> np.ndarray:
    """A thick ring (a hole in the middle) with a small island inside the hole."""
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (30, 20), 15, 1, -1)
    cv2.circle(m, (30, 20), 8, 0, -1)
    m[19:22, 29:32] = 1
    return m.astype(bool)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, dict]:
    """A synth clip's ground truth and perfect results from it (track ids = gt ids)."""
    folder = tmp_path_factory.mktemp("clip")
    coco = synth.write_clip(folder / "c.mp4", folder / "c.json", seed=4, frames=6, size=(160, 120))
    records = []
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        insts = [instance(mask_utils.decode(a["segmentation"]), a["category_id"], 0.9,
                          a["track_id"]) for a in anns]  # fmt: skip
        records.append(record(img["frame"], insts, 120, 160))
    assert sum(len(r["instances"]) for r in records) > 0
    return folder / "c.json", {
        "records": records,
        "results": write_jsonl(folder / "r.jsonl", records),
    }


def test_coco_export_loads_and_scores_against_synth_ground_truth(clip, tmp_path):
    gt_path, data = clip
    out = tmp_path / "dets.json"
    ex.export(data["results"], coco=out)
    dets = json.loads(out.read_text())
    gt = COCO(str(gt_path))
    dt = gt.loadRes(str(out))
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    assert {d["image_id"] for d in dets} == {a["image_id"] for a in gt.dataset["annotations"]}
    assert all("track_id" in d for d in dets)
    for iou_type in ("segm", "bbox"):
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)
    # The same ids through --gt; another numbering through --first-image-id.
    ex.export(data["results"], coco=tmp_path / "g.json", gt=gt_path)
    assert json.loads((tmp_path / "g.json").read_text()) == dets
    ex.export(data["results"], coco=tmp_path / "z.json", first_image_id=0)
    zero_based = json.loads((tmp_path / "z.json").read_text())
    assert [d["image_id"] for d in zero_based] == [d["image_id"] - 1 for d in dets]


def test_coco_export_refuses_frames_missing_from_gt(clip, tmp_path):
    gt_path, _ = clip
    results = write_jsonl(tmp_path / "r.jsonl", [record(99, [], 120, 160)])
    with pytest.raises(ex.ExportError, match="frame 99 has no image"):
        ex.export(results, coco=tmp_path / "x.json", gt=gt_path)


def test_polygons_round_trip_with_holes(tmp_path):
    mask = ring_with_island()
    parts = ex.mask_polygons(mask)
    assert sorted(len(p["holes"]) for p in parts) == [0, 1]  # the ring (1 hole), the island
    results = write_jsonl(tmp_path / "r.jsonl", [record(3, [instance(mask, track_id=5)])])
    out = tmp_path / "p.jsonl"
    ex.export(results, polygons=out)
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert (line["frame"], line["index"], line["track_id"], line["label"]) == (3, 0, 5, 1)
    # OpenCV re-rasterises the rings to the same mask, as docs/tracking.md tells a reader:
    # per part, fill the exterior and draw its ring, clear the holes and draw their rings back.
    back = np.zeros(mask.shape, np.uint8)
    for part in line["polygons"]:
        canvas = np.zeros(mask.shape, np.uint8)
        exterior = np.array(part["exterior"], np.int32)
        cv2.fillPoly(canvas, [exterior], 1)
        cv2.polylines(canvas, [exterior], True, 1)
        holes = [np.array(h, np.int32) for h in part["holes"]]
        if holes:
            cv2.fillPoly(canvas, holes, 0)
            cv2.polylines(canvas, holes, True, 1)
        back |= canvas
    assert np.array_equal(back.astype(bool), mask)
    assert ex.mask_polygons(np.zeros((4, 4), bool)) == []


def test_png_masks_read_back(tmp_path):
    a = np.zeros((40, 60), bool)
    a[5:25, 5:25] = True
    b = np.zeros((40, 60), bool)
    b[15:35, 15:35] = True  # overlaps a; b scores higher
    records = [
        record(0, [instance(b, score=0.9, track_id=7), instance(a, score=0.6, track_id=3)]),
        record(1, []),
    ]
    results = write_jsonl(tmp_path / "r.jsonl", records)
    ex.export(results, png_masks=tmp_path / "png")
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["000000.png", "000001.png"]
    img = cv2.imread(str(tmp_path / "png" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (40, 60)
    expect = np.zeros((40, 60), np.uint16)
    expect[mask_utils.decode(records[0]["instances"][1]["rle"]).astype(bool)] = 3
    expect[mask_utils.decode(records[0]["instances"][0]["rle"]).astype(bool)] = 7
    assert np.array_equal(img, expect)
    assert not cv2.imread(str(tmp_path / "png" / "000001.png"), cv2.IMREAD_UNCHANGED).any()
    # Without track ids: instance index + 1; higher score still wins.
    for inst in records[0]["instances"]:
        del inst["track_id"]
    results = write_jsonl(tmp_path / "r2.jsonl", records)
    ex.export(results, png_masks=tmp_path / "idx")
    img = cv2.imread(str(tmp_path / "idx" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(img, np.where(expect == 7, 1, np.where(expect == 3, 2, 0)))
    with pytest.raises(ex.ExportError, match="no track_id"):
        ex.export(results, png_masks=tmp_path / "t", values="track")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no frames"),
        ("not json\n", r"r.jsonl:1: not a JSON line"),
        ('{"frame": 0}\n', r'r.jsonl:1: not a streamseg results record: no integer "width"'),
        (json.dumps(record(0, [{"label": 1}])) + "\n", "instance 0 has no integer label"),
        (json.dumps(record(0, [{**instance(np.eye(40, 60, dtype=bool)),
                                "rle": {"size": [1, 1], "counts": "0"}}])) + "\n",
         "instance 0 has no rle"),
        (json.dumps(record(0, [])) + "\n" + json.dumps({**record(1, []), "stream": "t"}) + "\n",
         r"several streams \(s, t\)"),
    ],
)  # fmt: skip
def test_malformed_results_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(ex.ExportError, match=message):
        ex.export(path, coco=tmp_path / "x.json")


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    ex.register(parser.add_subparsers())

    def run(*argv: str) -> int:
        args = parser.parse_args(["export", *argv])
        return args.func(args)

    assert run(str(tmp_path / "missing.jsonl"), "--coco", str(tmp_path / "x.json")) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("streamseg export: error: cannot read results file") and err.count("\n") == 1
    )
    results = write_jsonl(tmp_path / "r.jsonl", [record(0, [instance(ring_with_island())])])
    assert run(str(results)) == 2
    assert "nothing to write" in capsys.readouterr().err
    out = tmp_path / "o"
    assert run(str(results), "--coco", str(out) + ".json", "--polygons", str(out) + ".jsonl",
               "--png-masks", str(out)) == 0  # fmt: skip
    assert capsys.readouterr().out.count("wrote ") == 3
    assert (out / "000000.png").is_file()
