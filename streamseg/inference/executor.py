"""Runs batches of frames through the model on CPU or GPU: the inference stage's compute core.

No sockets: the stage shell (streamseg.inference.batches) feeds it batches and sends what it
returns. A batch goes through in two calls, so that the next batch's upload overlaps this
batch's compute on a GPU:

  submit(images) -> Pending   copy the frames into a reused staging buffer (pinned on CUDA)
                              and start one host->device copy of the whole batch on a copy
                              stream; returns at once on CUDA
  finish(pending) -> results  the model on the compute stream (after that copy), then one
                              device->host copy of every output of the batch

`executor(images)` is `finish(submit(images))`. On CPU the same calls run one after the other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from streamseg.inference.model import compact_forward, to_model_input
from streamseg.inference.precision import mixed_precision

# Frames arrive as read-only views of ZeroMQ buffers; they are only ever read.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

MASK_SIZE = 28
"""The mask head's output side (torchvision: 28 x 28 per instance)."""
_COLUMNS = 4 + 1 + 1 + MASK_SIZE * MASK_SIZE  # box, score, label, mask: one row an instance


class Staging:
    """A reused host buffer holding a batch of uint8 frames back to back (pinned: on CUDA).

    Pinning is slow (a page-locked allocation per call costs more than the copy), so one buffer
    is kept and grown only when a batch needs more bytes than it has.
    """

    def __init__(self, *, pin: bool) -> None:
        self.pin = pin
        self.buffer = torch.empty(0, dtype=torch.uint8, pin_memory=pin)
        self.grown = 0  # allocations so far (a test's measure of reuse)

    def fill(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Copy `images` (uint8[H_i, W_i, 3]) into the buffer, back to back.

        Returns (uint8[sum of H_i * W_i * 3], a view of the buffer) and each image's (H, W).
        """
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        total = sum(h * w * 3 for h, w in sizes)
        if total > self.buffer.numel():
            self.buffer = torch.empty(total, dtype=torch.uint8, pin_memory=self.pin)
            self.grown += 1
        flat = self.buffer[:total]
        start = 0
        for im, (h, w) in zip(images, sizes, strict=True):
            n = h * w * 3
            flat[start : start + n].copy_(torch.from_numpy(np.ascontiguousarray(im)).view(-1))
            start += n
        return flat, sizes


def split_frames(flat: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """uint8[sum of H_i * W_i * 3] -> per image a view uint8[H_i, W_i, 3] (any device)."""
    out, start = [], 0
    for h, w in sizes:
        n = h * w * 3
        out.append(flat[start : start + n].view(h, w, 3))
        start += n
    return out


def pack_detections(dets: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, list[int]]:
    """A batch's detections as one float32[sum N_i, 790] tensor (one device->host copy).

    Row: box xyxy (4), score (1), label (1, exact as float32 below 2**24), mask probabilities
    28 x 28 (784). Returns the tensor (on the detections' device) and each image's N_i.
    """
    counts = [int(d["boxes"].shape[0]) for d in dets]  # shapes: known on the host, no sync
    device = dets[0]["boxes"].device if dets else torch.device("cpu")
    rows = [
        torch.cat(
            [
                d["boxes"].float().reshape(-1, 4),
                d["scores"].float().reshape(-1, 1),
                d["labels"].float().reshape(-1, 1),
                d["masks"].float().reshape(-1, MASK_SIZE * MASK_SIZE),
            ],
            dim=1,
        )
        for d in dets
    ]
    if not rows:
        return torch.empty(0, _COLUMNS, device=device), counts
    return torch.cat(rows), counts


def unpack_detections(packed: np.ndarray, counts: list[int]) -> list[dict[str, np.ndarray]]:
    """pack_detections' rows (float32[sum N_i, 790], on the host) -> per image: boxes
    float32[N, 4] xyxy px, scores float32[N], labels int64[N], masks float32[N, 28, 28]."""
    out, start = [], 0
    for n in counts:
        rows = packed[start : start + n]
        start += n
        out.append(
            {
                "boxes": rows[:, 0:4].copy(),
                "scores": rows[:, 4].copy(),
                "labels": rows[:, 5].astype(np.int64),
                "masks": rows[:, 6:].reshape(n, MASK_SIZE, MASK_SIZE).copy(),
            }
        )
    return out


@dataclass
class Pending:
    """A submitted batch: its model inputs (being uploaded on CUDA) and the upload's event."""

    inputs: list[torch.Tensor]
    uploaded: torch.cuda.Event | None = None
    slot: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)


class Executor:
    """Runs batches of uint8 RGB frames through the model; hides the CPU/GPU differences.

    On CUDA: frames are staged in one of two reused pinned buffers (one batch uploading while
    the other computes), uploaded as uint8 (4x fewer bytes than float) on a copy stream,
    converted and normalised on the GPU; the model runs channels-last with cudnn.benchmark, its
    networks in `half` precision and its geometry in float32 (streamseg.inference.precision);
    the outputs come back in one copy. `fp16=False`: float32 throughout.
    `staging`: use the staging path on CPU too (tests); default: on CUDA only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        fp16: bool = True,
        half: torch.dtype = torch.float16,
        staging: bool | None = None,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.fp16 = fp16 and self.cuda
        self.half = half if self.fp16 else None
        self.staged = self.cuda if staging is None else staging
        self.slots = [Staging(pin=self.cuda), Staging(pin=self.cuda)] if self.staged else []
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._next = 0
        self.warmed: set[tuple[int, int, int]] = set()
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
            self.model.to(memory_format=torch.channels_last)
        if self.half is not None:
            mixed_precision(self.model, self.half)

    def to_tensors(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """uint8[H, W, 3] RGB arrays -> float[3, H, W] in [0, 1] on the model's device."""
        return self.finish_upload(self.submit(images))

    def submit(self, images: list[np.ndarray]) -> Pending:
        """Start a batch: stage and upload (asynchronously on CUDA). See finish."""
        if not self.staged:
            return Pending([to_model_input(torch.from_numpy(im)) for im in images])
        slot = self._next
        self._next = 1 - slot
        event = self._events[slot]
        if event is not None:  # this buffer's last upload must be done before it is refilled
            event.synchronize()
        flat, sizes = self.slots[slot].fill(images)
        if not self.cuda:  # CPU: the inputs must not alias the buffer the next batch refills
            inputs = [to_model_input(im) for im in split_frames(flat.clone(), sizes)]
            return Pending(inputs, None, slot, sizes)
        assert self.copy_stream is not None
        with torch.cuda.stream(self.copy_stream):
            on_device = flat.to(self.device, non_blocking=True)
            inputs = [to_model_input(im) for im in split_frames(on_device, sizes)]
            uploaded = torch.cuda.Event()
            uploaded.record(self.copy_stream)
        self._events[slot] = uploaded
        return Pending(inputs, uploaded, slot, sizes)

    def finish_upload(self, pending: Pending) -> list[torch.Tensor]:
        """The batch's inputs, usable on the current (compute) stream."""
        if pending.uploaded is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(pending.uploaded)
            for t in pending.inputs:  # made on the copy stream, used (and freed) on this one
                t.record_stream(stream)
        return pending.inputs

    @torch.inference_mode()
    def finish(self, pending: Pending) -> list[dict[str, np.ndarray]]:
        """Per image: boxes float32[N, 4] xyxy px, scores float32[N], labels int64[N],
        masks float32[N, 28, 28] (probabilities)."""
        inputs = self.finish_upload(pending)
        if not inputs:
            return []
        dets = compact_forward(self.model, inputs)
        packed, counts = pack_detections(dets)
        return unpack_detections(packed.cpu().numpy(), counts)

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return self.finish(self.submit(images))

    def warm_up(self, height: int, width: int, batches: tuple[int, ...] = (1,)) -> bool:
        """Run black frames of `height` x `width` at each batch size not run before: the first
        call of a shape pays allocation and (cudnn.benchmark) kernel selection. Returns whether
        it ran anything."""
        todo = [n for n in batches if (height, width, n) not in self.warmed]
        for n in todo:
            self([np.zeros((height, width, 3), np.uint8)] * n)
            self.warmed.add((height, width, n))
        return bool(todo)
