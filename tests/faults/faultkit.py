"""What the fault tests share: checks of the files a run leaves. Starting a run, finding its
stage processes and collecting what it publishes are tests/harness.py's (re-exported here)."""

from __future__ import annotations

import json
from pathlib import Path

import av
from harness import Collector, Run, stage_pids

__all__ = ["Collector", "Run", "lines_so_far", "results_lines", "stage_pids", "video_frames"]


def results_lines(path: Path) -> list[dict]:
    """Every line of a results file whose writer has stopped, each a whole JSON object."""
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"{path} ends in a partial line"
    return [json.loads(line) for line in text.splitlines()]


def lines_so_far(path: Path) -> list[dict]:
    """The whole lines of a results file still being written. A reader can see one write
    half done (Linux copies a write into the page cache page by page, and reads do not wait
    for it), so a partial last line is left for the next look; every line before it must be
    a whole JSON object."""
    if not path.exists():
        return []
    whole = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in whole.splitlines()]


def video_frames(path: Path) -> int:
    """Frames PyAV decodes from a video file (0 if none)."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))
