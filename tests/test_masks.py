"""postprocess.masks against torchvision's paste_masks_in_image and pycocotools' encoder."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from streamseg.postprocess.masks import (
    LocalMasks,
    _Exact,
    _exact_values,
    _linear_taps,
    paste_masks,
    rle_encode,
)

M = 28  # torchvision's mask head resolution
# On CPU paste_masks reproduces ATen's rounding, so it must equal torchvision bit for bit. On
# CUDA (rounding not reproduced) pixels within float rounding of the threshold may differ.
CUDA_MAX_DIFF_PIXELS = 4


def reference(
    masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """What model.eval() gives users: bool[N, H, W]."""
    return (paste_masks_in_image(masks, boxes, size, padding=1)[:, 0] > threshold).cpu().numpy()


def smooth_masks(rng: np.random.Generator, n: int) -> torch.Tensor:
    """float32[N, 1, M, M] blob-like probabilities, like a trained mask head's."""
    yy, xx = np.mgrid[0:M, 0:M]
    centre = rng.uniform(8, 20, (n, 2, 1, 1))
    radius = rng.uniform(4, 14, (n, 1, 1))
    dist = np.hypot(yy - centre[:, 0], xx - centre[:, 1]) - radius
    logits = -dist * rng.uniform(0.5, 3, (n, 1, 1)) + rng.normal(0, 0.5, (n, M, M))
    return torch.from_numpy((1 / (1 + np.exp(-logits)))[:, None].astype(np.float32))


def random_boxes(
    rng: np.random.Generator, n: int, size: tuple[int, int], max_side: float, outside: float
) -> torch.Tensor:
    """float32[N, 4] xyxy boxes with sides in [0.3, max_side], centres up to ``outside``
    frame sizes past the edges. Each box keeps x0 <= W - 1, y0 <= H - 1, x1 >= 1, y1 >= 1:
    torchvision's paste raises on (most) boxes wholly outside the frame."""
    h, w = size
    side = rng.uniform(0.3, max_side, (n, 2))
    centre = np.stack(
        [
            rng.uniform(-outside * w, (1 + outside) * w, n),
            rng.uniform(-outside * h, (1 + outside) * h, n),
        ],
        axis=1,
    )
    boxes = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
    boxes[:, :2] = np.minimum(boxes[:, :2], [w - 1.0, h - 1.0])
    return torch.from_numpy(boxes.astype(np.float32))


def check_against_torchvision(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    threshold: float = 0.5,
    *,
    max_diff: int = 0,
) -> LocalMasks:
    """paste_masks equals torchvision's paste; `max_diff` differing pixels per instance are
    allowed (0: bit-identical, what CPU promises)."""
    local = paste_masks(masks, boxes, size, threshold=threshold)
    ref = reference(masks, boxes, size, threshold)
    full = local.full()
    assert full.shape == ref.shape
    diff = (full != ref).reshape(len(ref), -1).sum(axis=1)
    assert diff.max(initial=0) <= max_diff, f"differing pixels per instance: {diff}"
    union = (full | ref).reshape(len(ref), -1).sum(axis=1)
    inter = (full & ref).reshape(len(ref), -1).sum(axis=1)
    assert np.all(inter >= 0.999 * union)
    np.testing.assert_array_equal(local.areas(), full.sum(axis=(1, 2)))
    # Crops hold only what lies inside them.
    assert local.masks.shape[0] == len(ref)
    for i in range(len(ref)):
        assert not local.masks[i, local.h[i] :].any() and not local.masks[i, :, local.w[i] :].any()
    return local


def check_rle(local: LocalMasks) -> None:
    rles = rle_encode(local)
    full = local.full()
    assert len(rles) == len(full)
    for rle, mask in zip(rles, full, strict=True):
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle["size"] == list(local.frame_size) == expected["size"]
        assert rle["counts"] == expected["counts"].decode()
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)


