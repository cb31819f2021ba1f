"""pipeline.lock: one run per output file, with real processes holding real fcntl locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamseg.pipeline.lock import OutputBusy, lock_outputs, lock_path

HOLD = """
import sys, time
from streamseg.pipeline.lock import lock_outputs
with lock_outputs(sys.argv[1:]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(*paths: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, *map(str, paths)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_lock_path_is_hidden_beside_the_file(tmp_path):
    assert lock_path(tmp_path / "out.jsonl") == tmp_path / ".out.jsonl.lock"


def test_a_second_run_is_refused_naming_the_file_and_the_holder(tmp_path):
    out = tmp_path / "r.jsonl"
    holder = _holder(out)
    try:
        with pytest.raises(OutputBusy) as e, lock_outputs([tmp_path / "other.mp4", out]):
            pass
        assert str(e.value) == (
            f"{out}: another run (pid {holder.pid}) is writing this file; wait for it to end "
            "or choose another name"
        )
        assert not lock_path(tmp_path / "other.mp4").exists()  # what it took, it gave back
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_holds_nothing(tmp_path):
    out = tmp_path / "r.jsonl"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)  # no clean-up: its lock file stays, its lock does not
    holder.wait()
    assert lock_path(out).exists()
    with lock_outputs([out]):
        assert lock_path(out).read_text() == f"{os.getpid()}\n"
    assert not lock_path(out).exists()


def test_locks_are_released_and_removed_at_the_end(tmp_path):
    outs = [tmp_path / "a.mp4", tmp_path / "a.jsonl", None, tmp_path / "a.mp4"]
    with lock_outputs(outs):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".a.jsonl.lock", ".a.mp4.lock"]
    assert list(tmp_path.iterdir()) == []
    holder = _holder(tmp_path / "a.jsonl")  # and another process can take them now
    holder.kill()
    holder.wait()


def test_a_folder_without_a_lock_is_left_to_the_output_checks(tmp_path):
    with lock_outputs([tmp_path / "missing" / "r.jsonl"]):
        pass


def test_what_is_not_a_regular_file_takes_no_lock(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with lock_outputs([os.devnull, fifo]):
        assert not lock_path(os.devnull).exists() and not lock_path(fifo).exists()
