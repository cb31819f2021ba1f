"""The CPU thread budget: how the stages of one run share the machine's cores. Pure.

Every stage runs beside the others, so thread pools sized for the whole machine each
oversubscribe it: torch's intra-op pool spins at its barriers while a decoder or an encoder
holds one of its cores, and one preempted thread stalls the whole model call. Measured on a
2-core machine with other processes busy: the shapes model ran 0.2-0.3 fps with 2 torch
threads against 1.9-4.3 fps with 1 (docs/benchmarks.md).

With `threads = "auto"` (the default) the run decides, from the cores it may use:

  model (CPU)   cores - 1, split between the inference workers (at least 1 each): the model
                is the heaviest work, and one core stays for decoding, pasting, rendering and
                encoding, which run in other processes at the same time.
  model (CUDA)  1: the CPU side of a GPU model only feeds the device.
  encoder       CPU model: what the model leaves, 1 to 4 (libx264's own pool; 0 would mean its
                default, about 1.5 x all cores).
  decoder       CPU model: 1 per source (frames arrive as fast as the model takes them).
  GPU model     decoders and encoders share the cores the feeder leaves, per stream (each
                stream has a decoder and an encoder): decoder 1-2, encoder 2-4 (1 below 4
                cores). Left to the libraries, 8 streams on 16 cores would start about 8 x 17
                decoder and 8 x 24 encoder threads, competing with the one thread that feeds
                the GPU and with postprocess's drawing.

Inference workers (`[inference] workers = "auto"`, the default): on CPU one single-threaded model
per core, up to MAX_CPU_WORKERS. Torch's intra-op threads pay poorly for a small model on
small frames: on 2 cores the shapes model ran 62 ms a frame with 1 thread and 40 ms with 2
(1.55 x for twice the cores), while two processes of 1 thread each do two frames at once; and
one thread per process never stalls at a barrier when another stage takes its core. With a
GPU, one worker per listed device (one when none is listed).

A number instead of "auto" fixes the model's threads per worker (the encoder gets the cores it
leaves); 0 leaves every pool at its library's default, as before this budget existed.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass

AUTO = "auto"
MAX_ENCODER_THREADS = 4
MAX_CPU_WORKERS = 4


@dataclass(frozen=True)
class ThreadPlan:
    """Threads per process: 0 means the library's own default."""

    model: int  # torch.set_num_threads in each inference worker
    encoder: int  # libx264 threads in postprocess
    decoder: int  # FFmpeg decode threads in each source
    cores: int  # what the plan was made for


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan(
    requested: int | str, *, cores: int, cuda: bool, workers: int = 1, streams: int = 1
) -> ThreadPlan:
    """The thread budget for a run on `cores` cores with `workers` inference processes and
    `streams` sources (with a GPU model each stream's decoder and encoder share what is left).

    requested: the config's `threads` ("auto", or a model thread count per worker, 0 for
    every library's default).
    """
    if cores < 1 or workers < 1 or streams < 0:
        raise ValueError(
            f"need cores >= 1, workers >= 1 and streams >= 0, got {cores}, {workers}, {streams}"
        )
    if requested != AUTO and (not isinstance(requested, int) or requested < 0):
        raise ValueError(f'threads must be "auto" or an integer >= 0, got {requested!r}')
    if requested == 0:
        return ThreadPlan(model=0, encoder=0, decoder=0, cores=cores)
    if cuda:
        model = 1 if requested == AUTO else int(requested)
        share = max(1, (cores - model * workers) // max(1, streams))  # cores per stream
        decoder = min(2, max(1, share // 3))  # 1080p H.264: one thread decodes well over 30 fps
        least = 2 if cores >= 4 else 1  # one x264 thread is near 30 fps at 1080p (veryfast)
        encoder = min(MAX_ENCODER_THREADS, max(least, share - decoder))
        return ThreadPlan(model=model, encoder=encoder, decoder=decoder, cores=cores)
    model = max(1, (cores - 1) // workers) if requested == AUTO else int(requested)
    spare = cores - min(cores, model * workers)
    encoder = min(MAX_ENCODER_THREADS, max(1, spare))
    return ThreadPlan(model=model, encoder=encoder, decoder=1, cores=cores)


def workers(requested: int | str, *, cores: int, cuda: bool, devices: int = 0) -> int:
    """Inference processes for a run on `cores` cores: `requested` ("auto" or a number >= 1),
    `devices` the length of the pipeline's device list."""
    if requested != AUTO:
        if type(requested) is not int or requested < 1:
            raise ValueError(f'workers must be "auto" or a whole number >= 1, got {requested!r}')
        return requested
    if cuda:
        return max(1, devices)
    return max(1, min(cores, MAX_CPU_WORKERS))


_GPU_HINTS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")
"""Paths one of which a machine whose NVIDIA driver torch could use has (/dev/dxg: WSL2)."""


@functools.cache
def cuda_devices() -> int:
    """CUDA devices this process may use, as torch counts them (0 without CUDA).

    torch.cuda.device_count() asks NVML first, which neither creates a CUDA context nor
    poisons a later fork, and honours CUDA_VISIBLE_DEVICES; torch is imported only where a
    driver is installed at all. Whatever the device nodes are called (/dev/nvidia0 need not
    exist: containers, MIG, renumbered nodes), this is the answer the model's own
    `resolve_device("auto")` gets.
    """
    if not any(os.path.exists(p) for p in _GPU_HINTS) and not glob.glob("/dev/nvidia[0-9]*"):
        return 0  # no NVIDIA driver here: skip torch's import (3 s on a busy 2-core machine)
    import torch  # here: the supervisor and the CLI import this module without torch

    return int(torch.cuda.device_count())  # not is_available(): that calls cuInit (fork)


def is_cuda(device: str) -> bool:
    """Whether a config's device means a GPU here: "cuda...", or "auto" where torch sees a CUDA
    device (cuda_devices)."""
    if device == "auto":
        return cuda_devices() > 0
    return device.startswith("cuda")


def model_threads(requested: int | str, *, device: str, workers: int = 1) -> int:
    """torch threads for one inference worker on this machine (0: leave torch's default).

    For a stage started without a supervisor's budget (e.g. `streamseg stage inference`):
    "auto" resolves against the cores this process may use.
    """
    return plan(requested, cores=usable_cores(), cuda=is_cuda(device), workers=workers).model
