"""streamseg: real-time Mask R-CNN instance masks for video files, RTSP cameras and webcams."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

    from streamseg.api import Pipeline, Report, StreamsegError, annotate

__all__ = ["Pipeline", "Report", "StreamsegError", "annotate", "load_model"]

_API = ("Pipeline", "Report", "StreamsegError", "annotate")


def __getattr__(name: str) -> object:
    """streamseg.Pipeline, streamseg.annotate, ...: imported on first use (no zmq at import)."""
    if name in _API:
        from streamseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamseg' has no attribute {name!r}")


def load_model(config_path: str, device: str | None = None) -> MaskRCNN:
    """The configured model as a plain torchvision MaskRCNN, exactly as the pipeline runs it."""
    from streamseg.inference.model import load_model as _load

    return _load(config_path, device=device)
