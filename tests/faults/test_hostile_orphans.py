"""A supervisor killed with SIGKILL (no handler runs) while its stages are still starting up:
none of them may run on as an orphan. Their death signal is set as their first instruction,
before torch's imports, and a stage whose supervisor was already gone exits by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from faultkit import Run, stage_pids

from streamseg.tools import synth

pytestmark = pytest.mark.slow


def marked(marker: bytes) -> list[int]:
    """Live processes (not zombies) whose command line names streamseg and holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and b"streamseg" in cmd and marker in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("when", ["", "worker"])
def test_stages_die_with_a_supervisor_killed_during_their_start_up(when, random_config, tmp_path):
    """`when`: killed once the first stage exists (""), or once a forked worker does."""
    clip = tmp_path / "long.mp4"
    synth.write_clip(clip, tmp_path / "long.json", seed=8, frames=200, size=(160, 120), fps=25)
    # The run's directory (its ipc endpoints, named in every stage's arguments) under a short
    # private TMPDIR: the marker that finds this run's stages once their parent is gone.
    rundirs = Path(tempfile.mkdtemp(prefix="orph"))
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(rundirs)
    try:
        run = Run(tmp_path, "annotate", "-q", clip, "--config", random_config, "-o", "out.mp4",
                  "--results", "r.jsonl", "--workers", "2")  # fmt: skip
    finally:
        if old is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old
    marker = str(rundirs).encode()
    # the first stage (postprocess) exists: it is importing torch now, for seconds
    run.wait_for(lambda: stage_pids(run.proc.pid, when), 120, f"a first {when or 'stage'}")
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait()
    deadline = time.monotonic() + 8.0
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # (by pid: the ones this test's run left behind)
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"stage processes outlived their supervisor: {left}"


def test_a_stage_whose_supervisor_is_already_gone_exits(tmp_path):
    """The gap the death signal cannot cover: the supervisor died before it was set."""
    code = (
        "import sys\nfrom streamseg.stage import die_with_parent\n"
        "die_with_parent(sys.argv[1])\nprint('ran on')\n"
    )
    # a pid that is not this child's parent: as if the supervisor had died and init adopted it
    out = subprocess.run(
        [sys.executable, "-c", code, "1"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "ran on" not in out.stdout
    assert "supervisor (pid 1) is gone" in out.stderr
    ok = subprocess.run(
        [sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and ok.stdout == "ran on\n"
