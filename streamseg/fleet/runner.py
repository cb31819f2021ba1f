"""Runs corpus tasks: each input file as its own `streamseg annotate`, outputs whole or absent.

`annotate_one` is one attempt at one file, the same on this machine (`run_local`, --jobs N)
and on a Ray worker (ray_backend.py): the run writes under a temporary name in OUTDIR's
`.partial/` folder; only a run that exited 0 (every decoded frame has results) has its outputs
fsynced and renamed into place, video first, results last. The manifest line is appended after
that, by the one process that owns the manifest, so a line always names outputs that are whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from streamseg.fleet import manifest
from streamseg.fleet.corpus import Task, outputs_of
from streamseg.fleet.manifest import Entry
from streamseg.stage import PARENT_ENV

PARTIAL = ".partial"
"""OUTDIR's folder for outputs being written (emptied when a corpus run starts)."""

BAD_INPUT = 2
"""`streamseg annotate`'s exit code for unusable input: retrying cannot help."""


class TaskFailed(Exception):
    """One attempt at one file failed: `code` is the run's exit code, the message its last
    line on stderr."""

    def __init__(self, name: str, code: int, why: str) -> None:
        super().__init__(name, code, why)  # the args rebuild it where Ray hands it back
        self.name, self.code, self.why = name, code, why

    def __str__(self) -> str:
        return f"{self.name}: exit {self.code}: {self.why}"

    @property
    def retryable(self) -> bool:
        return self.code != BAD_INPUT


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> tuple[int, str]:
    """(lines, sha256 hex) of a results file."""
    h = hashlib.sha256()
    lines = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            lines += chunk.count(b"\n")
    return lines, h.hexdigest()


def annotate_one(
    name: str,
    path: str,
    key: tuple[int, int],
    outdir: str,
    *,
    video: bool,
    argv: Sequence[str],
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> Entry:
    """One attempt at one input: run `streamseg annotate` on it into temporary files, and
    rename them into OUTDIR when the run exited 0. The manifest entry to record is returned;
    TaskFailed when the run failed (its temporary files removed). Plain arguments only, so a
    Ray worker runs exactly this."""
    out = Path(outdir)
    staging = out / PARTIAL
    staging.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    finals = {kind: out / rel for kind, rel in outputs_of(name, video=video).items()}
    temps = {kind: staging / f"{token}{Path(rel).suffix}" for kind, rel in finals.items()}
    cmd = [sys.executable, "-m", "streamseg.cli", "annotate", "-q", path]
    cmd += ["--results", str(temps["results"])]
    if video:
        cmd += ["-o", str(temps["video"])]
    cmd += list(argv)
    try:
        # the run stops (SIGTERM) when this process dies: a killed runner or a lost Ray worker
        # leaves no run writing on
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        if on_start is not None:
            on_start(proc)
        _, err = proc.communicate()
        if proc.returncode != 0:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            raise TaskFailed(name, proc.returncode, lines[-1] if lines else "no message")
        for kind, tmp in temps.items():
            if not tmp.is_file():
                raise TaskFailed(name, 1, f"the run exited 0 but wrote no {kind} file")
            _fsync_path(tmp)
        frames, digest = _digest(temps["results"])
        sizes = {}
        for kind in ("video", "results"):  # results last: they are what the manifest vouches
            if kind in temps:
                finals[kind].parent.mkdir(parents=True, exist_ok=True)
                sizes[str(finals[kind].relative_to(out).as_posix())] = temps[kind].stat().st_size
                os.replace(temps[kind], finals[kind])
                _fsync_path(finals[kind].parent)
        return Entry(
            name=name,
            key=manifest.InputKey(*key),
            frames=frames,
            results_sha256=digest,
            outputs=sizes,
        )
    finally:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def clear_partial(outdir: Path) -> int:
    """Remove what runs that were killed left in OUTDIR/.partial (call while holding the
    manifest's lock: no other corpus run writes there then); how many files."""
    staging = outdir / PARTIAL
    removed = 0
    if staging.is_dir():
        for p in staging.iterdir():
            if p.is_file():
                p.unlink()
                removed += 1
    return removed


@dataclass
class Outcome:
    """What a corpus run did: entries recorded now, and the files that failed (name -> why)."""

    done: list[Entry] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    attempts: int = 0


class Recorder:
    """Appends each finished task's entry to the manifest (one writer, from any thread)."""

    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        self.path, self.say = path, say
        self.outcome = Outcome()
        self._lock = threading.Lock()

    def done(self, entry: Entry) -> None:
        with self._lock:
            manifest.append(self.path, entry)
            self.outcome.done.append(entry)
            self.say(f"done: {entry.name} ({entry.frames} frames)")

    def failed(self, name: str, why: str) -> None:
        with self._lock:
            self.outcome.failed[name] = why
            self.say(f"failed: {why}")

    def attempt(self) -> None:
        with self._lock:
            self.outcome.attempts += 1


def run_local(
    todo: Sequence[Task],
    outdir: Path,
    recorder: Recorder,
    *,
    video: bool,
    argv: Sequence[str],
    jobs: int,
    retries: int,
) -> Outcome:
    """Run `todo` on this machine, `jobs` at a time, each file tried up to 1 + `retries` times
    (not retried: unusable input). SIGTERM or Ctrl-C stops the runs under way (their outputs
    stay absent) and raises KeyboardInterrupt."""
    stop = threading.Event()
    live: set[subprocess.Popen] = set()
    live_lock = threading.Lock()

    def started(proc: subprocess.Popen) -> None:
        with live_lock:
            live.add(proc)
            if stop.is_set():
                proc.terminate()

    def work(task: Task) -> None:
        for attempt in range(1 + retries):
            if stop.is_set():
                return
            recorder.attempt()
            try:
                entry = annotate_one(
                    task.name,
                    str(task.path),
                    (task.key.size, task.key.mtime_ns),
                    str(outdir),
                    video=video,
                    argv=argv,
                    on_start=started,
                )
            except TaskFailed as e:
                if stop.is_set():
                    return
                if not e.retryable or attempt == retries:
                    recorder.failed(task.name, str(e))
                    return
                recorder.say(f"retry: {e}")
                continue
            recorder.done(entry)
            return

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        with live_lock:
            for proc in live:
                if proc.poll() is None:
                    proc.terminate()  # the run stops its stages; its outputs stay temporary

    old = signal.signal(signal.SIGTERM, on_signal)
    old_int = signal.signal(signal.SIGINT, on_signal)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for f in [pool.submit(work, t) for t in todo]:
                f.result()
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    if stop.is_set():
        raise KeyboardInterrupt
    return recorder.outcome
