"""`streamseg train --coco`: a tiny COCO dataset written by `streamseg synth --images`, real
training on it, exact resume, the dataset's names in the checkpoint, and the one-line errors
for broken datasets."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamseg import cli
from streamseg.config import ConfigError, label_name, load_config
from streamseg.inference.model import (
    CLASS_LAYERS,
    build_from_config,
    image_tensor,
    load_for_finetuning,
    load_model,
    read_checkpoint,
)
from streamseg.shipped import weights_path
from streamseg.tools import coco_data, synth
from streamseg.tools.train import TrainConfig
from streamseg.tools.train_coco import train_coco

SIZE = (128, 96)
CONFIG = """\
[model]
arch = "shapes_mobilenet_v3_fpn"
weights = "random"
labels = ["__background__", "circle", "square", "triangle"]
score_threshold = 0.3
detections_per_img = 10
min_size = 96
max_size = 128
[runtime]
device = "cpu"
threads = 1
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 images 128x96, alternately RLE and polygon masks, via the CLI."""
    root = tmp_path_factory.mktemp("coco")
    argv = ["synth", "--images", str(root), "--count", "6", "--size", "128x96", "--seed", "3"]
    assert cli.main([*argv, "--segmentation", "mixed"]) == 0
    return root


@pytest.fixture(scope="module")
def two_classes(dataset, tmp_path_factory) -> Path:
    """The same images, labelled with two classes of other ids and names (triangles dropped)."""
    root = tmp_path_factory.mktemp("coco2")
    data = json.loads((dataset / "annotations.json").read_text())
    ids = {synth.SQUARE: 3, synth.CIRCLE: 7}
    data["categories"] = [{"id": 3, "name": "box"}, {"id": 7, "name": "disc"}]
    data["annotations"] = [
        {**a, "category_id": ids[a["category_id"]]}
        for a in data["annotations"]
        if a["category_id"] in ids
    ]
    (root / "annotations.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(CONFIG)
    return path


def _train_cfg(**kw) -> TrainConfig:
    return TrainConfig(
        **{"batch_size": 2, "lr": 2e-3, "warmup": 0, "checkpoint_every": 100, "log_every": 100} | kw
    )


def test_written_dataset_loads_with_both_mask_forms(dataset):
    data = json.loads((dataset / "annotations.json").read_text())
    forms = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert forms == {"dict", "list"}  # RLE and polygons
    loaded = coco_data.load_dataset(dataset / "images", dataset / "annotations.json")
    assert loaded.names == ("__background__", *synth.CLASSES)
    assert len(loaded.images) == 6 and not loaded.skipped
    # an RLE image's training masks are exactly the generated ones
    sample = synth.random_sample(np.random.default_rng([3, 1]), *SIZE)
    pixels, labels, masks, boxes = coco_data.training_sample(loaded.images[1])
    assert np.array_equal(pixels, sample.image) and np.array_equal(labels, sample.labels)
    assert np.array_equal(masks.astype(bool), sample.masks)
    assert np.allclose(boxes, sample.boxes)
    # flipped: pixels, masks and boxes mirror together
    fp, _, fm, fb = coco_data.training_sample(loaded.images[1], flip=True)
    assert np.array_equal(fp, pixels[:, ::-1]) and np.array_equal(fm, masks[:, :, ::-1])
    assert np.allclose(fb[:, [0, 2]], SIZE[0] - boxes[:, [2, 0]])


def test_split_is_seeded_by_image_and_never_empty():
    assert coco_data.split(10, 0.2, 0) == coco_data.split(10, 0.2, 0)
    train, val = coco_data.split(10, 0.2, 0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert coco_data.split(10, 0.2, 1) != (train, val)
    assert coco_data.split(3, 0.01, 0)[1] != [] and coco_data.split(1, 0.5, 0) == ([0], [])
    assert coco_data.split(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])


@pytest.mark.slow  # trains a model: heavy, not a unit test (make test runs it)
def test_training_lowers_the_loss_and_resumes_exactly(dataset, config, tmp_path):
    data = coco_data.load_dataset(dataset / "images", dataset / "annotations.json")
    cfg = load_config(config)
    kw = dict(epochs=4, val_fraction=0.2, flip=False, device="cpu", threads=1)
    whole = train_coco(cfg, _train_cfg(), data, tmp_path / "a.pt", **kw)
    first = train_coco(cfg, _train_cfg(), data, tmp_path / "b.pt", until=5, **kw)
    rest = train_coco(cfg, _train_cfg(), data, tmp_path / "b.pt", resume=True, **kw)

    losses = whole.losses  # 5 training images (1 held out), batch 2: 3 steps an epoch
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses
    assert first.losses + rest.losses == losses  # the same steps, bit for bit
    a, b = read_checkpoint(tmp_path / "a.pt")["model"], read_checkpoint(tmp_path / "b.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in rest.history] == [1, 2, 3, 4] and rest.history == whole.history
    assert all(0.0 <= h["AP"] <= 1.0 and "bbox_AP" in h for h in whole.history)
    # the held-out files are what `streamseg eval` reads
    assert (
        cli.main(
            ["eval", str(tmp_path / "a.pt.val.jsonl"), "--gt", str(tmp_path / "a.pt.val.json")]
        )
        == 0
    )


@pytest.mark.slow  # trains a model: heavy, not a unit test (make test runs it)
def test_finetuning_swaps_the_class_layers_and_labels_by_name(
    two_classes, dataset, config, tmp_path, capsys
):
    shutil.copytree(dataset / "images", two_classes / "images", dirs_exist_ok=True)
    out = tmp_path / "run" / "pets.pt"
    config_file = tmp_path / "finetune.toml"  # [train] table of the test: a few fast steps
    config_file.write_text(
        CONFIG + "[train]\nbatch_size = 3\nlr = 0.001\nwarmup = 0\nlog_every = 2\nseed = 5\n"
    )
    argv = ["train", "--coco", str(two_classes / "images"), str(two_classes / "annotations.json")]
    argv += ["--config", str(config_file), "--out", str(out), "--epochs", "3"]
    argv += ["--val-fraction", "0", "--init", "streamseg:shapes.pt", "--threads", "1"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 classes: box, disc" in text and "class layers replaced" in text

    ckpt = torch.load(out, weights_only=True)
    assert ckpt["labels"] == ["__background__", "box", "disc"]  # category ids 3, 7 -> 1, 2
    assert ckpt["categories"] == [{"id": 3, "name": "box"}, {"id": 7, "name": "disc"}]
    assert len(ckpt["history"]) == 3 and ckpt["history"][-1]["loss"] < ckpt["history"][0]["loss"]
    # everything but the class layers started from the shapes model
    shapes = read_checkpoint(weights_path("streamseg:shapes.pt"))["model"]
    fresh = build_from_config(load_config(config), num_classes=3)
    swapped = load_for_finetuning(fresh, shapes, "shapes.pt")
    assert swapped and all(k.startswith(CLASS_LAYERS) for k in swapped)
    kept = [k for k in shapes if k not in swapped and shapes[k].is_floating_point()]
    assert all(torch.equal(fresh.state_dict()[k], shapes[k].float()) for k in kept)

    # the written config names no labels: they come from the checkpoint
    cfg = load_config(out.with_name("pets.pt.toml"))
    assert cfg.labels == ("__background__", "box", "disc") and cfg.weights == str(out)
    model = load_model(cfg)
    model.roi_heads.score_thresh = 0.0
    data = coco_data.load_dataset(two_classes / "images", two_classes / "annotations.json")
    with torch.no_grad():
        (det,) = model([image_tensor(coco_data.read_image(data.images[0]))])
    names = {label_name(model.streamseg_labels, int(v)) for v in det["labels"]}
    assert names and names <= {"box", "disc"}

    # a config naming other labels for this checkpoint is refused, naming both
    other = tmp_path / "run" / "other.toml"
    other.write_text(CONFIG.replace('weights = "random"', 'weights = "pets.pt"'))
    with pytest.raises(ConfigError, match=r"other.toml: labels .* are not those of its checkpoint"):
        load_config(other)


def _broken(tmp_path: Path, dataset: Path, change) -> list[str]:
    root = tmp_path / "broken"
    shutil.copytree(dataset, root)
    data = json.loads((root / "annotations.json").read_text())
    change(data, root)
    (root / "annotations.json").write_text(json.dumps(data))
    return ["train", "--coco", str(root / "images"), str(root / "annotations.json")]


def _drop_segmentations(data, root):
    for a in data["annotations"]:
        a.pop("segmentation")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d, root: (root / "images" / "000002.png").unlink(),
            r"annotations.json: 1 of 6 images are not in .*/images: 000002.png \(file_name is "
            r"relative to the images folder\)",
        ),
        (
            lambda d, root: d["annotations"][4].update(category_id=9),
            r"annotations.json: annotation 5 has category id 9, which is not in categories "
            r"\(ids 1, 2, 3\)",
        ),
        (
            lambda d, root: d.update(annotations=[]),
            r"annotations.json: no annotations: nothing to learn from",
        ),
        (
            _drop_segmentations,
            r"annotations.json: no annotation has a usable mask .*boxes alone cannot train",
        ),
        (
            lambda d, root: d["annotations"][0].update(image_id=99),
            r"annotations.json: annotation 1 is of image id 99, which is not in images",
        ),
        (
            lambda d, root: next(
                a for a in d["annotations"] if isinstance(a["segmentation"], dict)
            )["segmentation"].update(size=[10, 10]),
            r"annotation \d+: its RLE is 10x10, the image 128x96",
        ),
        (lambda d, root: d.pop("categories"), r'needs a "categories" list'),
    ],
)
def test_broken_datasets_are_one_line_errors(dataset, config, tmp_path, capsys, change, message):
    argv = _broken(tmp_path, dataset, change)
    assert cli.main([*argv, "--config", str(config), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("streamseg train: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "m.pt").exists()


def test_unusable_annotations_are_skipped_and_counted(dataset, tmp_path):
    def change(d, root):
        d["annotations"][0]["segmentation"] = [[1, 1, 2, 2]]  # under 3 points
        d["annotations"][1]["segmentation"] = []
        d["annotations"][2]["iscrowd"] = 1
        d["images"].append({"id": 7, "file_name": "000001.png", "width": 128, "height": 96})

    argv = _broken(tmp_path, dataset, change)
    data = coco_data.load_dataset(argv[2], argv[3])
    assert data.skipped == {"without a usable segmentation": 2}
    assert "7 images (1 without annotations)" in data.summary()
    assert "skipped 1 crowd, not trained on, 2 without a usable segmentation" in data.summary()
    (image,) = [im for im in data.images if any(a.iscrowd for a in im.annotations)]
    _, labels, masks, _ = coco_data.training_sample(image)  # crowd: no training target ...
    assert len(labels) == len(masks) == len(image.annotations) - 1
    (index,) = [i for i, im in enumerate(data.images) if im is image]
    gt = coco_data.ground_truth(data, [index])  # ... but an ignored region when scoring
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1
    assert data.images[-1].annotations == ()  # an image without annotations: background only
    assert len(coco_data.training_sample(data.images[-1])[1]) == 0


def test_training_says_what_it_does_and_keeps_every_setting(dataset, tmp_path, capsys):
    """Progress from the first iteration with the time left; a warning for a held-out split
    too small to judge, and for a model that scores below its starting weights on it; the
    written config keeps every setting and the [train] table of the one it started from."""
    config_file = tmp_path / "start.toml"
    config_file.write_text(
        CONFIG.replace('weights = "random"', 'weights = "streamseg:shapes.pt"').replace(
            "score_threshold = 0.3",
            "score_threshold = 0.4\nmask_nms = 0.3\nmask_nms_cross_label = 0.6\n"
            "track_score_threshold = 0.2\nmask_threshold = 0.45",
        )
        # a learning rate far too high: the fine-tuned model is surely worse than shapes.pt
        + "[train]\nbatch_size = 2\nlr = 0.05\nwarmup = 0\nlog_every = 50\nseed = 1\n"
    )
    out = tmp_path / "worse.pt"
    argv = ["train", "--coco", str(dataset / "images"), str(dataset / "annotations.json")]
    argv += ["--config", str(config_file), "--out", str(out), "--epochs", "1"]
    argv += ["--val-fraction", "0.34", "--threads", "1"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    first = next(v for v in text.splitlines() if v.startswith("it "))
    assert re.match(r"it 1/2 lr \S+ loss \d+\.\d+ .*\(\d+\.\d+ s/it, \d+s left\)$", first), first
    assert "warning: only 2 held-out images: too few" in text and "add images" in text
    assert "starting weights: held-out mask AP" in text
    assert "warning: the trained model scores below its starting weights" in text

    start, written = load_config(config_file), load_config(out.with_name("worse.pt.toml"))
    same = [f for f in dataclasses.fields(start) if f.name not in ("weights", "labels", "path")]
    assert all(getattr(written, f.name) == getattr(start, f.name) for f in same)
    assert (written.mask_nms, written.track_score_threshold) == (0.3, 0.2)
    from streamseg.tools.train import load_train_config

    assert load_train_config(written.path) == load_train_config(start.path)
