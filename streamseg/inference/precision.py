"""Mixed precision for Mask R-CNN: the networks in half precision, the geometry in float32.

Autocast around the whole model also runs torchvision's box decoding and `batched_nms` in fp16.
`batched_nms` separates the classes by shifting each box by label x (largest coordinate + 1):
at 1333 px that offset passes fp16's largest value (65504) from label 50 up (inf: those
classes get no NMS at all), and above label 12 it rounds coordinates to 16-32 px, so boxes
of one class merge or survive by accident. Decoding (exp of the size deltas) loses pixels too.

So only the convolution-heavy parts run under autocast, each handing back float32: the
backbone with its FPN, the RPN head, the box head and predictor, the mask head and predictor.
Anchors, box decoding, proposal filtering, NMS, score thresholds and the mask probabilities'
sigmoid stay in float32, exactly as torchvision computes them in a float32 model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HALF_PARTS = (
    "backbone",
    "rpn.head",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_head",
    "roi_heads.mask_predictor",
)
"""The submodules (attribute paths on a torchvision MaskRCNN) that run under autocast."""


def to_float(value: Any) -> Any:
    """`value` with every floating tensor in it float32 (tensors, lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, to_float(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(to_float(v) for v in value)
    return value


class Autocast(nn.Module):
    """`inner` run under autocast to `dtype` on its own device type; outputs come back float32.

    Keeps `inner`'s `out_channels` (torchvision reads a backbone's).
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        if hasattr(inner, "out_channels"):
            self.out_channels = inner.out_channels

    def forward(self, *args: Any) -> Any:
        device_type = next(self.inner.parameters()).device.type
        with torch.autocast(device_type, dtype=self.dtype):
            out = self.inner(*args)
        return to_float(out)


def mixed_precision(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Wrap `model`'s HALF_PARTS in Autocast (in place; again on a wrapped model: no change).

    Run the returned model with autocast off: its geometry (decode, NMS, thresholds) is then
    float32 and only the wrapped networks run in `dtype`. Returns `model`.
    """
    for path in HALF_PARTS:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        part = getattr(parent, name)
        if not isinstance(part, Autocast):
            setattr(parent, name, Autocast(part, dtype))
    return model


def half_parts(model: nn.Module) -> dict[str, torch.dtype]:
    """Which HALF_PARTS of `model` are wrapped, and to what dtype (empty: a float32 model)."""
    out = {}
    for path in HALF_PARTS:
        part = model.get_submodule(path)
        if isinstance(part, Autocast):
            out[path] = part.dtype
    return out
