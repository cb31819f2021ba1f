"""config: loading shipped and user configs, every refusal naming the file, and the helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamseg import shipped
from streamseg.config import (
    COCO_LABELS,
    ConfigError,
    ModelConfig,
    from_dict,
    label_name,
    load_config,
    model_score_threshold,
    parse_size,
    replace,
    to_dict,
    validate,
)
from streamseg.inference.model import build_from_config

SHAPES = ("__background__", "circle", "square", "triangle")
GOOD = (
    "[model]\n"
    'arch = "shapes_mobilenet_v3_fpn"\n'
    'weights = "random"\n'
    'labels = ["__background__", "circle", "square", "triangle"]\n'
)


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refused(path: Path, match: str) -> str:
    """load_config(path) raises ConfigError naming the file and matching `match`."""
    with pytest.raises(ConfigError, match=match) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shapes", "shapes.toml"])
def test_shipped_config_by_name(name):
    cfg = load_config(name)
    assert cfg.path == str(shipped.DATA / "configs" / "shapes.toml")
    assert cfg.arch == "shapes_mobilenet_v3_fpn"
    assert cfg.weights == str(shipped.DATA / "shapes.pt")  # "streamseg:shapes.pt"
    assert Path(cfg.weights).is_file()
    assert cfg.labels == SHAPES
    assert (cfg.min_size, cfg.max_size, cfg.max_batch, cfg.detections_per_img) == (416, 768, 1, 20)


def test_config_by_path_with_defaults(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_config(path)
    assert cfg == ModelConfig(
        arch="shapes_mobilenet_v3_fpn", weights="random", labels=SHAPES, path=str(path)
    )


def test_overrides_replace_fields_and_none_keeps_them(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), device="cpu", max_batch=None, score_threshold=0.0)
    assert (cfg.device, cfg.max_batch, cfg.score_threshold) == ("cpu", 4, 0.0)


def test_overrides_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="max_batch") as e:
        load_config(path, max_batch=0)
    assert str(path) in str(e.value)


def test_coco_arch_gets_coco_labels(tmp_path):
    cfg = load_config(write(tmp_path, '[model]\narch = "maskrcnn_resnet50_fpn"\n'))
    assert cfg.weights == "coco" and cfg.labels == COCO_LABELS
    assert cfg.labels[1] == "person" and len(cfg.labels) == 91


def test_relative_weights_are_resolved_against_the_config_folder(tmp_path, monkeypatch):
    text = GOOD.replace('"random"', '"../ckpt/model.pt"')
    write(tmp_path, text, "cfgs/mine.toml")
    monkeypatch.chdir(tmp_path)  # a relative config path, somewhere else than the cwd
    cfg = load_config("cfgs/mine.toml")
    assert cfg.weights == str((tmp_path / "ckpt" / "model.pt").resolve())
    assert Path(cfg.weights).is_absolute()


def test_absolute_weights_stay(tmp_path):
    weights = tmp_path / "w" / "x.pt"
    cfg = load_config(write(tmp_path, GOOD.replace('"random"', json.dumps(str(weights)))))
    assert cfg.weights == str(weights)


def test_shipped_weights_resolve_into_the_package(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace('"random"', '"streamseg:shapes.pt"')))
    assert cfg.weights == str(shipped.DATA / "shapes.pt")


def test_train_table_is_allowed(tmp_path):
    cfg = load_config(write(tmp_path, GOOD + "[train]\niterations = 3\n"))
    assert cfg.arch == "shapes_mobilenet_v3_fpn"


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD + "[modle]\nx = 1\n", r"unknown table\(s\) \['modle'\]"),
        (GOOD + "score = 0.5\n", r"unknown field\(s\) \['score'\] in \[model\]"),
        (GOOD + "[runtime]\nbatch = 2\n", r"unknown field\(s\) \['batch'\] in \[runtime\]"),
        ('[model]\nweights = "random"\n', "needs `arch`"),
        ("", "needs `arch`"),
        (GOOD.replace("shapes_mobilenet_v3_fpn", "resnet18"), "arch 'resnet18' is not one of"),
        (GOOD + "score_threshold = 1.5\n", "score_threshold must be in"),
        (GOOD + "score_threshold = -0.1\n", "score_threshold must be in"),
        (GOOD + "mask_threshold = 0.0\n", r"mask_threshold in \(0, 1\)"),
        (GOOD + "mask_threshold = 1.0\n", r"mask_threshold in \(0, 1\)"),
        (GOOD + "mask_nms = 1.5\n", r"mask_nms must be in \[0, 1\] \(0: off\), got 1.5"),
        (GOOD + "mask_nms = -0.1\n", r"mask_nms must be in \[0, 1\]"),
        (GOOD + 'mask_nms = "0.3"\n', "mask_nms must be a int or float"),
        (GOOD + "mask_nms_cross_label = 2\n", r"mask_nms_cross_label must be in \[0, 1\]"),
        (GOOD + "track_score_threshold = -0.3\n", r"track_score_threshold must be in \[0, 1\]"),
        (
            GOOD + "[runtime]\nmax_batch = 0\n",
            r"max_batch must be an integer in \[1, 256\], got 0 \(\[runtime\]\)",
        ),
        (
            GOOD + "detections_per_img = 0\n",
            r"detections_per_img must be an integer in \[1, 1000\]",
        ),
        (GOOD + "[runtime]\nmax_wait_ms = -1.0\n", r"max_wait_ms must be in \[0, 10000\]"),
        (GOOD + "min_size = 500\nmax_size = 400\n", "min_size <= max_size"),
        (GOOD + "min_size = 16\nmax_size = 400\n", r"min_size must be an integer in \[32, 16384\]"),
        (GOOD.replace('"random"', "3"), "weights must be a string"),
        (GOOD.replace("labels = [", "# labels = ["), "set `labels`"),
        (GOOD.replace("labels = [", "labels = []  # ["), "set `labels`"),
        ("[model\narch = 1\n", "not valid TOML"),
    ],
)
def test_refusals_name_the_file(tmp_path, text, match):
    refused(write(tmp_path, text), match)


def test_bad_bytes_are_not_valid_toml(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_bytes(b'[model]\narch = "\xff\xfe"\n')
    refused(path, "not valid TOML")


def test_missing_file(tmp_path):
    msg = refused(tmp_path / "nope.toml", "config file not found")
    assert "shapes" in msg  # says which shipped ones there are


def test_unknown_shipped_name():
    with pytest.raises(ConfigError, match=r"config file not found: nope \(give a path.*shapes"):
        load_config("nope")


def test_wrongly_typed_value_is_a_config_error(tmp_path):
    refused(write(tmp_path, GOOD + 'score_threshold = "0.5"\n'), "score_threshold")


def test_validate_without_a_path_says_config():
    cfg = ModelConfig(arch="shapes_mobilenet_v3_fpn", labels=SHAPES, max_batch=0)
    with pytest.raises(ConfigError, match=r"^config: max_batch"):
        validate(cfg)


def test_replace_validates_and_ignores_none():
    cfg = load_config("shapes")
    assert replace(cfg, device="cpu", max_batch=None) == ModelConfig(
        **{**to_dict(cfg), "labels": cfg.labels, "device": "cpu"}
    )
    with pytest.raises(ConfigError, match="min_size <= max_size"):
        replace(cfg, min_size=1000)


# --- to_dict / from_dict -----------------------------------------------------------------------


def test_dict_round_trip_through_json():
    cfg = load_config("shapes", device="cpu")
    data = to_dict(cfg)
    assert data["labels"] == list(SHAPES) and data["path"] == cfg.path
    assert from_dict(json.loads(json.dumps(data))) == cfg


def test_from_dict_refuses_unknown_fields_and_bad_values():
    data = to_dict(load_config("shapes"))
    with pytest.raises(ConfigError, match=r"unknown model config field\(s\) \['colour'\]"):
        from_dict({**data, "colour": "red"})
    with pytest.raises(ConfigError, match="max_batch") as e:
        from_dict({**data, "max_batch": 0})
    assert data["path"] in str(e.value)


def test_from_dict_with_only_the_required_fields():
    cfg = from_dict({"arch": "shapes_mobilenet_v3_fpn", "labels": list(SHAPES)})
    assert cfg == ModelConfig(arch="shapes_mobilenet_v3_fpn", labels=SHAPES)


# --- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"), [("640x480", (640, 480)), ("640X480", (640, 480)), ("1x1", (1, 1))]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("640", "WxH"),
        ("axb", "WxH"),
        ("640x480x3", "WxH"),
        ("", "WxH"),
        ("x", "WxH"),
        ("0x480", "positive"),
        ("640x0", "positive"),
        ("-1x2", "positive"),
    ],
)
def test_parse_size_refuses(text, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_size(text)
    assert repr(text) in str(e.value)


def test_label_name_falls_back_to_the_number():
    labels = ("__background__", "circle")
    assert [label_name(labels, i) for i in (0, 1, 2, -1)] == ["__background__", "circle", "2", "-1"]
    assert label_name((), 0) == "0"


@pytest.mark.parametrize(
    ("score", "track_score", "model_keeps"),
    [(0.5, 0.0, 0.5), (0.5, 0.3, 0.3), (0.5, 0.5, 0.5), (0.5, 0.7, 0.5), (0.0, 0.3, 0.0)],
)
def test_the_model_keeps_low_scores_only_for_tracking(tmp_path, score, track_score, model_keeps):
    text = GOOD + f"score_threshold = {score}\ntrack_score_threshold = {track_score}\n"
    cfg = load_config(write(tmp_path, text))
    assert model_score_threshold(cfg) == model_keeps
    assert build_from_config(cfg).roi_heads.score_thresh == model_keeps
