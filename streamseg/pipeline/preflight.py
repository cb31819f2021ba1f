"""Check every output path and the model's weights before any stage starts, so a bad one costs
a second, not a model load in every worker.

The supervisor side runs this: it imports neither PyAV nor torch (the weights are loaded in a
child process). Each problem is one line that names the path and says how to fix it; an empty
list means all looks usable.
`output_path` (which file each stream writes) lives in `streamseg.outputs`, shared with the
sinks that write the files, so the stages and the check agree.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from streamseg import shipped
from streamseg.config import COCO_URLS, ModelConfig, coco_fix, to_dict
from streamseg.outputs import output_path, video_format_problem

MIN_FREE_BYTES = 100 * 2**20
"""Free space an output filesystem needs at the start (a few minutes of annotated video)."""

KERNEL_FILESYSTEMS = ("/proc", "/sys")


def kernel_path_problem(path: Path) -> str | None:
    """Why `path` (already absolute and resolved) is no place for a file, or None. Pure."""
    for root in KERNEL_FILESYSTEMS:
        if path == Path(root) or Path(root) in path.parents:
            return (
                f"{path}: {root} is a kernel filesystem, not a place for output files; "
                "give a path in a normal folder"
            )
    return None


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder (or file) above `path` that exists: where a write would land."""
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _folder_problems(folder: Path, shown: Path, *, min_free_bytes: int) -> list[str]:
    """Can a file be created in `folder` (the nearest existing one), with room to grow?"""
    if not folder.is_dir():
        return [f"{shown}: {folder} is a file, not a folder; choose another folder"]
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".streamseg-preflight-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return [
            f"{shown}: cannot create files in {folder} ({e.strerror}); choose a writable folder"
        ]
    vfs = os.statvfs(folder)
    free = vfs.f_bavail * vfs.f_frsize
    if free < min_free_bytes:
        mb = 2**20
        return [
            f"{shown}: only {free / mb:.0f} MB free in {folder} (at least "
            f"{min_free_bytes / mb:.0f} MB needed); free some space or write elsewhere"
        ]
    return []


def _path_problems(
    path: Path, *, video: bool, min_free_bytes: int, folders: dict[Path, list[str]]
) -> list[str]:
    """Everything wrong with writing `path`; `folders` caches the checks of each folder."""
    resolved = Path(os.path.abspath(path)).resolve()
    problem = kernel_path_problem(resolved)
    if problem:
        return [problem]
    if resolved.is_dir():
        example = "out.mp4" if video else "out.jsonl"
        return [f"{path}: is a folder; give a file name in it, e.g. {path / example}"]
    problems = []
    if video:
        problem = video_format_problem(path)
        if problem:
            problems.append(problem)
    if resolved.exists():
        if not stat.S_ISREG(resolved.stat().st_mode):
            return problems  # a device such as /dev/null: no folder to fill
        try:  # opening without O_TRUNC changes nothing
            os.close(os.open(resolved, os.O_WRONLY))
        except OSError as e:
            return [*problems, f"{path}: cannot overwrite it ({e.strerror}); choose another name"]
    folder = _existing_ancestor(resolved)
    if folder not in folders:
        folders[folder] = _folder_problems(folder, path, min_free_bytes=min_free_bytes)
    return problems + folders[folder]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def check_outputs(
    video: str | None,
    results: str | None,
    streams: Sequence[str],
    *,
    inputs: Sequence[str] = (),
    min_free_bytes: int = MIN_FREE_BYTES,
) -> list[str]:
    """Problems with the output files of a run, one line each (empty: all fine).

    video, results: the -o and --results templates ({stream} or NAME.STREAM.EXT per stream, as
    `output_path`); streams: the stream ids; inputs: input files, never to be overwritten.
    Creates and removes one empty probe file in each output folder; writes nothing else.
    """
    n = len(streams)
    ids = list(streams) or ["stream"]
    folders: dict[Path, list[str]] = {}
    problems: list[str] = []
    planned: list[tuple[Path, str]] = []
    for template, is_video, flag in ((video, True, "-o"), (results, False, "--results")):
        if not template:
            continue
        for stream in ids:
            path = output_path(template, stream, n)
            planned.append((path, flag))
            problems += _path_problems(
                path, video=is_video, min_free_bytes=min_free_bytes, folders=folders
            )
    for i, (path, flag) in enumerate(planned):
        for other, other_flag in planned[i + 1 :]:
            if _same_file(path, other):
                problems.append(
                    f"{path}: both {flag} and {other_flag} would write this file; "
                    "give them different names"
                )
        for source in inputs:
            if os.path.exists(source) and _same_file(path, Path(source)):
                problems.append(
                    f"{path}: is also an input; writing it would destroy it while it is read; "
                    "give another name"
                )
    # one line per problem, in order, even when several streams share a folder's problem
    return list(dict.fromkeys(problems))


# -- weights --------------------------------------------------------------------------------------


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else
    $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def _reachable(url: str, timeout_s: float) -> str | None:
    """None when `url`'s host accepts a TCP connection within `timeout_s`, else why not."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout_s).close()
    except OSError as e:
        return f"{parts.hostname} cannot be reached ({e.strerror or e})"
    return None


def check_weights(
    model: ModelConfig, *, network_timeout_s: float = 3.0, python: str = sys.executable
) -> list[str]:
    """Problems with the model's weights, one line each naming the config to edit (empty: the
    weights exist, load with weights_only and fit the architecture and label count).

    What needs no torch is judged here at once (a missing file; COCO weights neither cached nor
    downloadable); the rest by `python -m streamseg.inference.weights_check`, which loads the
    file and builds the model on the meta device (a few seconds, mostly importing torch) and
    downloads COCO weights when they are not cached but the network is there. Weights shipped
    in the package and "random" are not checked: the test suite does.
    """
    weights = model.weights
    where = f"[model] of {model.path}" if model.path else "the config's [model]"
    if weights == "random" or Path(weights).parent == shipped.DATA:
        return []
    if weights == "coco":
        url = COCO_URLS.get(model.arch)
        if url is None:
            return [
                f"there are no COCO weights for arch {model.arch}: set `weights` (a checkpoint "
                f"file) in {where}, or pass --weights FILE"
            ]
        cached = torch_hub_dir() / "checkpoints" / url.rsplit("/", 1)[1]
        if not cached.is_file():
            why = _reachable(url, network_timeout_s)
            if why is not None:
                return [coco_fix(model.arch, cached, url, model.path, why)]
    elif not Path(weights).is_file():
        return [
            f"weights file not found: {weights} (set `weights` in {where}, or pass --weights FILE)"
        ]
    proc = subprocess.run(
        [python, "-m", "streamseg.inference.weights_check"],
        input=json.dumps(to_dict(model)),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )  # stderr passes through: a download's progress, or a bug's traceback
    if proc.returncode == 0:
        return []
    line = proc.stdout.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return [line[0] if proc.returncode == 2 else f"checking the weights failed: {line[0]}"]
