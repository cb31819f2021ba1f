"""Mixed precision keeps Mask R-CNN's geometry in float32 (streamseg.inference.precision).

The overflow itself is shown with fp16 tensors and torchvision's own offset formula; the fix
is checked on CPU (autocast to fp16 runs on CPU too), its CUDA parity in tests/test_gpu_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.ops.boxes as box_ops

from streamseg.inference.model import build_model, compact_forward
from streamseg.inference.precision import HALF_PARTS, half_parts, mixed_precision

# Two boxes of one class, overlapping (IoU ~0.97), near the right edge of a 1333 px input.
BOXES = torch.tensor([[1000.0, 500.0, 1300.0, 700.0], [1002.0, 502.0, 1302.0, 702.0]])
SCORES = torch.tensor([0.9, 0.8])


def _offset_boxes(boxes: torch.Tensor, label: int) -> torch.Tensor:
    """torchvision's batched_nms coordinate trick, in the boxes' dtype."""
    idxs = torch.full((len(boxes),), label)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return boxes + offsets[:, None]


@pytest.mark.parametrize("label", [50, 62, 84])
def test_fp16_batched_nms_offsets_overflow_and_skip_nms(label: int) -> None:
    shifted = _offset_boxes(BOXES.half(), label)
    assert torch.isinf(shifted).all()  # label x 1303 > 65504
    # what NMS sees on a GPU: inf boxes overlap nothing, so the duplicate survives
    assert len(box_ops.nms(shifted.float(), SCORES, 0.5)) == 2
    assert len(box_ops.batched_nms(BOXES, SCORES, torch.full((2,), label), 0.5)) == 1


@pytest.mark.parametrize("label", [13, 25, 40])
def test_fp16_batched_nms_offsets_round_coordinates_by_pixels(label: int) -> None:
    exact = _offset_boxes(BOXES.double(), label)
    rounded = _offset_boxes(BOXES.half(), label).double()
    assert (rounded - exact).abs().max() >= 4.0  # fp16 steps are 8-32 px at these offsets


def _spy_nms(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    original = box_ops.batched_nms

    def spy(boxes, scores, idxs, iou):  # type: ignore[no-untyped-def]
        seen.append(boxes.dtype)
        return original(boxes.float(), scores.float(), idxs, iou)

    monkeypatch.setattr(box_ops, "batched_nms", spy)  # torchvision calls it as box_ops.batched_nms
    return seen


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "maskrcnn_resnet50_fpn", num_classes=91, min_size=256, max_size=448, score_threshold=0.0
    ).eval()


def test_whole_model_autocast_runs_nms_in_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: autocast around everything hands fp16 boxes to batched_nms."""
    seen = _spy_nms(monkeypatch)
    model = _model()
    image = torch.rand(3, 240, 320)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        compact_forward(model, [image])
    assert torch.float16 in seen


def test_mixed_precision_keeps_decode_and_nms_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy_nms(monkeypatch)
    model = mixed_precision(_model(), torch.float16)
    assert half_parts(model) == dict.fromkeys(HALF_PARTS, torch.float16)
    mixed_precision(model, torch.float16)  # a second wrap changes nothing
    assert half_parts(model) == dict.fromkeys(HALF_PARTS, torch.float16)
    image = torch.rand(3, 240, 320)
    with torch.inference_mode():
        (det,) = compact_forward(model, [image])
    assert seen and set(seen) == {torch.float32}  # RPN's and the box head's NMS
    assert det["boxes"].dtype == det["scores"].dtype == det["masks"].dtype == torch.float32
    assert det["boxes"].shape[0] > 0


def test_mixed_precision_state_is_the_model_weights() -> None:
    """Wrapping moves no weight: the wrapped networks are the same modules."""
    model = _model()
    backbone = model.backbone
    mixed_precision(model, torch.bfloat16)
    assert model.backbone.inner is backbone
    assert model.backbone.out_channels == backbone.out_channels