@pytest.mark.parametrize(
    ("size", "max_side", "outside", "seed"),
    [
        ((1080, 1920), 400.0, 0.1, 0),  # typical detections
        ((1080, 1920), 2500.0, 0.3, 1),  # huge boxes, partly outside
        ((37, 53), 60.0, 0.5, 2),  # odd frame size, boxes around and past the edges
        ((37, 53), 6.0, 0.2, 3),  # tiny boxes (w, h of a few pixels)
        ((240, 320), 60.0, 0.2, 4),  # h + w <= 128: ATen's other bilinear kernel
    ],
)
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_paste_and_rle_match_torchvision_and_pycocotools(size, max_side, outside, seed, kind):
    rng = np.random.default_rng(seed)
    n = 12
    if kind == "smooth":
        masks = smooth_masks(rng, n)
    else:
        masks = torch.from_numpy(rng.random((n, 1, M, M), dtype=np.float32))
    boxes = random_boxes(rng, n, size, max_side, outside)
    local = check_against_torchvision(masks, boxes, size)
    check_rle(local)


def test_probabilities_at_the_threshold():
    # Plateaus at and within float rounding of 0.5, and quantised probabilities: every pixel
    # is decided by ATen's rounding, so this exercises the exact re-evaluation.
    rng = np.random.default_rng(8)
    size = (240, 320)
    boxes = random_boxes(rng, 6, size, 300, 0.1)
    plateau = torch.full((6, 1, M, M), 0.5)
    plateau[::2, :, 5:20, 5:20] = 0.5000001
    plateau[1::2, :, ::3] = 0.4999999
    check_rle(check_against_torchvision(plateau, boxes, size))
    quantised = torch.from_numpy(np.round(rng.random((6, 1, M, M)) * 4) / 4).float()
    check_rle(check_against_torchvision(quantised, boxes, size))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9])
def test_other_thresholds(threshold):
    rng = np.random.default_rng(5)
    size = (120, 90)
    masks = smooth_masks(rng, 8)
    local = check_against_torchvision(masks, random_boxes(rng, 8, size, 80, 0.2), size, threshold)
    check_rle(local)


def test_empty():
    size = (37, 53)
    local = paste_masks(torch.zeros(0, 1, M, M), torch.zeros(0, 4), size)
    assert local.masks.dtype == bool and local.masks.shape[0] == 0 and local.masks.ndim == 3
    for a in (local.x0, local.y0, local.h, local.w):
        assert a.shape == (0,) and a.dtype == np.int32
    assert local.full().shape == (0, *size)
    assert local.areas().shape == (0,) and local.areas().dtype == np.int64
    assert rle_encode(local) == []


def test_boxes_wholly_outside_give_empty_masks():
    size = (37, 53)
    boxes = torch.tensor(
        [
            [60.0, 5.0, 80.0, 20.0],  # right of the frame
            [5.0, 40.0, 20.0, 50.0],  # below
            [-30.0, 5.0, -10.0, 20.0],  # left
            [5.0, -30.0, 20.0, -10.0],  # above
            [10.0, 10.0, 30.0, 30.0],  # inside, so the crops are not all empty
        ]
    )
    masks = torch.ones(len(boxes), 1, M, M)
    local = paste_masks(masks, boxes, size)
    assert np.all((local.h[:4] == 0) | (local.w[:4] == 0))
    np.testing.assert_array_equal(local.areas()[:4], 0)
    assert local.areas()[4] > 0
    assert not local.full()[:4].any()
    empty = mask_utils.encode(np.zeros((*size, 1), dtype=np.uint8, order="F"))[0]["counts"]
    assert [r["counts"] for r in rle_encode(local)[:4]] == [empty.decode()] * 4
    check_rle(local)


def test_boxes_starting_at_the_far_edges():
    # Integer boxes starting at x = W or y = H: empty, and torchvision agrees.
    size = (37, 53)
    boxes = torch.tensor([[53.5, 5.0, 60.0, 20.0], [5.0, 37.5, 20.0, 44.0], [-2.0, -2.0, 5.0, 5.0]])
    local = check_against_torchvision(torch.ones(3, 1, M, M), boxes, size)
    assert local.areas()[:2].tolist() == [0, 0]
    check_rle(local)


