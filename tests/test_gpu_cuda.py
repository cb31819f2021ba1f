"""The GPU path on a GPU: every test here is marked `cuda` and skipped without one
(tests/conftest.py). `make gpu-check` runs them first. Their CPU halves: test_executor.py,
test_gpu_precision.py, test_gpu_fastpath.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamseg.config import load_config, model_score_threshold, replace
from streamseg.inference.executor import Executor
from streamseg.inference.model import build_model, compact_forward, image_tensor, load_model
from streamseg.inference.precision import HALF_PARTS, half_parts
from streamseg.tools import synth
from streamseg.tools.bench.fixtures import decode_clip, synthetic_detections
from streamseg.tools.bench.parity import run_parity

pytestmark = pytest.mark.cuda


def _frames(n: int, h: int = 240, w: int = 320, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _small(device: str = "cuda") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "shapes_mobilenet_v3_fpn", num_classes=4, min_size=128, max_size=160, score_threshold=0.0
    )
    return model.eval().to(device)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> list[np.ndarray]:
    d = tmp_path_factory.mktemp("clip")
    synth.write_clip(d / "c.mp4", d / "c.json", seed=3, frames=6, size=(640, 480))
    return decode_clip(d / "c.mp4", 6)


# -- the executor on CUDA -------------------------------------------------------------------------


def test_executor_stages_in_pinned_memory_and_matches_the_plain_forward():
    model = _small()
    executor = Executor(model, fp16=False)
    assert executor.cuda and executor.staged and executor.copy_stream is not None
    assert torch.backends.cudnn.benchmark
    frames = _frames(3)
    out = executor(frames)
    assert executor.slots[0].buffer.is_pinned()
    first = executor.slots[0].buffer.data_ptr()
    executor(frames)
    executor(frames)  # slot 0 again: the same pinned memory
    assert executor.slots[0].buffer.data_ptr() == first and executor.slots[0].grown == 1
    with torch.inference_mode():
        ref = compact_forward(model, [image_tensor(im, "cuda") for im in frames])
    for o, r in zip(out, ref, strict=True):
        np.testing.assert_allclose(o["boxes"], r["boxes"].cpu().numpy(), atol=1e-3)
        np.testing.assert_array_equal(o["labels"], r["labels"].cpu().numpy())
        np.testing.assert_allclose(o["masks"], r["masks"][:, 0].cpu().numpy(), atol=1e-4)


def test_the_next_batch_uploads_while_this_one_computes_and_neither_sees_the_other():
    model = _small()
    executor = Executor(model, fp16=False)
    a, b, c = _frames(2, seed=1), _frames(4, seed=2), _frames(1, seed=3)
    alone = [Executor(_small(), fp16=False)(x) for x in (a, b, c)]
    pa = executor.submit(a)
    pb = executor.submit(b)  # its upload is queued on the copy stream before a computes
    assert pa.uploaded is not None and pb.uploaded is not None
    got_a = executor.finish(pa)
    pc = executor.submit(c)  # refills a's pinned buffer (after a's upload finished)
    got = [got_a, executor.finish(pb), executor.finish(pc)]
    for g, ref in zip(got, alone, strict=True):
        for x, y in zip(g, ref, strict=True):
            np.testing.assert_allclose(x["boxes"], y["boxes"], atol=1e-3)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_mixed_precision_on_cuda_channels_last(half: torch.dtype):
    model = _small()
    executor = Executor(model, fp16=True, half=half)
    assert half_parts(model) == dict.fromkeys(HALF_PARTS, half)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    out = executor(_frames(2))
    for o in out:
        assert o["boxes"].dtype == np.float32 and o["masks"].dtype == np.float32
        assert np.isfinite(o["boxes"]).all() and len(o["boxes"]) > 0


def test_warm_up_at_the_real_size():
    executor = Executor(_small(), fp16=True)
    assert executor.warm_up(1080, 1920, (1, 4))
    assert not executor.warm_up(1080, 1920, (1, 4))


# -- parity: fp16 against fp32 --------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_shapes_model_half_precision_finds_the_same_instances(clip, half):
    cfg = load_config("shapes", device="cuda")
    p = run_parity(
        load_model(cfg),
        clip,
        half=half,
        batch=3,
        score_threshold=model_score_threshold(cfg),
        limit=cfg.detections_per_img,
    )
    assert p.counted > 10
    if half == torch.float16:
        assert p.ok, p.as_dict()  # same instances, boxes within 1 px, mask IoU >= 0.98
    else:  # bf16 keeps 8 bits of mantissa: a box side of 500 px moves by 2 px
        assert p.matched >= 0.9 * p.counted and p.extra <= 0.1 * p.counted, p.as_dict()


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_r50_fpn_fp16_parity_at_1080p(tmp_path: Path, arch: str):
    """Random weights: scores are near ties, so a few instances may fairly swap places across
    the cut; nine in ten of those clearly inside must come back within the limits."""
    synth.write_clip(tmp_path / "c.mp4", tmp_path / "c.json", seed=5, frames=4, size=(1920, 1080))
    frames = decode_clip(tmp_path / "c.mp4", 4)
    cfg = replace(
        load_config(arch, device="cuda"),
        weights="random",
        score_threshold=0.0,
        detections_per_img=20,
    )
    torch.manual_seed(0)
    p = run_parity(
        load_model(cfg), frames, half=torch.float16, batch=4, score_threshold=0.0, limit=20
    )
    assert p.counted > 0
    assert p.matched >= 0.9 * p.counted, p.as_dict()
    assert p.max_box_px <= 1.0 and p.min_mask_iou >= 0.98


# -- placement, paste, codecs ---------------------------------------------------------------------


def test_workers_run_on_the_listed_devices(tmp_path: Path):
    from streamseg.pipeline.spec import load_pipeline
    from streamseg.pipeline.supervisor import run
    from streamseg.source.spec import SourceSpec

    n = torch.cuda.device_count()
    devices = [f"cuda:{i % n}" for i in range(2)]
    shipped = Path(__file__).resolve().parents[1] / "streamseg/data/pipelines/annotate.toml"
    text = shipped.read_text().replace('workers = "auto"', "workers = 2")
    text = text.replace("[inference]\n", f"[inference]\ndevices = {devices!r}\n".replace("'", '"'))
    (tmp_path / "p.toml").write_text(text)
    synth.write_clip(tmp_path / "c.mp4", tmp_path / "c.json", seed=1, frames=12, size=(320, 240))
    cfg = load_config("shapes", device="cuda")
    report = run(
        load_pipeline(tmp_path / "p.toml"),
        [SourceSpec("c", str(tmp_path / "c.mp4"), "file")],
        cfg,
        results=str(tmp_path / "r.jsonl"),
        quiet=True,
    )
    assert report.exit_code == 0 and report.frames_done() == 12
    placed = sorted(e["device"] for k, e in report.extra.items() if k.startswith("inference["))
    assert placed == sorted(devices)


def test_one_inference_process_overlapping_batches_loses_and_reorders_nothing(tmp_path: Path):
    """workers = 1 on CUDA: inference.main submits the next batch before finishing the one it
    holds; every frame of every stream comes out, in order, and the stream ends after them."""
    import json

    from streamseg.pipeline.spec import load_pipeline
    from streamseg.pipeline.supervisor import run
    from streamseg.source.spec import SourceSpec

    shipped = Path(__file__).resolve().parents[1] / "streamseg/data/pipelines/annotate.toml"
    text = shipped.read_text().replace('workers = "auto"', "workers = 1")
    (tmp_path / "p.toml").write_text(text)
    synth.write_clip(tmp_path / "c.mp4", tmp_path / "c.json", seed=4, frames=20, size=(320, 240))
    cfg = replace(load_config("shapes", device="cuda"), max_batch=4)
    specs = [SourceSpec(f"s{i}", str(tmp_path / "c.mp4"), "file") for i in range(3)]
    results = str(tmp_path / "r.{stream}.jsonl")
    report = run(load_pipeline(tmp_path / "p.toml"), specs, cfg, results=results, quiet=True)
    assert report.exit_code == 0 and report.frames_done() == 60
    for i in range(3):
        lines = (tmp_path / f"r.s{i}.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == list(range(20))


def test_batched_paste_on_cuda_matches_cpu():
    from streamseg.postprocess.masks import paste_masks

    det = synthetic_detections(20, (1920, 1080), seed=2)  # smooth 28x28 masks, boxes in frame
    masks = torch.from_numpy(det.masks)[:, None]  # float32[20, 1, 28, 28]
    boxes = torch.from_numpy(det.boxes)
    cpu = paste_masks(masks, boxes, (1080, 1920))
    gpu = paste_masks(masks.cuda(), boxes.cuda(), (1080, 1920))
    for name in ("x0", "y0", "h", "w"):
        np.testing.assert_array_equal(getattr(cpu, name), getattr(gpu, name))
    differ = np.count_nonzero(cpu.full() != gpu.full())  # only pixels at float rounding of 0.5
    assert differ <= 4 * 20


def test_nvdec_decodes_the_frames_software_decodes(tmp_path: Path):
    """hwdecode "cuda": NVDEC where PyAV and the driver have it, else the CPU (a warning)."""
    from streamseg.source.decode import decode_frames, open_input
    from streamseg.source.spec import SourceSpec

    synth.write_clip(tmp_path / "c.mp4", tmp_path / "c.json", seed=2, frames=5, size=(640, 480))
    out = {}
    for mode in ("off", "cuda", "auto"):
        container = open_input(SourceSpec("s", str(tmp_path / "c.mp4"), "file", mode))
        try:
            out[mode] = [im for _, im in decode_frames(container)]
        finally:
            container.close()
    for mode in ("cuda", "auto"):
        assert len(out[mode]) == len(out["off"]) == 5
        for a, b in zip(out[mode], out["off"], strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_nvenc_encodes_where_ffmpeg_has_it(tmp_path: Path):
    import av

    try:
        av.codec.Codec("h264_nvenc", "w")
    except Exception:
        pytest.skip("this FFmpeg has no h264_nvenc")
    frames = _frames(5, 480, 640)
    path = tmp_path / "nvenc.mp4"
    try:
        with av.open(str(path), "w") as out:
            stream = out.add_stream("h264_nvenc", rate=25)
            stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
            for im in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(im, format="rgb24")))
            out.mux(stream.encode())
    except av.error.FFmpegError as e:  # no NVENC in this driver: libx264 is what runs then
        pytest.skip(f"NVENC present in FFmpeg but not usable here: {e}")
    with av.open(str(path)) as c:
        assert len(list(c.decode(video=0))) == 5
