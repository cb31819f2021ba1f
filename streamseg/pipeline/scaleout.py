"""The processes that stand for the inference stage when a pipeline has several workers. Pure.

One worker: the inference process itself ("inference"). N workers: a dispatcher, named
"inference" (it binds the frames endpoint and reports the stage's accounting), and N workers
"inference[0]".."inference[N-1]", each on its own device from the pipeline's device list, or
sharing the CPU's cores between them.
"""

from __future__ import annotations

from typing import Any

from streamseg.pipeline.spec import Pipeline


def worker_names(pipeline: Pipeline) -> list[str]:
    """The worker processes' names; [] for a single inference process."""
    return [f"inference[{i}]" for i in range(pipeline.workers)] if pipeline.workers > 1 else []


def inference_processes(
    kwargs: dict[str, Any], pipeline: Pipeline, *, work_endpoint: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """(stage, name, kwargs) of each process to start for the inference stage, given the single
    inference process's `kwargs` (model, endpoints, streams, live, depth, forward_images)."""
    names = worker_names(pipeline)
    if not names:
        return [("inference", "inference", {**kwargs, "weights": pipeline.weights})]
    model = kwargs["model"]
    common = {k: kwargs[k] for k in ("stats_endpoint", "verbose", "link_keys") if k in kwargs}
    out = [
        (
            "dispatcher",
            "inference",
            {
                **common,
                "frames_endpoint": kwargs["frames_endpoint"],
                "work_endpoint": work_endpoint,
                "detections_endpoint": kwargs["detections_endpoint"],
                "streams": kwargs["streams"],
                "live": kwargs["live"],
                "depth": kwargs["depth"],
                "max_batch": int(model["max_batch"]),
                "max_wait_ms": float(model["max_wait_ms"]),
                "weights": pipeline.weights,
                "lost_s": pipeline.hang_s,
            },
        )
    ]
    devices = pipeline.devices
    for i, name in enumerate(names):
        device = _device(devices, i, model)
        on_cpu = sum(1 for j in range(len(names)) if not _gpu(_device(devices, j, model)))
        out.append(
            (
                "worker",
                name,
                {
                    **common,
                    "model": {**model, "device": device},
                    "name": name,
                    "work_endpoint": work_endpoint,
                    "detections_endpoint": kwargs["detections_endpoint"],
                    "forward_images": kwargs["forward_images"],
                    "share_cpu": max(1, on_cpu),
                },
            )
        )
    return out


def _device(devices: tuple[str, ...], i: int, model: dict[str, Any]) -> str:
    return devices[i % len(devices)] if devices else str(model["device"])


def _gpu(device: str) -> bool:
    """A device that is surely not the CPU ("auto" counts as CPU: it may be)."""
    return device.startswith("cuda")
