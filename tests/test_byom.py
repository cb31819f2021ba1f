"""Bring your own model: weights checked before any stage starts, --weights/--labels, the
shipped configs printed for copying, and torchvision's ResNet-50 FPN models (v1 and v2, random
weights written to a file as a user's checkpoint would be) through the whole pipeline, equal to
torchvision's own forward."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from streamseg import shipped
from streamseg.config import COCO_URLS, ConfigError, load_config, parse_labels
from streamseg.inference.model import build_model, save_checkpoint
from streamseg.pipeline import preflight

THREE = ("__background__", "a", "b")


def cli(*args: str | Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    import os

    cmd = [sys.executable, "-m", "streamseg.cli", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


@pytest.fixture(scope="module")
def shapes_ckpt(tmp_path_factory) -> Path:
    """A small streamseg checkpoint (shapes architecture, two classes a and b, random)."""
    path = tmp_path_factory.mktemp("ckpt") / "two.pt"
    model = build_model("shapes_mobilenet_v3_fpn", num_classes=3)
    save_checkpoint(path, model, arch="shapes_mobilenet_v3_fpn", labels=THREE)
    return path


@pytest.fixture(scope="module")
def bare_ckpt(tmp_path_factory) -> Path:
    """The same as a bare torchvision state_dict: no labels, no arch."""
    path = tmp_path_factory.mktemp("ckpt") / "bare.pth"
    torch.save(build_model("shapes_mobilenet_v3_fpn", num_classes=3).state_dict(), path)
    return path


# -- the preflight --------------------------------------------------------------------------------


def test_missing_weights_file_is_judged_without_a_process(tmp_path):
    cfg = load_config("maskrcnn_resnet50_fpn", weights=str(tmp_path / "nope.pth"))
    (problem,) = preflight.check_weights(cfg, python="/nonexistent/python")  # never started
    assert f"weights file not found: {tmp_path / 'nope.pth'}" in problem
    assert "maskrcnn_resnet50_fpn.toml" in problem and "--weights" in problem


def test_coco_weights_absent_and_no_network_is_one_line_with_the_fix(tmp_path, monkeypatch):
    # a port nothing listens on stands for "no network": the same answer, offline or not
    monkeypatch.setitem(preflight.COCO_URLS, "maskrcnn_resnet50_fpn", "https://127.0.0.1:9/x.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_config("maskrcnn_resnet50_fpn")
    (problem,) = preflight.check_weights(cfg, python="/nonexistent/python")
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "x.pth") in problem
    assert "127.0.0.1 cannot be reached" in problem
    assert "--weights /path/to/x.pth" in problem and cfg.path in problem


def test_coco_urls_are_torchvisions():
    from torchvision.models.detection import (
        MaskRCNN_ResNet50_FPN_V2_Weights,
        MaskRCNN_ResNet50_FPN_Weights,
    )

    assert COCO_URLS == {
        "maskrcnn_resnet50_fpn": MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url,
        "maskrcnn_resnet50_fpn_v2": MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url,
    }


def test_torch_hub_dir_is_torchs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert preflight.torch_hub_dir() == Path(torch.hub.get_dir()) == tmp_path / "hub"


@pytest.mark.slow  # loads weights in child processes that import torch: heavy
def test_weights_that_fit_pass(shapes_ckpt, bare_ckpt):
    assert preflight.check_weights(load_config("shapes", weights=str(shapes_ckpt))) == []
    cfg = load_config("shapes", weights=str(bare_ckpt), labels=THREE)
    assert preflight.check_weights(cfg) == []


@pytest.mark.slow  # loads weights in child processes that import torch: heavy
def test_weights_of_another_class_count_or_arch_name_the_fix(bare_ckpt, shapes_ckpt, tmp_path):
    cfg = load_config("shapes", weights=str(bare_ckpt))  # the shapes config's 4 labels
    (problem,) = preflight.check_weights(cfg)
    assert "is a model for 2 classes (+ background), but the labels name 3" in problem
    assert "--labels with 2 class names" in problem and "shapes.toml" in problem

    cfg = load_config("maskrcnn_resnet50_fpn", weights=str(bare_ckpt), labels=THREE)
    (problem,) = preflight.check_weights(cfg)
    assert "does not fit this architecture" in problem and "`arch`" in problem

    cfg = load_config("maskrcnn_resnet50_fpn", weights=str(shapes_ckpt))
    (problem,) = preflight.check_weights(cfg)
    assert "holds a shapes_mobilenet_v3_fpn model" in problem
    assert 'set arch = "shapes_mobilenet_v3_fpn"' in problem

    junk = tmp_path / "junk.pth"
    junk.write_text("not weights\n")
    (problem,) = preflight.check_weights(load_config("shapes", weights=str(junk)))
    assert problem.startswith(f"{junk}: not a loadable weights file")
    assert "\n" not in problem


def test_shipped_and_random_weights_need_no_check():
    assert preflight.check_weights(load_config("shapes"), python="/nonexistent/python") == []
    cfg = load_config("shapes", weights="random")
    assert preflight.check_weights(cfg, python="/nonexistent/python") == []


# -- --weights and --labels -----------------------------------------------------------------------


def test_weights_take_the_checkpoints_labels_over_the_configs(shapes_ckpt):
    cfg = load_config("shapes", weights=str(shapes_ckpt))
    assert cfg.labels == THREE and cfg.weights == str(shapes_ckpt.resolve())


def test_labels_that_contradict_the_checkpoint_name_the_flag(shapes_ckpt):
    with pytest.raises(
        ConfigError, match=r"--labels: .*two.pt carries its own class names \(a, b\)"
    ):
        load_config("shapes", weights=str(shapes_ckpt), labels=("__background__", "x", "y"))
    cfg = load_config("shapes", weights=str(shapes_ckpt), labels=THREE)
    assert cfg.labels == THREE


def test_weights_path_is_from_the_working_directory(shapes_ckpt, monkeypatch):
    monkeypatch.chdir(shapes_ckpt.parent)
    cfg = load_config("shapes", weights=shapes_ckpt.name)
    assert cfg.weights == str(shapes_ckpt.resolve())


def test_parse_labels(tmp_path):
    assert parse_labels("a, b") == THREE
    assert parse_labels("__background__,a,b") == THREE
    names = tmp_path / "labels.txt"
    names.write_text("# my classes\na\n\nb\n")
    assert parse_labels(str(names)) == THREE
    for bad in ("", "a,,b", "a,a"):
        with pytest.raises(ValueError, match="--labels"):
            parse_labels(bad)


@pytest.mark.slow  # loads weights in child processes that import torch: heavy
def test_cli_refuses_weights_that_do_not_fit_before_any_stage(clip, bare_ckpt, tmp_path):
    video, _ = clip
    out = tmp_path / "out.jsonl"
    proc = cli("annotate", "-q", video, "--results", out, "--weights", bare_ckpt)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamseg: error: ")
    assert "2 classes" in lines[0] and "--labels" in lines[0]
    assert not out.exists()

    proc = cli("annotate", "-q", video, "--results", out, "--labels", "x,y,z,w")
    assert proc.returncode == 2
    assert "streamseg: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_coco_weights_absent_offline_is_one_line_exit_2(clip, tmp_path):
    video, _ = clip
    proc = cli(
        "annotate",
        video,
        "--results",
        tmp_path / "out.jsonl",
        "--config",
        "maskrcnn_resnet50_fpn",
        TORCH_HOME=str(tmp_path / "torch"),
        # no proxy reaches the address below: offline, whatever this machine's network
        https_proxy="",
    )
    if proc.returncode == 0:  # pragma: no cover - only with download.pytorch.org reachable
        pytest.skip("this machine can download the COCO weights")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "COCO weights for maskrcnn_resnet50_fpn" in lines[0] and "Downloading" not in lines[0]


# -- shipped configs ------------------------------------------------------------------------------


def test_configs_lists_and_shows_the_shipped_ones():
    proc = cli("configs")
    assert proc.returncode == 0
    for name in shipped.names("config"):
        assert name in proc.stdout
    proc = cli("configs", "show", "maskrcnn_resnet50_fpn_v2")
    assert proc.returncode == 0
    path = shipped.find("config", "maskrcnn_resnet50_fpn_v2")
    assert proc.stdout == path.read_text()
    proc = cli("configs", "show", "nope")
    assert proc.returncode == 2 and "maskrcnn_resnet50_fpn" in proc.stderr


@pytest.mark.parametrize(
    "command", ["annotate", "watch", "run", "train", "demo", "stage", "bench", "configs"]
)
def test_help_says_how_to_use_your_own_model(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "your own model" in text and "streamseg configs show" in text


# -- ResNet-50 FPN end to end ---------------------------------------------------------------------


def _r50_checkpoint(folder: Path, arch: str) -> Path:
    """A random-weights R50-FPN state_dict (torchvision's format, 3 classes), as a user's file."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    build = {"maskrcnn_resnet50_fpn": maskrcnn_resnet50_fpn}.get(arch, maskrcnn_resnet50_fpn_v2)
    torch.manual_seed(0)
    model = build(weights=None, weights_backbone=None, num_classes=3)
    path = folder / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    return path


def _r50_config(folder: Path, arch: str, weights: Path) -> Path:
    path = folder / f"{arch}.toml"
    path.write_text(
        "[model]\n"
        f'arch = "{arch}"\n'
        f'weights = "{weights.name}"\n'
        'labels = ["__background__", "a", "b"]\n'
        "score_threshold = 0.0\n"
        "detections_per_img = 8\n"
        "min_size = 160\n"
        "max_size = 224\n"
        "[runtime]\n"
        'device = "cpu"\n'
        "max_batch = 2\n"
        "max_wait_ms = 5.0\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_resnet50_fpn_annotates_and_matches_torchvision(arch, tmp_path):
    """A user's R50-FPN checkpoint annotates a clip: results for every frame, in order, and the
    instances torchvision's own model gives on the same decoded frames."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    from streamseg.tools import synth

    video = tmp_path / "tiny.mp4"
    synth.write_clip(video, tmp_path / "tiny.json", seed=5, frames=3, size=(224, 160), fps=25)
    weights = _r50_checkpoint(tmp_path, arch)
    config = _r50_config(tmp_path, arch, weights)
    results = tmp_path / "out.jsonl"
    # one inference process: two R50 models would share 2 cores for 3 frames
    proc = cli("annotate", "-q", video, "--results", results, "--config", config, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(v) for v in results.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]

    build = {"maskrcnn_resnet50_fpn": maskrcnn_resnet50_fpn}.get(arch, maskrcnn_resnet50_fpn_v2)
    ref_model = build(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=160,
        max_size=224,
        box_score_thresh=0.0,
        box_detections_per_img=8,
    )
    ref_model.load_state_dict(torch.load(weights, weights_only=True))
    ref_model.eval()
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 3
    with torch.inference_mode():
        for image, record in zip(frames, records, strict=True):
            ref = ref_model([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
            got = record["instances"]
            assert len(got) == len(ref["boxes"]) == 8
            for inst, box, label, score, mask in zip(
                got, ref["boxes"], ref["labels"], ref["scores"], ref["masks"], strict=True
            ):
                assert inst["label"] == int(label)
                assert inst["score"] == pytest.approx(float(score), abs=1e-3)
                np.testing.assert_allclose(inst["box"], box.numpy(), atol=1.0)
                ours = mask_utils.decode(inst["rle"]).astype(bool)
                theirs = (mask[0] > 0.5).numpy()
                union = np.logical_or(ours, theirs).sum()
                assert (np.logical_and(ours, theirs).sum() / union if union else 1.0) >= 0.98
