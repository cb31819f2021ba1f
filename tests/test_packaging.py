"""Installed = checked out: the wheel carries its configs, pipelines and weights, and the
installed package runs from any folder, finding its shipped files by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from streamseg import shipped

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # build, install: 300 s each

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (no deps) into a fresh target folder."""
    d = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(d / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (d / "dist").glob("streamseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("config", "pipeline"):
        for name in shipped.names(kind):
            assert f"streamseg/data/{kind}s/{name}.toml" in names
    assert "streamseg/data/shapes.pt" in names
    target = d / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m ...` with the installed package first on the path (stage processes inherit it),
    from a folder that has nothing of the checkout."""
    env = dict(os.environ, PYTHONPATH=str(target))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_installed_wheel_annotates_from_an_unrelated_folder(installed, clip, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run_installed(installed, elsewhere, "-c", "import streamseg; print(streamseg.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr

    version = run_installed(installed, elsewhere, "-m", "streamseg.cli", "--version")
    assert version.stdout.strip() == f"streamseg {_project_version()}"

    video, _ = clip
    out = run_installed(
        installed, elsewhere, "-m", "streamseg.cli", "annotate", "-q", str(video),
        "--results", "r.jsonl", "-o", "out.mp4",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = (elsewhere / "r.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(10))
    assert (elsewhere / "out.mp4").stat().st_size > 1000

    code = "import streamseg; print(type(streamseg.load_model('shapes', device='cpu')).__name__)"
    model = run_installed(installed, elsewhere, "-c", code)
    assert model.stdout.strip() == "MaskRCNN", model.stderr


def test_help_shows_defaults_that_exist():
    for kind, default in (("config", "shapes"), ("pipeline", "annotate"), ("pipeline", "watch")):
        assert shipped.find(kind, default).is_file()


def test_top_level_examples_are_the_shipped_files():
    """configs/ and pipelines/ in a checkout are the editable examples: the same bytes."""
    for kind in ("config", "pipeline"):
        examples = sorted(p.stem for p in (ROOT / f"{kind}s").glob("*.toml"))
        assert examples == shipped.names(kind)
        for name in examples:
            example = (ROOT / f"{kind}s" / f"{name}.toml").read_bytes()
            assert example == shipped.find(kind, name).read_bytes()


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(shipped.NotFound, match="shapes"):
        shipped.find("config", "no-such-model")


def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
