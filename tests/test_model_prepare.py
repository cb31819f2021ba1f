"""load_model folds BatchNorm into the convolutions and lays CPU weights out channels-last:
the model must compute what the plain torchvision model computes, for every architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamseg.config import load_config
from streamseg.inference.model import (
    _load_state,
    build_from_config,
    compact_forward,
    image_tensor,
    load_model,
    prepare_for_inference,
    read_checkpoint,
)
from streamseg.tools import synth


def plain_model(cfg):
    model = build_from_config(cfg)
    if cfg.weights != "random":
        _load_state(model, read_checkpoint(cfg.weights)["model"], cfg.weights)
    return model.eval()


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [synth.random_sample(rng, 320, 240).image for _ in range(n)]


def test_shipped_model_prepared_equals_plain(shapes_config):
    cfg = load_config(shapes_config)
    fast, plain = load_model(cfg, device="cpu"), plain_model(cfg)
    assert fast.streamseg_folded_norms > 40  # MobileNetV3, FPN and mask head convolutions
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    found = 0
    with torch.inference_mode():
        for image in frames(6):
            a = compact_forward(plain, [image_tensor(image)])[0]
            b = compact_forward(fast, [image_tensor(image)])[0]
            assert torch.equal(a["labels"], b["labels"])
            torch.testing.assert_close(b["boxes"], a["boxes"], atol=0.05, rtol=0)
            torch.testing.assert_close(b["scores"], a["scores"], atol=1e-3, rtol=0)
            torch.testing.assert_close(b["masks"], a["masks"], atol=1e-3, rtol=0)
            found += len(a["boxes"])
    assert found >= 6, "the comparison needs detections to mean anything"


def test_resnet_frozen_norms_fold_exactly(tmp_path):
    """torchvision's R50-FPN (FrozenBatchNorm2d) with random weights and perturbed statistics."""
    path = tmp_path / "r50.toml"
    path.write_text(
        '[model]\narch = "maskrcnn_resnet50_fpn"\nweights = "random"\n'
        'labels = ["__background__", "a", "b"]\nscore_threshold = 0.0\n'
        "detections_per_img = 10\nmin_size = 96\nmax_size = 128\n"
    )
    cfg = load_config(path)
    torch.manual_seed(0)
    plain = plain_model(cfg)
    for m in plain.modules():  # identity statistics would hide a wrong fold
        if hasattr(m, "running_var"):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    fast = prepare_for_inference(_copy_into(plain_model(cfg), plain), torch.device("cpu"))
    assert fast.streamseg_folded_norms >= 4  # each stage's downsample Sequential
    x = [torch.rand(3, 96, 128)]
    with torch.inference_mode():
        a, b = plain.backbone(x[0][None]), fast.backbone(x[0][None])
    # Folding rounds differently in float32, and how much depends on the CPU's kernels: up to
    # 3e-6 of the largest feature (1.6e-4 absolute, features up to 54) on one machine where a
    # fixed atol of 1e-4 failed. A wrong fold (eps, mean or scale) is off by a sizeable share.
    for key in a:
        scale = float(a[key].abs().max())
        torch.testing.assert_close(b[key], a[key], atol=2e-5 * scale, rtol=1e-4)


def _copy_into(model, source):
    model.load_state_dict(source.state_dict())
    return model.eval()


def test_training_models_are_refused():
    cfg_model = build_from_config(load_config("shapes"))
    with pytest.raises(ValueError, match="eval mode"):
        prepare_for_inference(cfg_model.train(), torch.device("cpu"))
