"""The executor's fast path on CPU: the staging buffer, the one-copy packing, and submit/finish
overlapping two batches give exactly what the plain forward gives. CUDA: tests/test_gpu_cuda.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamseg.accounting import Counters
from streamseg.inference.batches import BatchRunner
from streamseg.inference.executor import (
    Executor,
    Staging,
    pack_detections,
    split_frames,
    unpack_detections,
)
from streamseg.inference.model import build_model, compact_forward, image_tensor
from streamseg.stage.shell import StatsReporter
from streamseg.wire.messages import Frame


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_staging_reuses_its_buffer_and_keeps_each_frame() -> None:
    staging = Staging(pin=False)
    big = _frames(3, 48, 64) + _frames(1, 30, 20, seed=1)  # mixed sizes in one batch
    flat, sizes = staging.fill(big)
    assert sizes == [(48, 64)] * 3 + [(30, 20)]
    assert all(
        np.array_equal(t.numpy(), im) for t, im in zip(split_frames(flat, sizes), big, strict=True)
    )
    first = staging.buffer.data_ptr()
    for seed in range(2, 5):  # smaller or equal batches: the same memory every time
        frames = _frames(2, 48, 64, seed=seed)
        flat, sizes = staging.fill(frames)
        assert staging.buffer.data_ptr() == first
        assert all(
            np.array_equal(t.numpy(), im)
            for t, im in zip(split_frames(flat, sizes), frames, strict=True)
        )
    assert staging.grown == 1
    staging.fill(_frames(5))  # a bigger batch grows it once
    assert staging.grown == 2


def test_staging_of_no_frames_is_empty() -> None:
    flat, sizes = Staging(pin=False).fill([])
    assert flat.numel() == 0 and sizes == [] and split_frames(flat, sizes) == []


def _det(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "boxes": torch.rand(n, 4, generator=g) * 1000,
        "scores": torch.rand(n, generator=g),
        "labels": torch.randint(1, 91, (n,), generator=g),
        "masks": torch.rand(n, 1, 28, 28, generator=g),
    }


def test_pack_and_unpack_round_trip_exactly_with_empty_images() -> None:
    dets = [_det(3, 0), _det(0, 1), _det(5, 2)]
    packed, counts = pack_detections(dets)
    assert counts == [3, 0, 5] and packed.shape == (8, 790) and packed.dtype == torch.float32
    out = unpack_detections(packed.numpy(), counts)
    for d, o in zip(dets, out, strict=True):
        assert np.array_equal(o["boxes"], d["boxes"].numpy())
        assert np.array_equal(o["scores"], d["scores"].numpy())
        assert o["labels"].dtype == np.int64 and np.array_equal(o["labels"], d["labels"].numpy())
        assert o["masks"].shape == (len(d["boxes"]), 28, 28)
        assert np.array_equal(o["masks"], d["masks"][:, 0].numpy())
    assert unpack_detections(pack_detections([])[0].numpy(), []) == []


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        "shapes_mobilenet_v3_fpn", num_classes=4, min_size=96, max_size=128, score_threshold=0.0
    ).eval()


def _reference(model: torch.nn.Module, frames: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    with torch.inference_mode():
        dets = compact_forward(model, [image_tensor(im) for im in frames])
    return [
        {
            "boxes": d["boxes"].numpy(),
            "scores": d["scores"].numpy(),
            "labels": d["labels"].numpy(),
            "masks": d["masks"][:, 0].numpy(),
        }
        for d in dets
    ]


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype, k
            assert np.array_equal(x[k], y[k]), k


@pytest.mark.parametrize("staging", [False, True])
def test_executor_matches_the_plain_forward(model: torch.nn.Module, staging: bool) -> None:
    executor = Executor(model, staging=staging)
    assert not executor.cuda and not executor.fp16  # CPU: float32, no autocast
    frames = _frames(3)
    _same(executor(frames), _reference(model, frames))


def test_next_batch_submitted_before_this_one_finishes(model: torch.nn.Module) -> None:
    """The overlap's order of calls (submit k+1, then finish k): both staging buffers in use,
    and neither batch sees the other's frames."""
    executor = Executor(model, staging=True)
    a, b, c = _frames(2, seed=1), _frames(3, seed=2), _frames(1, seed=3)
    pa = executor.submit(a)
    pb = executor.submit(b)
    assert (pa.slot, pb.slot) == (0, 1)
    _same(executor.finish(pa), _reference(model, a))
    pc = executor.submit(c)  # slot 0 again, refilled while b is pending
    _same(executor.finish(pb), _reference(model, b))
    _same(executor.finish(pc), _reference(model, c))


def test_warm_up_runs_each_shape_once(model: torch.nn.Module) -> None:
    executor = Executor(model)
    assert executor.warm_up(48, 64, (1, 2))
    assert not executor.warm_up(48, 64, (1, 2))
    assert executor.warm_up(48, 64, (1, 3))  # only the new batch size
    assert executor.warmed == {(48, 64, 1), (48, 64, 2), (48, 64, 3)}


def test_executor_of_an_empty_batch() -> None:
    model = build_model("shapes_mobilenet_v3_fpn", num_classes=4, min_size=96, max_size=128)
    assert Executor(model.eval(), staging=True)([]) == []


def test_batch_runner_sends_each_frames_detections_in_order_and_counts_them(model) -> None:
    """The one batch function both topologies use (inference.batches)."""
    counters = Counters()
    reporter = StatsReporter(None, "inference", counters)
    sent = []
    executor = Executor(model)
    runner = BatchRunner(
        executor,
        reporter,
        counters,
        sent.append,
        mask_threshold=0.5,
        forward_images=False,
        max_batch=4,
    )
    assert not runner.overlaps  # CPU: submit and finish run back to back
    images = _frames(3)
    frames = [Frame("a", 5, 0.2, 1.0, images[0], prev=3), Frame("b", 0, 0.0, 1.0, images[1])]
    runner.run(frames)
    runner.run([Frame("a", 6, 0.24, 1.0, images[2], prev=5)])
    ref = _reference(model, images)
    assert [(d.stream, d.frame, d.prev, d.batch) for d in sent] == [
        ("a", 5, 3, 2),
        ("b", 0, -1, 2),
        ("a", 6, 5, 1),
    ]
    for det, r in zip(sent, ref, strict=True):
        assert (det.width, det.height) == (64, 48) and det.image is None
        assert np.array_equal(det.boxes, r["boxes"]) and np.array_equal(det.masks, r["masks"])
        assert det.colors is not None and det.colors.shape == (len(r["boxes"]), 3)
        assert det.infer_ms > 0
    assert counters["a"].frames_out == 2 and counters["b"].frames_out == 1
    assert runner.figures() == {"batches": 2, "mean_batch": 1.5}
    assert reporter.busy_s > 0
