"""A corpus of video files: which inputs, what each one's outputs are called, what is left to do.

`streamseg annotate DIR|GLOB|@list.txt -o OUTDIR` is corpus mode (`is_corpus` says when): each
input file is a task, run as its own `streamseg annotate` (runner.py, or ray_backend.py), its
outputs renamed into OUTDIR when whole and recorded in OUTDIR's manifest (manifest.py).

The naming and the to-do list are pure (`names`, `outputs_of`, `todo`); `expand` and
`is_corpus` look at the file system.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from streamseg.fleet.manifest import Entry, InputKey, is_done
from streamseg.outputs import VIDEO_EXTENSIONS

GLOB_CHARS = frozenset("*?[")


class CorpusError(ValueError):
    """Unusable corpus input or output folder: one line for the user (exit 2)."""


@dataclass(frozen=True)
class Task:
    """One input file of the corpus.

    name: its path relative to the corpus root, '/'-separated (unique in the corpus).
    path: the input file.
    key: its size and mtime when the corpus was listed.
    """

    name: str
    path: Path
    key: InputKey


def is_corpus(inputs: Sequence[str], output: str | None, *, forced: bool = False) -> bool:
    """Whether `streamseg annotate INPUTS -o OUTPUT` is corpus mode: an input is @list.txt; the
    single input is a folder or a glob that names no file; or -o names a folder (exists as one
    or ends with '/'). `forced` (--jobs or --ray given) makes it corpus mode too. Everything
    else is the one-run annotate of before (several files -> one run, {stream} in -o)."""
    if forced or any(i.startswith("@") for i in inputs):
        return True
    if output is not None and (output.endswith(("/", os.sep)) or Path(output).is_dir()):
        return True
    if len(inputs) == 1:
        one = inputs[0]
        return Path(one).is_dir() or (bool(GLOB_CHARS & set(one)) and not Path(one).exists())
    return False


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _list_file(spec: str) -> list[Path]:
    listing = Path(spec[1:])
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CorpusError(f"{listing}: cannot read the list of inputs ({e.strerror})") from None
    base = listing.parent
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            found.append(p if p.is_absolute() else base / p)
    return found


def expand(inputs: Sequence[str]) -> list[Path]:
    """The input files: a folder -> its video files (recursively, by extension); a glob -> its
    matches; @FILE -> the paths listed in FILE, one a line (relative to FILE's folder, '#'
    comments); a file -> itself. Duplicates (same real path) once. CorpusError when an input
    names nothing or none is left."""
    files: list[Path] = []
    for spec in inputs:
        if spec.startswith("@"):
            listed = _list_file(spec)
            missing = [p for p in listed if not p.is_file()]
            if missing:
                raise CorpusError(f"{missing[0]}: no such file (listed in {spec[1:]})")
            files += listed
        elif Path(spec).is_dir():
            files += sorted(p for p in Path(spec).rglob("*") if p.is_file() and _is_video(p))
        elif Path(spec).is_file():
            files.append(Path(spec))
        elif GLOB_CHARS & set(spec):
            files += sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            raise CorpusError(f"{spec}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in files:
        real = f.resolve()
        if real not in seen:
            seen.add(real)
            unique.append(f)
    if not unique:
        raise CorpusError(
            f"{' '.join(inputs)}: no video files ({', '.join(VIDEO_EXTENSIONS)}) to annotate"
        )
    return unique


def names(paths: Sequence[Path]) -> list[str]:
    """Each path's task name: relative to the inputs' common folder, '/'-separated. Pure
    (absolute paths in, no file system access): unique paths give unique names."""
    if not paths:
        return []
    parents = [str(p.parent) for p in paths]
    root = os.path.commonpath(parents) if len(set(parents)) > 1 else parents[0]
    return [PurePosixPath(*p.relative_to(root).parts).as_posix() for p in paths]


def outputs_of(name: str, *, video: bool) -> dict[str, str]:
    """A task's outputs (kind -> path relative to OUTDIR): `a/clip.mp4` -> a/clip.jsonl and,
    with `video`, a/clip.mp4."""
    stem = PurePosixPath(name).with_suffix("")
    out = {"results": f"{stem}.jsonl"}
    if video:
        out["video"] = f"{stem}.mp4"
    return out


def tasks(paths: Sequence[Path]) -> list[Task]:
    """The tasks of the input files (each file's size and mtime read now)."""
    absolute = [p.absolute() for p in paths]
    result = []
    for path, name in zip(absolute, names(absolute), strict=True):
        st = path.stat()
        result.append(Task(name=name, path=path, key=InputKey(st.st_size, st.st_mtime_ns)))
    return result


def todo(
    corpus: Sequence[Task],
    done: Mapping[str, Entry],
    sizes: Mapping[str, int | None],
) -> list[Task]:
    """The tasks still to run, in corpus order: those without a manifest entry for their input
    as it is now, or whose recorded outputs are missing or changed (`sizes`: output path
    relative to OUTDIR -> its size now, None when missing). Pure."""
    return [t for t in corpus if not is_done(done.get(t.name), t.key, sizes)]


def check_outdir(outdir: Path, corpus: Sequence[Task], *, video: bool) -> None:
    """CorpusError when OUTDIR cannot be the output folder: it is a file, or an output would
    overwrite an input."""
    if outdir.exists() and not outdir.is_dir():
        raise CorpusError(f"{outdir}: exists and is not a folder; give -o a folder for a corpus")
    inputs = {t.path.resolve() for t in corpus}
    writer: dict[str, str] = {}
    for t in corpus:
        for rel in outputs_of(t.name, video=video).values():
            if (outdir / rel).resolve() in inputs:
                raise CorpusError(
                    f"{outdir / rel}: the output would overwrite an input; choose another -o"
                )
            if rel in writer:
                raise CorpusError(
                    f"{writer[rel]} and {t.name} would both write {outdir / rel}; rename one, "
                    "or annotate them in two corpora"
                )
            writer[rel] = t.name


def outside(paths: Sequence[Path], outdir: Path) -> list[Path]:
    """`paths` without those inside OUTDIR: a corpus folder that holds its own OUTDIR does not
    take its outputs (annotated videos) for inputs on the next run."""
    out = outdir.resolve()
    return [p for p in paths if not p.resolve().is_relative_to(out)]
