"""One run per output file: an advisory lock beside each file a run writes.

Two runs writing the same results file interleave their lines (duplicated frames, lines cut in
half). Before any stage starts, a run takes an exclusive `fcntl.flock` on `.NAME.lock` beside
each of its outputs (results, video, report) and writes its pid there; a second run asking for
one of them stops at once with one line naming the file and the pid holding it. The kernel
drops a lock when its holder dies (kill -9 included): a lock file left behind by a dead run
holds nothing. A run removes its lock files when it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path


class OutputBusy(Exception):
    """Another run writes this output now: one line for the user (exit 2)."""


def lock_path(output: str | os.PathLike[str]) -> Path:
    """Where the lock of `output` lives: `.NAME.lock` in the same folder."""
    p = Path(output)
    return p.with_name(f".{p.name}.lock")


def _take(output: Path) -> int:
    """The fd of `output`'s lock, held; OutputBusy when another process holds it."""
    path = lock_path(output)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(
                f"{output}: another run (pid {holder}) is writing this file; wait for it to "
                "end or choose another name"
            ) from None
        except OSError:
            os.close(fd)
            raise
        # The holder before us may have removed the file between our open and our lock: then
        # we hold a lock nobody else can see. Take the one at the path instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _release(output: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock_path(output))  # while still held: nobody can take the old one meanwhile
    os.close(fd)


@contextlib.contextmanager
def lock_outputs(outputs: Sequence[str | os.PathLike[str] | None]) -> Iterator[None]:
    """Hold the locks of `outputs` (None entries skipped) for the block; OutputBusy (taking
    none) when another run holds one. A folder that cannot take a lock file is left to the
    output checks: its file cannot be written either."""
    held: list[tuple[Path, int]] = []
    seen: set[Path] = set()
    try:
        for output in outputs:
            if output is None:
                continue
            path = Path(output).absolute()
            if path in seen or (path.exists() and not path.is_file()):
                continue  # (not a file a run owns: /dev/null, a FIFO someone reads)
            seen.add(path)
            try:
                held.append((path, _take(path)))
            except OutputBusy:
                raise
            except OSError:  # no such folder, read-only: preflight says so for the file itself
                continue
        yield
    finally:
        for path, fd in reversed(held):
            _release(path, fd)


__all__ = ["OutputBusy", "lock_outputs", "lock_path"]
