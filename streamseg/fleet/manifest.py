"""The corpus manifest: one JSON line per finished input file, appended, never rewritten.

A line is written only after the file's outputs were renamed into place whole, so a line names
outputs that exist complete. A re-run reads the manifest and redoes only the inputs without a
line, or whose input changed since (size or mtime), or whose outputs are gone or of another size.

Pure core (`encode`, `decode`, `parse`, `latest`, `is_done`) and two thin edges (`read`,
`append`). A crash can leave a torn last line: `parse` skips a line that is not a whole entry
(counted), and `append` starts a new line first where the file does not end with one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "manifest.jsonl"
"""The manifest's name inside OUTDIR."""

VERSION = 1


@dataclass(frozen=True)
class InputKey:
    """What identifies one version of an input file: its size and mtime (ns)."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Entry:
    """One finished input file.

    name: the task's name (the input's path relative to the corpus root, '/'-separated).
    key: the input as it was when annotated.
    frames: results records written (one per decoded frame: the run exited 0).
    results_sha256: hex digest of the whole results file.
    outputs: output path (relative to OUTDIR) -> its size in bytes.
    """

    name: str
    key: InputKey
    frames: int
    results_sha256: str
    outputs: Mapping[str, int]


def encode(entry: Entry) -> str:
    """One manifest line (with its newline)."""
    d = asdict(entry)
    d["outputs"] = dict(entry.outputs)
    return json.dumps({"v": VERSION, **d}, sort_keys=True, separators=(",", ":")) + "\n"


def decode(line: str) -> Entry:
    """The entry of one line; ValueError when it is not a whole, valid entry."""
    try:
        d = json.loads(line)
        if not isinstance(d, dict) or d.get("v") != VERSION:
            raise ValueError("not a version-1 manifest entry")
        key = d["key"]
        outputs = d["outputs"]
        entry = Entry(
            name=d["name"],
            key=InputKey(size=key["size"], mtime_ns=key["mtime_ns"]),
            frames=d["frames"],
            results_sha256=d["results_sha256"],
            outputs=dict(outputs),
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a manifest entry: {e}") from None
    ints = [entry.key.size, entry.key.mtime_ns, entry.frames, *entry.outputs.values()]
    if (
        not isinstance(entry.name, str)
        or not entry.name
        or not isinstance(entry.results_sha256, str)
    ):
        raise ValueError("not a manifest entry: name or digest missing")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise ValueError("not a manifest entry: sizes and counts are whole numbers >= 0")
    if not all(isinstance(k, str) for k in entry.outputs):
        raise ValueError("not a manifest entry: output names are strings")
    return entry


def parse(text: str) -> tuple[list[Entry], int]:
    """The entries of a manifest's text, in order, and how many lines were skipped (torn or
    foreign lines: each one only costs its file a redo)."""
    entries: list[Entry] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(decode(line))
        except ValueError:
            skipped += 1
    return entries, skipped


def latest(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Name -> its last entry (a redone file's newer line wins)."""
    return {e.name: e for e in entries}


def is_done(entry: Entry | None, key: InputKey, sizes: Mapping[str, int | None]) -> bool:
    """Whether an input needs no redo: it has an entry for this very input version, and every
    output the entry names exists with the size it had (`sizes`: output -> size now, None when
    missing)."""
    if entry is None or entry.key != key:
        return False
    return all(sizes.get(out) == size for out, size in entry.outputs.items())


# -- edges ---------------------------------------------------------------------------------


def read(path: Path) -> tuple[list[Entry], int]:
    """The entries in the manifest at `path` (none when it does not exist yet)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    return parse(text)


def append(path: Path, entry: Entry) -> None:
    """Add `entry` as one line: a single O_APPEND write, then fsync, so a line is there whole
    or (after a crash mid-write) torn and skipped by `parse`; never half of two lines."""
    line = encode(entry).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line stays alone on its line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
