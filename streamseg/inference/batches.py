"""What both inference topologies share: the model's start and the one batch function (frames
in, each frame's Detections sent and counted).

`inference.main` (one process: batcher and model) and `inference.worker` (behind the
dispatcher) differ only in where their batches come from; what they do with a batch is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamseg.accounting import Counters
from streamseg.config import ModelConfig
from streamseg.inference.colors import instance_colors
from streamseg.inference.executor import Executor, Pending
from streamseg.inference.model import load_model
from streamseg.stage.shell import StatsReporter
from streamseg.wire.messages import Detections, Frame


def start_executor(cfg: ModelConfig) -> Executor:
    """The configured model loaded into an Executor, and warmed up (its first call is slow)."""
    executor = Executor(load_model(cfg), fp16=cfg.fp16)
    executor([np.zeros((cfg.min_size, cfg.min_size, 3), np.uint8)])
    return executor


def detections(
    frames: list[Frame],
    results: list[dict[str, np.ndarray]],
    *,
    infer_ms: float,
    forward_images: bool,
    mask_threshold: float,
) -> list[Detections]:
    """Each frame's Detections from the executor's results (same order): the model time of the
    batch, the batch's size, the frame's `prev`, its instances' colours, and its pixels when a
    stage downstream renders."""
    out = []
    for f, r in zip(frames, results, strict=True):
        h, w = f.image.shape[:2]
        out.append(
            Detections(
                f.stream,
                f.frame,
                f.pts,
                f.wall_time,
                w,
                h,
                r["boxes"],
                r["scores"],
                r["labels"],
                r["masks"],
                f.image if forward_images else None,
                infer_ms,
                len(frames),
                prev=f.prev,
                colors=instance_colors(f.image, r["boxes"], r["masks"], mask_threshold),
            )  # fmt: skip
        )
    return out


@dataclass
class Submitted:
    """A batch on its way through the executor (BatchRunner.submit -> finish)."""

    frames: list[Frame]
    pending: Pending
    submit_s: float


class BatchRunner:
    """The one batch function: run a batch of frames, send each frame's Detections, count it.

    `send(det)` puts one Detections on the wire (the caller's socket, auth and busy timer).
    `max_batch`: on CUDA, each new frame size is first warmed up at batch 1 and `max_batch`
    (allocation and cudnn's kernel choice happen there, not on a frame someone waits for).
    A batch runs as `submit` then `finish`: on CUDA a caller may submit the next batch before
    finishing this one, and its upload overlaps this one's compute (`overlaps`).
    """

    def __init__(
        self,
        executor: Executor,
        reporter: StatsReporter,
        counters: Counters,
        send: Callable[[Detections], None],
        *,
        mask_threshold: float,
        forward_images: bool,
        max_batch: int,
    ) -> None:
        self.executor = executor
        self.reporter = reporter
        self.counters = counters
        self.send = send
        self.mask_threshold = mask_threshold
        self.forward_images = forward_images
        self.max_batch = max_batch
        self.batches = 0
        self.batched = 0  # frames in those batches

    @property
    def overlaps(self) -> bool:
        """Whether submitting the next batch before finishing this one pays (CUDA only: on CPU
        it would only take frames from the batcher early, and batches would be smaller)."""
        return self.executor.cuda

    def submit(self, frames: list[Frame]) -> Submitted:
        if self.executor.cuda:
            h, w = frames[0].image.shape[:2]
            self.executor.warm_up(h, w, tuple(sorted({1, self.max_batch})))
        t0 = time.perf_counter()
        pending = self.executor.submit([f.image for f in frames])
        return Submitted(frames, pending, time.perf_counter() - t0)

    def finish(self, batch: Submitted) -> None:
        t0 = time.perf_counter()
        with self.reporter.busy():  # the heartbeat says so: a long batch is not a stall
            results = self.executor.finish(batch.pending)
        dt = batch.submit_s + time.perf_counter() - t0
        self.reporter.busy_s += dt
        self.batches += 1
        self.batched += len(batch.frames)
        for det in detections(
            batch.frames,
            results,
            infer_ms=dt * 1000.0,
            forward_images=self.forward_images,
            mask_threshold=self.mask_threshold,
        ):
            self.send(det)
            self.counters.count_out(det.stream)

    def run(self, frames: list[Frame]) -> None:
        self.finish(self.submit(frames))

    def figures(self) -> dict[str, float]:
        """batches run and mean_batch (frames a batch), for the stage's report."""
        return {"batches": self.batches, "mean_batch": self.batched / max(1, self.batches)}
