"""Runs batches of frames through the model on CPU or GPU: the inference stage's compute core.

No sockets: the stage shell (streamseg.inference.main) feeds it batches and sends what it returns.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from streamseg.inference.model import compact_forward, image_tensor, to_model_input

# Frames arrive as read-only views of ZeroMQ buffers; they are only ever read.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class Executor:
    """Runs batches of uint8 RGB frames through the model; hides the CPU/GPU differences.

    On CUDA, frames are staged in pinned memory, uploaded as uint8 (4x fewer bytes than float),
    converted and normalised on the GPU, and the model runs channels-last under fp16 autocast.
    """

    def __init__(self, model: torch.nn.Module, *, fp16: bool = True) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.fp16 = fp16 and self.cuda
        if self.cuda:
            self.model.to(memory_format=torch.channels_last)

    def to_tensors(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """uint8[H, W, 3] RGB arrays -> float[3, H, W] in [0, 1] on the model's device."""
        if not self.cuda:
            return [image_tensor(im) for im in images]
        return [
            to_model_input(torch.from_numpy(im).pin_memory().to(self.device, non_blocking=True))
            for im in images
        ]

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per image: boxes float32[N, 4] xyxy px, scores float32[N], labels int64[N],
        masks float32[N, 28, 28] (probabilities)."""
        tensors = self.to_tensors(images)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            dets = compact_forward(self.model, tensors)
        out = []
        for d in dets:
            out.append(
                {
                    "boxes": d["boxes"].float().cpu().numpy(),
                    "scores": d["scores"].float().cpu().numpy(),
                    "labels": d["labels"].cpu().numpy(),
                    "masks": d["masks"][:, 0].float().cpu().numpy(),
                }
            )
        return out
