"""The label names and architecture a streamseg checkpoint carries, read without torch.

Configs are resolved in processes that never import torch (the supervisor, the CLI), yet the
label names of a trained model live in its checkpoint. A torch checkpoint is a zip file whose
`data.pkl` holds the top-level dict; its tensors are references to other members of the zip.
This module reads that dict with an unpickler that imports nothing: every class the file names
becomes an inert placeholder and no tensor data is read, so a hostile file can run no code.
The weights themselves are only ever loaded by `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

CHECKPOINT_FORMAT = "streamseg.checkpoint/1"
_MAX_PICKLE = 64 << 20  # bytes; a checkpoint's data.pkl is ~100 kB (the tensors are elsewhere)


class _Inert:
    """Stands for any object the pickle names (tensors, OrderedDict, storages); does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:  # imports nothing, ever
        return _Inert

    def persistent_load(self, pid: Any) -> None:  # tensor storages: not read
        return None


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """{"arch": str | None, "labels": tuple[str, ...] | None} of a streamseg checkpoint; None for
    anything else (a torchvision state_dict, an unreadable or missing file): such files are
    judged when the weights are loaded."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [i for i in z.infolist() if i.filename.endswith("/data.pkl")]
            if len(pkl) != 1 or pkl[0].file_size > _MAX_PICKLE:
                return None
            data = _InertUnpickler(io.BytesIO(z.read(pkl[0]))).load()
    except Exception:  # noqa: BLE001  not a checkpoint we can read: torch.load will say why
        return None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        return None
    labels = data.get("labels")
    ok = isinstance(labels, list) and labels and all(isinstance(v, str) for v in labels)
    arch = data.get("arch")
    return {
        "arch": arch if isinstance(arch, str) else None,
        "labels": tuple(labels) if ok else None,
    }
