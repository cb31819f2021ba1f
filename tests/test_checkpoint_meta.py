"""checkpoint_meta reads a checkpoint's label names without torch and without running the file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import torch

from streamseg.checkpoint_meta import read_meta
from streamseg.shipped import weights_path


def test_shipped_checkpoint_names_its_labels():
    meta = read_meta(weights_path("streamseg:shapes.pt"))
    assert meta == {
        "arch": "shapes_mobilenet_v3_fpn",
        "labels": ("__background__", "circle", "square", "triangle"),
    }


def test_other_files_have_no_meta(tmp_path):
    bare = tmp_path / "bare.pth"  # torchvision's format: a bare state_dict
    torch.save({"w": torch.zeros(2)}, bare)
    text = tmp_path / "x.pt"
    text.write_text("not a zip")
    assert read_meta(bare) is None and read_meta(text) is None
    assert read_meta(tmp_path / "missing.pt") is None


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    data = {
        "format": "streamseg.checkpoint/1",
        "labels": ["__background__", "cat"],
        "x": _Payload(str(marker)),
    }
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(data))
    assert read_meta(path) == {"arch": None, "labels": ("__background__", "cat")}
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(str(marker))))  # what a plain unpickler would have done
    assert marker.exists()


def test_imports_no_torch():
    code = "import sys, streamseg.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
