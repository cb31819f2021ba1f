"""Files shipped inside the package (streamseg/data): model configs, pipeline files, weights.

The top-level `configs/` and `pipelines/` folders of a checkout are links to these same files, so
an installed package and a checkout run the same defaults. Users name a shipped file by its name
(`--config shapes`, `--pipeline watch`) or give a path to their own.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
WEIGHTS_PREFIX = "streamseg:"
"""A weights value "streamseg:NAME" in a config means the file NAME shipped in streamseg/data."""

_FOLDERS = {"config": DATA / "configs", "pipeline": DATA / "pipelines"}


class NotFound(FileNotFoundError):
    """Neither a file at the given path nor a shipped file of that name; one line for the user."""


def names(kind: str) -> list[str]:
    """The shipped files of `kind` ("config" or "pipeline"), by name (file stem), sorted."""
    return sorted(p.stem for p in _FOLDERS[kind].glob("*.toml"))


def find(kind: str, name_or_path: str | Path) -> Path:
    """The file `name_or_path` names: an existing path as given, else a shipped file of that
    name (with or without .toml). Raises NotFound listing the shipped names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _FOLDERS[kind] / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise NotFound(
        f"{kind} file not found: {name_or_path} (give a path, or one of the shipped "
        f"{kind}s: {', '.join(names(kind))})"
    )


def weights_path(value: str) -> Path:
    """The shipped file of a "streamseg:NAME" weights value."""
    return DATA / value[len(WEIGHTS_PREFIX) :]


def summary(kind: str, name: str) -> str:
    """The first comment line of a shipped file: what it is, for `streamseg configs`."""
    for line in find(kind, name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
