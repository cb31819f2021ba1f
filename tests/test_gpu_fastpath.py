"""The GPU fast path's pieces that run anywhere: each one checked on CPU against what it
replaced (the render blend, the device check, NVDEC's fallback). CUDA runs: tests/test_gpu_cuda.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamseg.postprocess.masks import LocalMasks
from streamseg.postprocess.render import blend_table, class_color, draw_instances


def _old_blend(image: np.ndarray, masks: LocalMasks, colors: list, alpha: float) -> np.ndarray:
    """The blend as it was: float arithmetic on boolean-indexed pixels."""
    out = image.copy()
    for i in range(len(colors)):
        color = np.array(colors[i], dtype=np.float32)
        x0, y0, h, w = int(masks.x0[i]), int(masks.y0[i]), int(masks.h[i]), int(masks.w[i])
        region = out[y0 : y0 + h, x0 : x0 + w]
        m = masks.masks[i, :h, :w]
        region[m] = (region[m] * (1.0 - alpha) + color * alpha).astype(np.uint8)
    return out


@pytest.mark.parametrize("alpha", [0.45, 0.3, 0.0, 1.0, 0.123])
def test_blend_table_is_the_float_blend_for_every_value(alpha: float) -> None:
    values = np.arange(256, dtype=np.uint8)
    for color in [(0, 0, 0), (255, 255, 255), (12, 200, 99), (254, 1, 128)]:
        pixels = np.stack([values] * 3, axis=1)  # uint8[256, 3]: every value in each channel
        expected = (pixels * (1.0 - alpha) + np.array(color, np.float32) * alpha).astype(np.uint8)
        assert np.array_equal(blend_table(color, alpha), expected)


def test_draw_instances_blends_the_same_pixels_as_before() -> None:
    rng = np.random.default_rng(3)
    h, w = 120, 160
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    n = 6
    y0 = rng.integers(0, h // 2, n).astype(np.int32)
    x0 = rng.integers(0, w // 2, n).astype(np.int32)
    mh = rng.integers(1, h // 2, n).astype(np.int32)
    mw = rng.integers(1, w // 2, n).astype(np.int32)
    crops = rng.random((n, h // 2, w // 2)) > 0.4  # overlapping crops: order matters
    masks = LocalMasks(crops, x0, y0, mh, mw, (h, w))
    boxes = np.zeros((n, 4), np.float32)  # boxes at the corner: their outlines stay out of it
    labels = np.arange(1, n + 1)
    scores = np.linspace(0.1, 0.9, n).astype(np.float32)  # drawn in this order
    out = draw_instances(image, masks, boxes, labels, scores, ["bg"] + ["x"] * n)
    expected = _old_blend(image, masks, [class_color(int(v)) for v in labels], 0.45)
    # the box outlines and labels sit at (0, 0); compare away from them
    assert np.array_equal(out[20:, 40:], expected[20:, 40:])
    assert not np.array_equal(out[20:, 40:], image[20:, 40:])  # something was blended


def _clip(tmp_path, frames: int = 3) -> str:
    from streamseg.tools import synth

    path = tmp_path / "clip.mp4"
    synth.write_clip(path, tmp_path / "clip.json", seed=0, frames=frames, size=(64, 48))
    return str(path)


def _decode(url: str, hwdecode: str) -> list[np.ndarray]:
    from streamseg.source.decode import decode_frames, open_input
    from streamseg.source.spec import SourceSpec

    container = open_input(SourceSpec("s", url, "file", hwdecode))
    try:
        return [image for _, image in decode_frames(container)]
    finally:
        container.close()


def test_hwdecode_auto_without_pyav_hwaccel_decodes_in_software(tmp_path, monkeypatch) -> None:
    import sys

    from streamseg.source.decode import _hwaccel
    from streamseg.source.spec import SourceError

    url = _clip(tmp_path)
    software = _decode(url, "off")
    monkeypatch.setitem(sys.modules, "av.codec.hwaccel", None)  # PyAV < 14: no such module
    assert _hwaccel("auto") is None
    frames = _decode(url, "auto")
    assert len(frames) == len(software) == 3
    assert all(np.array_equal(a, b) for a, b in zip(frames, software, strict=True))
    with pytest.raises(SourceError, match="needs PyAV >= 14"):
        _hwaccel("cuda")


def test_hwdecode_cuda_falls_back_to_the_cpu_where_nvdec_cannot_open(tmp_path) -> None:
    """Here without a GPU; on a CUDA machine the same frames come from NVDEC or the CPU."""
    url = _clip(tmp_path)
    software = _decode(url, "off")
    for mode in ("auto", "cuda"):
        frames = _decode(url, mode)
        assert len(frames) == len(software)
        for a, b in zip(frames, software, strict=True):  # NVDEC's YUV->RGB may differ by a step
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_device_auto_means_what_torch_sees() -> None:
    import torch

    from streamseg.inference.model import resolve_device
    from streamseg.threads import cuda_devices, is_cuda

    assert cuda_devices() == torch.cuda.device_count()
    assert is_cuda("auto") == (resolve_device("auto").type == "cuda")
    assert is_cuda("cuda:1") and not is_cuda("cpu")


def test_device_auto_imports_torch_only_where_a_driver_is_installed() -> None:
    import glob
    import os
    import subprocess
    import sys

    from streamseg.threads import _GPU_HINTS

    driver = any(os.path.exists(p) for p in _GPU_HINTS) or bool(glob.glob("/dev/nvidia[0-9]*"))
    code = "import sys; from streamseg.threads import is_cuda; is_cuda('auto'); "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(driver)  # a CPU machine's run starts without torch
