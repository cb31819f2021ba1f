"""What the fault tests share: a streamseg run as a user starts it, its stage processes found
by their command lines, a plain ZeroMQ subscriber, and checks of the files a run leaves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import zmq


class Run:
    """`streamseg COMMAND ...` in its own session (as from a terminal), stderr to a file."""

    def __init__(self, tmp: Path, *args: str | Path) -> None:
        self.log = tmp / f"run-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "streamseg.cli", *map(str, args)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, cwd=tmp, start_new_session=True)

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_for(self, what, timeout: float, why: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                tail = "\n".join(self.stderr().splitlines()[-30:])
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {why}:\n{tail}")
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended while waiting for {why}:\n{self.stderr()}")
            time.sleep(0.05)

    def stage_pid(self, stage: str, timeout: float = 120) -> int:
        """The pid of this run's (newest) `stage` process, once it exists."""
        found: list[int] = []

        def look() -> bool:
            found[:] = stage_pids(self.proc.pid, stage)
            return bool(found)

        self.wait_for(look, timeout, f"a {stage} process")
        return found[-1]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """The run's exit code; fails (killing what is left) if it does not end in time."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc.poll() is None:
            stages = stage_pids(self.proc.pid, "")
            os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in stages:
                os.kill(pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"the run did not end within {timeout} s:\n{self.stderr()}")
        return self.proc.returncode


def stage_pids(parent: int, stage: str) -> list[int]:
    """Children of `parent` started as `python -m streamseg.stage STAGE ...`, oldest first."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"streamseg.stage" in cmd:
            if not stage or cmd[cmd.index(b"streamseg.stage") + 1] == stage.encode():
                pids.append(int(entry.name))
    return sorted(pids)


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


class Collector:
    """A plain pyzmq SUB socket (what any program would use) collecting published headers."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.headers: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(100):
                parts = self.sock.recv_multipart()
                with self.lock:
                    self.headers.append((time.monotonic(), json.loads(parts[1])))

    def since(self, t: float) -> list[dict]:
        """Results received after monotonic time `t`."""
        with self.lock:
            return [h for when, h in self.headers if when > t]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close(0)
        self.ctx.term()