def test_all_boxes_outside():
    local = paste_masks(
        torch.ones(2, 1, M, M), torch.tensor([[60.0, 5, 80, 20], [70, 1, 90, 9]]), (37, 53)
    )
    assert local.masks.shape[0] == 2 and local.areas().tolist() == [0, 0]
    check_rle(local)


def test_masks_touching_frame_corners():
    size = (37, 53)
    h, w = size
    boxes = torch.tensor(
        [
            [-5.0, -5.0, 10.0, 10.0],  # covers (0, 0)
            [w - 10.0, h - 10.0, w + 5.0, h + 5.0],  # covers (H - 1, W - 1)
            [-5.0, -5.0, w + 5.0, h + 5.0],  # the whole frame: crops span the full height
            [0.0, 0.0, 0.0, 0.0],  # degenerate box at the origin
        ]
    )
    masks = torch.ones(len(boxes), 1, M, M)
    local = check_against_torchvision(masks, boxes, size)
    full = local.full()
    assert full[0, 0, 0] and full[1, h - 1, w - 1] and full[2].all()
    check_rle(local)
    # Full-height crops with partly filled columns (runs continuing across columns).
    masks = smooth_masks(np.random.default_rng(6), 3)
    boxes = torch.tensor(
        [[-5.0, -5.0, w + 5.0, h + 5.0], [3.0, -20.0, 30.0, h + 20.0], [0, 0, w, h]]
    )
    check_rle(check_against_torchvision(masks, boxes, size))


def test_reduced_precision_matmul_setting_is_not_used():
    # With TF32/bfloat16 matmuls allowed, the x pass must not go through bmm.
    rng = np.random.default_rng(9)
    size = (240, 320)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        local = check_against_torchvision(
            smooth_masks(rng, 6), random_boxes(rng, 6, size, 200, 0.1), size
        )
    finally:
        torch.set_float32_matmul_precision(before)
    check_rle(local)


def test_threshold_out_of_range():
    with pytest.raises(ValueError, match="threshold"):
        paste_masks(torch.zeros(1, 1, M, M), torch.zeros(1, 4), (10, 10), threshold=1.0)


@pytest.mark.parametrize(
    ("out_h", "out_w"), [(1, 1), (7, 9), (30, 30), (60, 68), (61, 67), (300, 900), (1700, 1100)]
)
def test_exact_values_reproduce_interpolate(out_h, out_w):
    """The per-pixel arithmetic equals F.interpolate(bilinear, align_corners=False) on the
    padded mask: the separable taps plus ATen's rounding (bitwise on CPU builds with FMA;
    1e-6 covers other builds)."""
    rng = np.random.default_rng(out_h * 1000 + out_w)
    padded = F.pad(torch.from_numpy(rng.random((1, M, M), dtype=np.float32)), (1, 1, 1, 1))
    ref = F.interpolate(padded[:, None], size=(out_h, out_w), mode="bilinear", align_corners=False)
    rows = torch.arange(out_h)[None]
    cols = torch.arange(out_w)[None]
    y_taps = _linear_taps(
        rows, torch.tensor([[out_h]]), M + 2, torch.ones_like(rows, dtype=torch.bool)
    )
    x_taps = _linear_taps(
        cols, torch.tensor([[out_w]]), M + 2, torch.ones_like(cols, dtype=torch.bool)
    )
    r, c = torch.meshgrid(torch.arange(out_h), torch.arange(out_w), indexing="ij")
    values = _exact_values(
        _Exact(padded, x_taps, y_taps, torch.tensor([out_h + out_w <= 128])),
        torch.zeros(r.numel(), dtype=torch.int64),
        r.reshape(-1),
        c.reshape(-1),
    ).view(out_h, out_w)
    torch.testing.assert_close(values, ref[0, 0], rtol=0, atol=1e-6)


@pytest.mark.cuda  # skipped without a GPU (tests/conftest.py)
def test_cuda_matches_torchvision_on_cuda():
    rng = np.random.default_rng(7)
    size = (1080, 1920)
    masks = smooth_masks(rng, 20).cuda()
    boxes = random_boxes(rng, 20, size, 400, 0.1).cuda()
    check_rle(check_against_torchvision(masks, boxes, size, max_diff=CUDA_MAX_DIFF_PIXELS))
