"""The one way tests start streamseg and wait for something to happen.

- `wait_until(what, timeout, why)`: poll a condition with a deadline (never sleep and hope);
  fails naming what it waited for, with the tail of a log when there is one.
- `Run`: `streamseg COMMAND ...` as a user starts it from a terminal (its own session, stderr
  to a file), its stage processes found by their command lines, Ctrl-C, and an exit that
  leaves nothing behind (`with Run(...) as run:` kills what is left if the test fails).
- `Collector`: a plain pyzmq SUB socket (what any program would use) on a run's --publish.
- `Clock`: a clock the test sets, for the pure cores that take one.
- `stream_line`: a live run's per-stream figures, from the stats line it prints at the end.

Shared fixtures (clips, configs, an RTSP camera) are in conftest.py; marker-driven skips too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import zmq

T = TypeVar("T")

POLL_S = 0.05
"""How often a condition is looked at: short against every timeout used, long against a look."""


def wait_until(
    what: Callable[[], T],
    timeout: float,
    why: str,
    *,
    ended: Callable[[], bool] | None = None,
    log: Callable[[], str] | None = None,
) -> T:
    """`what()`'s first truthy value, looked at every POLL_S until `timeout` seconds have passed.

    ended: true once the thing watched has ended (a process exited): then waiting longer is
    pointless, so the wait fails at once. log: text whose tail goes into the failure message.
    """
    deadline = time.monotonic() + timeout
    while not (got := what()):
        over = time.monotonic() > deadline
        if over or (ended is not None and ended()):
            if not over and (got := what()):  # it happened just before the end
                return got
            tail = "\n".join(log().splitlines()[-30:]) if log is not None else ""
            how = f"timed out after {timeout:g} s" if over else "the run ended"
            raise AssertionError(f"{how} waiting for {why}:\n{tail}")
        time.sleep(POLL_S)
    return got


class Run:
    """`streamseg ARGS...` in its own session (as from a terminal), stderr to a file in `tmp`,
    working directory `tmp` (relative output paths land there)."""

    def __init__(self, tmp: Path, *args: str | Path, cwd: Path | None = None) -> None:
        self.log = tmp / f"run-{time.monotonic_ns()}.log"
        self.cmd = [sys.executable, "-m", "streamseg.cli", *map(str, args)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                self.cmd, stderr=log, cwd=cwd or tmp, start_new_session=True
            )

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: Callable[[], T], timeout: float, why: str) -> T:
        """`what()`'s first truthy value; fails if time is up or the run ends first."""
        return wait_until(
            what, timeout, why, ended=lambda: self.proc.poll() is not None, log=self.stderr
        )

    def stage_pid(self, stage: str, timeout: float = 120) -> int:
        """The pid of this run's (newest) `stage` process, once it exists."""
        found = self.wait_for(lambda: stage_pids(self.proc.pid, stage), timeout, f"a {stage}")
        return found[-1]

    def stages(self) -> list[int]:
        """Every stage process of this run now (the supervisor's children)."""
        return stage_pids(self.proc.pid, "")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C (SIGINT to the whole session, as a terminal sends it); the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """The run's exit code; fails (killing what is left) if it does not end in time."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            msg = f"the run did not end within {timeout} s:\n{self.stderr()}"
            raise AssertionError(msg) from None

    def kill(self) -> None:
        """SIGKILL the run, its session and its stages (they may have sessions of their own)."""
        stages = self.stages()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in stages:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.kill()  # a failed test leaves no orphans


def stage_pids(parent: int, stage: str) -> list[int]:
    """Children of `parent` started as `python -m streamseg.stage STAGE ...`, oldest first
    (every stage when `stage` is "")."""
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


class Collector:
    """A plain pyzmq SUB socket (what any program would use) collecting every message.

    messages: (wall time received, [topic, header, ...]) in arrival order.
    """

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.messages: list[tuple[float, list[bytes]]] = []
        self.arrivals: list[float] = []
        """time.monotonic() of each message's arrival, in step with `messages`."""
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(100):
                parts = self.sock.recv_multipart()
                with self.lock:
                    self.messages.append((time.time(), parts))
                    self.arrivals.append(time.monotonic())

    def headers(self, stream: str | None = None) -> list[dict]:
        """Every header received (of `stream` only, when given)."""
        with self.lock:
            msgs = list(self.messages)
        out = [json.loads(parts[1]) for _, parts in msgs]
        return [h for h in out if stream is None or h["stream"] == stream]

    def since(self, t: float) -> list[dict]:
        """Headers received after time.monotonic() `t`."""
        with self.lock:
            msgs = [
                parts
                for (_, parts), when in zip(self.messages, self.arrivals, strict=True)
                if when > t
            ]
        return [json.loads(parts[1]) for parts in msgs]

    def captured_after(self, stream: str, t: float) -> list[dict]:
        """Results of frames the source captured after wall time `t`."""
        return [h for h in self.headers(stream) if h["wall_time"] > t]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close(0)
        self.ctx.term()


class Clock:
    """A clock that only moves when the test sets `t` (seconds): cores that take a `clock`
    compute exactly."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def stream_line(stderr: str, stream: str) -> dict[str, float]:
    """The last per-stream stats line of `stream` in a live run's output, as numbers."""
    pattern = (
        rf"^{re.escape(stream)}: in (?P<fps_in>[\d.]+) fps, processed (?P<fps_out>[\d.]+) fps, "
        r"dropped (?P<dropped>\d+), reconnects (?P<reconnects>\d+), "
        r"latency p50 (?P<p50>[\d.na]+) ms p99 (?P<p99>[\d.na]+) ms"
    )
    found = list(re.finditer(pattern, stderr, re.M))
    assert found, f"no stats line for {stream} in:\n{stderr}"
    return {k: float(v) for k, v in found[-1].groupdict().items()}
