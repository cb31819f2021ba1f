"""Mask paste and COCO RLE encoding for Mask R-CNN's compact per-frame results.

The inference stage ships, per frame, the mask head's low-resolution probabilities
(``float32[N, 1, M, M]``, M = 28 for torchvision) and the boxes they belong to. This module
turns them into binary masks equal to torchvision's
``paste_masks_in_image(masks, boxes, (H, W), padding=1) > threshold`` (what ``model.eval()``
gives users) and into COCO RLE, without torchvision's per-instance loop and without ever
building N full-frame masks: each instance is kept as a crop of the frame region its box covers
(:class:`LocalMasks`), and the RLE is computed from the crops.

How the paste stays cheap: bilinear resizing is separable. Resampling the padded (M + 2)^2 mask
along x to the crop width (one batched matmul) gives, per crop column, M + 2 values at the
source rows. Every crop pixel lies between two of them, in a "segment" of about box_h / M
rows, along which the interpolated value is monotonic. Where both ends are clearly on one side
of the threshold so is the whole segment, so the crops are one row-copy expansion of
per-segment states; in the few segments that straddle the threshold (about two per crop
column) the crossing row is computed analytically, checked on its two neighbouring pixels, and
the in-mask run is written. Pixels within float rounding of the threshold are recomputed with
ATen's own float32 arithmetic (its fused multiply-adds and kernel choice), so on CPU the result
is bit-identical to torchvision's.

Everything here is pure. Torch ops run on the input's device; results are numpy on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F

# torchvision pads the M x M mask by one zero pixel on each side and grows the box to match.
_PADDING = 1
# torchvision's paste_mask_in_image: an integer box [x0, x1] covers x1 - x0 + 1 pixels.
_TO_REMOVE = 1
# ATen's CPU bilinear kernel switches to a non-separable formula (weights w_y * w_x, four
# fused multiply-adds) when out_h + out_w <= this; the exact re-evaluation follows suit.
_ATEN_SMALL_OUTPUT = 128
# Segments whose end values are this far (relative to the largest probability) from the
# threshold are decided without evaluating pixels, and interpolated pixels this far from it
# need no exact re-evaluation: plain float32 ops differ from ATen's by < 2e-7 of that scale.
_MARGIN = 2e-6


@dataclass(frozen=True)
class LocalMasks:
    """Binary instance masks of one frame, stored as box-local crops.

    Attributes:
        masks: bool[N, Hm, Wm]; instance i occupies ``masks[i, :h[i], :w[i]]``, the rest is
            False. ``masks[i, r, c]`` is frame pixel (row ``y0[i] + r``, column ``x0[i] + c``).
            From :func:`paste_masks`, Hm = max(h) and Wm = max(w).
        x0: int32[N], frame column of each crop's left edge, in [0, W].
        y0: int32[N], frame row of each crop's top edge, in [0, H].
        h: int32[N], crop height in pixels, in [0, Hm]; 0 for a box wholly outside the frame.
        w: int32[N], crop width in pixels, in [0, Wm]; 0 for a box wholly outside the frame.
        frame_size: (H, W) of the frame in pixels.
    """

    masks: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    h: np.ndarray
    w: np.ndarray
    frame_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def full(self) -> np.ndarray:
        """Full-frame masks, bool[N, H, W] (for rendering and tests; costs N * H * W bytes)."""
        frame_h, frame_w = self.frame_size
        out = np.zeros((len(self), frame_h, frame_w), dtype=bool)
        for i in range(len(self)):
            x0, y0, h, w = int(self.x0[i]), int(self.y0[i]), int(self.h[i]), int(self.w[i])
            out[i, y0 : y0 + h, x0 : x0 + w] = self.masks[i, :h, :w]
        return out

    def areas(self) -> np.ndarray:
        """Mask areas in pixels, int64[N]."""
        return self.masks.sum(axis=(1, 2), dtype=np.int64)


def _expand_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale boxes around their centres, op for op as torchvision's ``expand_boxes``.

    Args:
        boxes: float[N, 4], xyxy, frame pixels.
        scale: growth factor, (M + 2) / M.

    Returns:
        float[N, 4], xyxy, frame pixels, same dtype as ``boxes``.
    """
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` rounded once, as the fused multiply-adds in ATen's kernels.

    The float32 product is exact in float64, so one float64 add and one cast round (almost
    always) like a hardware FMA.
    """
    return (a.double() * b.double() + c.double()).to(torch.float32)


class _Taps(NamedTuple):
    """Linear resampling taps along one axis, per instance and crop column (or row).

    i0, i1: int64[N, K], the two source indices, in [0, S - 1].
    w0, w1: float32[N, K], their weights; 0 at padding positions past the crop.
    """

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor


def _linear_taps(
    dst: torch.Tensor, out_size: torch.Tensor, in_size: int, valid: torch.Tensor
) -> _Taps:
    """Source taps and weights of 1-D linear resampling, as ``F.interpolate`` computes them.

    Mirrors ATen's ``compute_source_index_and_lambda`` for ``align_corners=False``:
    ``src = in / out * (dst + 0.5) - 0.5`` (one fused multiply-add), clamped at 0; the upper
    tap is clamped at the last source index.

    Args:
        dst: int64[N, K], destination indices in the resized (``out_size`` long) signal.
        out_size: int64[N, 1], resized length per instance, >= 1.
        in_size: source length (M + 2).
        valid: bool[N, K], False for padding positions; their weights are set to 0.

    Returns:
        The taps; w0 + w1 is 1 up to rounding at valid positions.
    """
    # float32 division as ATen does it (int / tensor would multiply by a rounded reciprocal).
    scale = torch.full_like(out_size, in_size, dtype=torch.float32) / out_size
    src = _fma(scale, dst.to(torch.float32) + 0.5, torch.full_like(scale, -0.5)).clamp_min(0.0)
    i0 = src.to(torch.int64).clamp_max(in_size - 1)  # truncation == floor for src >= 0
    i1 = (i0 + 1).clamp_max(in_size - 1)
    w1 = src - i0.to(torch.float32)
    w0 = 1.0 - w1
    zero = torch.zeros((), dtype=torch.float32, device=dst.device)
    return _Taps(i0, i1, torch.where(valid, w0, zero), torch.where(valid, w1, zero))


def paste_masks(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    frame_size: tuple[int, int],
    threshold: float = 0.5,
) -> LocalMasks:
    """Paste low-res mask probabilities into their boxes and threshold them.

    Equals ``torchvision.models.detection.roi_heads.paste_masks_in_image(masks, boxes,
    frame_size, padding=1)[:, 0] > threshold``, computed for all instances at once and only
    inside each box's visible region. Bit-identical on CPU (ATen's rounding is reproduced);
    elsewhere a pixel whose probability is within float rounding of the threshold may differ.

    Args:
        masks: float32[N, 1, M, M], mask probabilities in [0, 1] of each instance's class (the
            mask head's output before pasting), on any device.
        boxes: float32[N, 4], xyxy, frame pixels (the boxes ``model.eval()`` returns), on the
            same device.
        frame_size: (H, W) of the frame in pixels.
        threshold: a pixel is in the mask where its probability is > threshold; in [0, 1).

    Returns:
        The thresholded masks as box-local crops, on the host.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"paste_masks: threshold must be in [0, 1), got {threshold}")
    frame_h, frame_w = int(frame_size[0]), int(frame_size[1])
    n, m = masks.shape[0], masks.shape[-1]
    src_size = m + 2 * _PADDING
    device = masks.device

    # Integer boxes exactly as torchvision: grow by (M + 2) / M, truncate toward zero.
    ibox = _expand_boxes(boxes.reshape(n, 4), float(src_size) / m).to(torch.int64)
    bx0, by0, bx1, by1 = ibox.cpu().numpy().T
    box_w = np.maximum(bx1 - bx0 + _TO_REMOVE, 1)
    box_h = np.maximum(by1 - by0 + _TO_REMOVE, 1)
    # Visible part of each box; torchvision pastes rows [max(y0, 0), min(y1 + 1, H)).
    x0 = np.clip(bx0, 0, frame_w)
    y0 = np.clip(by0, 0, frame_h)
    w = np.maximum(np.clip(bx1 + 1, 0, frame_w) - x0, 0)
    h = np.maximum(np.clip(by1 + 1, 0, frame_h) - y0, 0)
    crop_h = int(h.max()) if n else 0
    crop_w = int(w.max()) if n else 0

    def local(crops: np.ndarray) -> LocalMasks:
        return LocalMasks(
            masks=crops,
            x0=x0.astype(np.int32),
            y0=y0.astype(np.int32),
            h=h.astype(np.int32),
            w=w.astype(np.int32),
            frame_size=(frame_h, frame_w),
        )

    if crop_h == 0 or crop_w == 0:
        return local(np.zeros((n, crop_h, crop_w), dtype=bool))

    # Per instance, as [N, 1] columns on the device: crop offset in the resized box, resized
    # box size, visible size; for x, then for y.
    x_off, box_cols, vis_cols, y_off, box_rows, vis_rows = torch.from_numpy(
        np.stack([x0 - bx0, box_w, w, y0 - by0, box_h, h])
    ).to(device)[:, :, None]
    cols = torch.arange(crop_w, device=device)[None, :]
    rows = torch.arange(crop_h, device=device)[None, :]
    x_taps = _linear_taps(cols + x_off, box_cols, src_size, cols < vis_cols)
    y_taps = _linear_taps(rows + y_off, box_rows, src_size, rows < vis_rows)

    # Padded probabilities [N, S, S] (S = M + 2), indexed [instance, source row, source col].
    padded = F.pad(masks.reshape(n, m, m).to(torch.float32), (_PADDING,) * 4)
    # Pass 1, along x: along_x[i, k, c] = value at source row k, crop column c; [N, S, Wm].
    along_x = _resample_x(padded, x_taps)

    # Pass 2, along y, by segments: segment k of a crop column holds the crop rows that
    # interpolate between source rows k and k + 1. The last source row (k = S - 1) is zero
    # padding, so its segment and the rows below the crop (put there too) are all False.
    segment = torch.where(rows < vis_rows, y_taps.i0, src_size - 1)  # [N, Hm]
    seg_len = torch.zeros(n, src_size, dtype=torch.int64, device=device)
    seg_len.scatter_add_(1, segment, torch.ones_like(segment))
    margin = _MARGIN * max(1.0, float(masks.abs().amax()))
    above = along_x > threshold + margin
    maybe = along_x > threshold - margin
    # state[i, k, c]: both ends of the segment clearly above => all its pixels are in the mask.
    state = torch.zeros(n, src_size, crop_w, dtype=torch.bool, device=device)
    on = torch.logical_and(above[:, :-1], above[:, 1:], out=state[:, :-1])
    mixed = ((maybe[:, :-1] | maybe[:, 1:]) ^ on) & (seg_len[:, :-1, None] > 0)

    # Run-length expansion of the segment states into the crops [N, Hm, Wm]: crop row r of
    # instance i is row segment[i, r] of the state table, a row copy.
    state_row = (torch.arange(n, device=device)[:, None] * src_size + segment).view(-1)
    crops = state.view(n * src_size, crop_w).index_select(0, state_row).view(n, crop_h, crop_w)

    # Segments whose ends straddle the threshold: set their pixels that are in the mask.
    straddling = _flatnonzero(mixed)
    if straddling.numel():
        _fill_straddling(
            crops,
            straddling,
            along_x,
            seg_len,
            y_off.view(-1),
            box_rows.view(-1),
            threshold,
            margin,
            _Exact(padded, x_taps, y_taps, torch.from_numpy(box_h + box_w <= _ATEN_SMALL_OUTPUT)),
        )
    return local(crops.cpu().numpy())


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """int64[K], indices of the True entries of a bool tensor, flattened (row-major)."""
    if mask.device.type == "cpu":
        # numpy's is several times faster than torch.nonzero on CPU (and shares the memory).
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


def _resample_x(padded: torch.Tensor, x_taps: _Taps) -> torch.Tensor:
    """Linear resampling along x of every source row, in plain float32.

    Args:
        padded: float32[N, S, S], padded probabilities, [instance, source row, source col].
        x_taps: taps of the crop columns, [N, Wm].

    Returns:
        float32[N, S, Wm], within 1e-7 of ATen's first pass (not bitwise).
    """
    ix0, ix1, wx0, wx1 = x_taps
    n, src_size, _ = padded.shape
    crop_w = ix0.shape[1]
    matmul_exact = torch.get_float32_matmul_precision() == "highest" and not (
        padded.is_cuda and torch.backends.cuda.matmul.allow_tf32
    )
    if matmul_exact:
        # A sparse [S, Wm] weight matrix per instance and one batched matmul: several times
        # faster than gathering two taps per output.
        weights = torch.zeros(n, src_size, crop_w, dtype=torch.float32, device=padded.device)
        weights.scatter_add_(1, ix0[:, None, :], wx0[:, None, :])
        weights.scatter_add_(1, ix1[:, None, :], wx1[:, None, :])
        return torch.bmm(padded, weights)
    # TF32 / bfloat16 matmuls would be far too coarse for the threshold decisions.
    p0 = padded.gather(2, ix0[:, None, :].expand(n, src_size, crop_w))
    p1 = padded.gather(2, ix1[:, None, :].expand(n, src_size, crop_w))
    return p0 * wx0[:, None, :] + p1 * wx1[:, None, :]


class _Exact(NamedTuple):
    """What :func:`_exact_values` needs to redo pixels with ATen's rounding.

    padded: float32[N, S, S], padded probabilities, [instance, source row, source col].
    x_taps, y_taps: taps of the crop columns [N, Wm] and rows [N, Hm].
    small_box: bool[N] (host), instances whose resized box has h + w <= 128.
    """

    padded: torch.Tensor
    x_taps: _Taps
    y_taps: _Taps
    small_box: torch.Tensor


def _fill_straddling(
    crops: torch.Tensor,
    straddling: torch.Tensor,
    along_x: torch.Tensor,
    seg_len: torch.Tensor,
    y_off: torch.Tensor,
    box_rows: torch.Tensor,
    threshold: float,
    margin: float,
    exact: _Exact,
) -> None:
    """Set the in-mask pixels of the column segments whose ends straddle the threshold.

    Along a segment the interpolated value is monotonic, so its pixels are in the mask from
    (rising) or up to (falling) the row where it crosses the threshold. That row is found
    analytically and checked on the two pixels around it; segments where either is within
    ``margin`` of the threshold (ties, plateaus) are thresholded pixel by pixel instead.

    Args:
        crops: bool[N, Hm, Wm], written in place; the segments' pixels are False on entry.
        straddling: int64[G], flat indices of the segments in [N, S - 1, Wm] (instance,
            segment = upper source row, crop column).
        along_x: float32[N, S, Wm], the x-resampled source rows.
        seg_len: int64[N, S], crop rows per segment.
        y_off: int64[N], crop row 0 as a row of the resized box.
        box_rows: int64[N], resized box height.
        threshold, margin: as in :func:`paste_masks`.
        exact: for the pixel-by-pixel fallback.
    """
    n, crop_h, crop_w = crops.shape
    src_size = along_x.shape[1]
    inst, seg_col = straddling // ((src_size - 1) * crop_w), straddling % ((src_size - 1) * crop_w)
    seg, col = seg_col // crop_w, seg_col % crop_w
    seg_id = inst * src_size + seg
    count = seg_len.view(-1).index_select(0, seg_id)
    seg_row = (torch.cumsum(seg_len, dim=1) - seg_len).view(-1).index_select(0, seg_id)
    first_row = inst * crop_h + seg_row  # in the stacked crops [N * Hm, Wm]
    top = along_x.view(-1).index_select(0, straddling + inst * crop_w)  # [i, seg, c]
    bottom = along_x.view(-1).index_select(0, straddling + (inst + 1) * crop_w)  # [i, seg + 1, c]

    # Where top + (bottom - top) * w1 = threshold, with w1 = src_y - seg and
    # src_y = S / box_h * (box row + 0.5) - 0.5; j = the first pixel past it, counted from the
    # segment's first row. float64, so that only near-ties can be off by one.
    crossing = (threshold - top.double()) / (bottom.double() - top.double())
    box_row = (seg + crossing + 0.5) * box_rows.index_select(0, inst) / src_size - 0.5
    past = torch.nan_to_num(box_row, nan=-1.0).clamp(-1.0, 2.0**40).floor().long() + 1
    j = torch.minimum((past - y_off.index_select(0, inst) - seg_row).clamp(min=0), count)

    # The pixels on both sides of the crossing, in plain float32 (ATen's value up to rounding),
    # must each be clearly on their side.
    rising = bottom > top
    wy0, wy1 = exact.y_taps.w0.view(-1), exact.y_taps.w1.view(-1)
    row_lo = first_row + (j - 1).clamp(min=0)
    row_hi = first_row + torch.minimum(j, count - 1)
    v_lo = top * wy0.index_select(0, row_lo) + bottom * wy1.index_select(0, row_lo)
    v_hi = top * wy0.index_select(0, row_hi) + bottom * wy1.index_select(0, row_hi)
    lo_ok = torch.where(rising, v_lo < threshold - margin, v_lo > threshold + margin)
    hi_ok = torch.where(rising, v_hi > threshold + margin, v_hi < threshold - margin)
    sure = (lo_ok | (j == 0)) & (hi_ok | (j == count))

    # In-mask rows of the sure segments: [j, count) when rising, [0, j) when falling.
    start = torch.where(rising, j, 0)
    run = torch.where(sure, torch.where(rising, count - j, j), 0)
    _fill_rows(crops, first_row + start, col, run)
    if not bool(sure.all()):
        doubt = _flatnonzero(~sure)
        _fill_exactly(
            crops,
            exact,
            first_row[doubt],
            col[doubt],
            count[doubt],
            top[doubt],
            bottom[doubt],
            threshold,
            margin,
        )


def _fill_rows(
    crops: torch.Tensor, first_row: torch.Tensor, col: torch.Tensor, length: torch.Tensor
) -> None:
    """Set runs of crop pixels down single columns.

    Args:
        crops: bool[N, Hm, Wm], written in place.
        first_row: int64[G], first row of each run in the stacked crops (i * Hm + crop row).
        col: int64[G], crop column of each run.
        length: int64[G], pixels per run, >= 0.
    """
    pixel_run = torch.repeat_interleave(length)
    if pixel_run.numel() == 0:
        return
    width = crops.shape[2]
    start = (first_row - (torch.cumsum(length, 0) - length)) * width + col
    dest = torch.arange(pixel_run.numel(), device=crops.device) * width
    dest += start.index_select(0, pixel_run)
    crops.view(-1)[dest] = True


def _fill_exactly(
    crops: torch.Tensor,
    exact: _Exact,
    first_row: torch.Tensor,
    col: torch.Tensor,
    length: torch.Tensor,
    top: torch.Tensor,
    bottom: torch.Tensor,
    threshold: float,
    margin: float,
) -> None:
    """Threshold the pixels of some column segments one by one, rounding as ATen where needed.

    Args:
        crops: bool[N, Hm, Wm], written in place (the segments' pixels are False on entry).
        exact: for pixels within ``margin`` of ``threshold``, recomputed as ATen does.
        first_row: int64[G], first row of each segment in the stacked crops (i * Hm + row).
        col: int64[G], crop column of each segment.
        length: int64[G], rows per segment.
        top, bottom: float32[G], the x-resampled values at the segment's two source rows.
        threshold, margin: as in :func:`paste_masks`.
    """
    crop_h, crop_w = crops.shape[1:]
    pixel_seg = torch.repeat_interleave(length)
    row = torch.arange(pixel_seg.numel(), device=crops.device)
    row += (first_row - (torch.cumsum(length, 0) - length)).index_select(0, pixel_seg)
    col = col.index_select(0, pixel_seg)
    values = top.index_select(0, pixel_seg) * exact.y_taps.w0.view(-1).index_select(0, row)
    values += bottom.index_select(0, pixel_seg) * exact.y_taps.w1.view(-1).index_select(0, row)
    near = _flatnonzero((values - threshold).abs() <= margin)
    if near.numel():
        inst = row[near] // crop_h
        values[near] = _exact_values(exact, inst, row[near] - inst * crop_h, col[near])
    crops.view(-1)[row * crop_w + col] = values > threshold


def _exact_values(
    exact: _Exact, inst: torch.Tensor, row: torch.Tensor, col: torch.Tensor
) -> torch.Tensor:
    """Bilinear values of single crop pixels, rounded exactly as ATen's CPU kernels round.

    Args:
        exact: the padded probabilities, taps and kernel choice per instance.
        inst, row, col: int64[P], instance, crop row and crop column of each pixel.

    Returns:
        float32[P]. ATen's generic kernel resamples along x, then along y, each tap pair as
        ``fma(v0, w0, v1 * w1)``; for small outputs (``small_box``) it sums four
        ``v * (w_y * w_x)`` terms in a chain of fused multiply-adds.
    """
    padded = exact.padded
    ix0, ix1, wx0, wx1 = (t[inst, col] for t in exact.x_taps)
    iy0, iy1, wy0, wy1 = (t[inst, row] for t in exact.y_taps)
    v00, v01 = padded[inst, iy0, ix0], padded[inst, iy0, ix1]
    v10, v11 = padded[inst, iy1, ix0], padded[inst, iy1, ix1]

    top = _fma(v00, wx0, v01 * wx1)
    bottom = _fma(v10, wx0, v11 * wx1)
    separable = _fma(top, wy0, bottom * wy1)

    quad = v01 * (wy0 * wx1)
    quad = _fma(v00, wy0 * wx0, quad)
    quad = _fma(v10, wy1 * wx0, quad)
    quad = _fma(v11, wy1 * wx1, quad)
    small = exact.small_box.to(padded.device)[inst]
    return torch.where(small, quad, separable)


def rle_encode(local: LocalMasks) -> list[dict]:
    """COCO compressed RLE of each instance's full-frame mask.

    Byte-identical to ``pycocotools.mask.encode(np.asfortranarray(full.astype(np.uint8)))``
    with ``counts`` decoded to str, but computed from the crops: COCO runs are column-major
    over the frame, so the run boundaries are the value transitions inside each crop column
    (with zeros above and below the crop) at frame offsets ``column * H + row``.

    Args:
        local: masks of one frame.

    Returns:
        One ``{"size": [H, W], "counts": str}`` per instance, in order.
    """
    frame_h, frame_w = local.frame_size
    n_pixels = frame_h * frame_w
    uncompressed = []
    for i in range(len(local)):
        h, w = int(local.h[i]), int(local.w[i])
        if h == 0 or w == 0:
            uncompressed.append(
                {"size": [frame_h, frame_w], "counts": np.array([n_pixels], dtype=np.uint32)}
            )
            continue
        crop = local.masks[i, :h, :w]
        # edges[r, c]: the value changes just above crop row r (r = h: just below the crop).
        edges = np.empty((h + 1, w), dtype=bool)
        edges[0] = crop[0]
        edges[-1] = crop[-1]
        np.not_equal(crop[1:], crop[:-1], out=edges[1:-1])
        row, col = np.divmod(np.flatnonzero(edges), w)
        # Row-major transitions into column-major order: a stable sort by column (uint16 keys
        # make numpy use its linear-time radix sort).
        order = np.argsort(col.astype(np.uint16), kind="stable")
        offset = (col[order] + int(local.x0[i])) * frame_h + row[order] + int(local.y0[i])
        if h == frame_h and offset.size:
            # Column c ends at offset (c + 1) * H, where column c + 1 may start: a 1 -> 0 and
            # a 0 -> 1 at the same offset are no boundary at all.
            keep = np.ones(offset.size + 1, dtype=bool)
            same = np.flatnonzero(offset[1:] == offset[:-1])
            keep[same] = False
            keep[same + 1] = False
            offset = offset[keep[:-1]]
        if offset.size and offset[-1] == n_pixels:  # runs end at H * W anyway
            offset = offset[:-1]
        counts = np.diff(offset, prepend=0, append=n_pixels).astype(np.uint32)
        uncompressed.append({"size": [frame_h, frame_w], "counts": counts})
    if not uncompressed:
        return []
    # pycocotools compresses uncompressed RLEs in C.
    compressed = mask_utils.frPyObjects(uncompressed, frame_h, frame_w)
    return [{"size": [frame_h, frame_w], "counts": r["counts"].decode("ascii")} for r in compressed]
