"""The thin shell every stage process shares: process hygiene, logging and stats reporting."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from streamseg.accounting import Counters
from streamseg.wire import sockets
from streamseg.wire.messages import Stats
from streamseg.wire.security import Security

_PR_SET_PDEATHSIG = 1
_STOPS = (signal.SIGINT, signal.SIGTERM)  # what asks a stage to stop (see setup_process)


_asked_at: float | None = None


def count_age_from(wall_time: float) -> None:
    """For a stage forked from a preloaded parent (streamseg.pipeline.forkserver): its age, and
    so its start-up, counts from when it was asked for (time.time()), which includes the
    parent's imports it waited for, not from the fork."""
    global _asked_at
    _asked_at = wall_time


def process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc, so interpreter start-up and
    imports count), or since count_age_from's time; 0.0 where that cannot be read."""
    if _asked_at is not None:
        return max(0.0, time.time() - _asked_at)
    try:
        with open("/proc/self/stat", "rb") as f:
            # field 22 (starttime, clock ticks after boot); the command name (field 2) may hold
            # spaces, so count from the last ")"
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _stop_again(unraisable: Any) -> None:
    """A stop that landed where it could not be raised: ask again.

    pyzmq checks for signals while it frees a received message (Frame.__dealloc__), where an
    exception cannot propagate: the KeyboardInterrupt of a SIGTERM or Ctrl-C arriving then was
    printed as "Exception ignored" with a traceback and lost, and the stage ran on until the
    supervisor's next signal. Raising the signal again delivers it in the stage's own code."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        # Not from here (raising a signal here would land in this hook): SIGALRM, shortly.
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        return
    sys.__unraisablehook__(unraisable)


def _alarm(signum: int, frame: Any) -> None:
    signal.raise_signal(signal.SIGTERM)  # held, as any SIGTERM, inside uninterrupted()


def setup_process(stage: str, *, verbose: bool = False) -> None:
    """Make this stage die with its parent (no orphans) and stop cleanly on SIGTERM."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGALRM, _alarm)
    sys.unraisablehook = _stop_again
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"streamseg {stage}: %(message)s",
        stream=sys.stderr,
        force=True,  # `streamseg stage NAME -v` runs here after the CLI configured logging
    )


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then stop (KeyboardInterrupt) as they ask.

    For work that must happen whole or not at all: one frame's outputs (its results line, its
    video frame, its published message), so that a stopped run's files agree with each other.
    Only the main thread handles signals; elsewhere this holds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = _held
    held.clear()
    old = {s: signal.signal(s, lambda signum, _: held.append(signum)) for s in _STOPS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if held:
        held.clear()
        raise KeyboardInterrupt


_held: list[int] = []
"""The stop signals `uninterrupted` holds now (main thread)."""

_stopping: list[bool] = []
"""Not empty once the stage's loop was interrupted (run_stage_loop): it is cleaning up."""


def stop_held() -> bool:
    """The stage was asked to stop (Ctrl-C, SIGTERM), during an `uninterrupted` block still
    running or before its clean-up: work that waits on someone else (a reader that stopped
    reading) gives up instead of holding the stage."""
    return bool(_held) or bool(_stopping)


class StatsReporter:
    """Sends the stage's counters to the runner every `every_s` seconds and once at the end.

    `name` tells the supervisor which process reported ("source[cam1]"; default: the stage);
    `auth` is the token it signs its reports with (see streamseg.stage.trust).
    """

    def __init__(
        self,
        endpoint: str | None,
        stage: str,
        counters: Counters,
        *,
        name: str | None = None,
        auth: str = "",
        security: Security | None = None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.security = security
        self.sock = sockets.stats_push(endpoint, security=security) if endpoint else None
        self.stage = stage
        self.name = name or stage
        self.auth = auth
        self.counters = counters
        self.every_s = every_s
        self.clock = clock
        self.last = clock()
        self.busy_s = 0.0
        # where the rest of the time went (streamseg bench's breakdown): waiting for input,
        # and blocked handing output to a slow next stage
        self.wait_in_s = 0.0
        self.wait_out_s = 0.0
        self.extra: dict[str, Any] = {}
        self.is_ready = False
        """Bound and loaded (`ready`): every report from then on says so."""
        self.ended = False
        """A source sent its end-of-stream: every report from then on says so."""
        self._beat: threading.Thread | None = None
        self._stop_beat = threading.Event()
        self.working = 0
        """Work in progress now (`with reporter.busy()`, BusyTimer): the heartbeat says so, and
        a supervisor waits for a file run's last frames as long as a stage is busy on them."""

    def start_heartbeat(self, every_s: float = 0.25) -> None:
        """Report "alive" every `every_s` from a thread of its own (its own socket: ZeroMQ
        sockets are not thread-safe), whatever the main loop is doing, so that the supervisor
        tells a busy stage (a long model call) from a frozen or dead one."""
        if self.endpoint is None or self._beat is not None:
            return
        endpoint, stage, name, stop = self.endpoint, self.stage, self.name, self._stop_beat
        auth = self.auth

        def beat() -> None:
            sock = sockets.stats_push(endpoint, security=self.security)
            try:
                while not stop.wait(every_s):
                    alive = Stats(
                        stage,
                        {},
                        name=name,
                        ready=self.is_ready,
                        heartbeat=True,
                        busy=self.working > 0,
                    )
                    sockets.send(sock, alive, block=False, auth=auth)
            finally:
                sock.close(0)

        self._beat = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._beat.start()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark work in progress (a model call on a batch) for the heartbeat to tell."""
        self.working += 1
        try:
            yield
        finally:
            self.working -= 1

    def stop_heartbeat(self) -> None:
        if self._beat is not None:
            self._stop_beat.set()
            self._beat.join(timeout=1.0)
            self._beat = None

    def tick(self) -> None:
        """Report if the interval has passed; never blocks."""
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self._send(final=False)

    def final(self) -> None:
        """The last report, then the socket closed with up to 1 s to deliver it, so that an
        interrupted stage (whose other sockets drop what they hold) still reports its counts."""
        self.stop_heartbeat()
        self._send(final=True)
        if self.sock is not None:
            self.sock.close(linger=1000)
            self.sock = None

    def report_now(self) -> None:
        """Report at once (e.g. a state change the supervisor acts on)."""
        self.last = self.clock()
        self._send(final=False)

    def ready(self) -> None:
        """Tell the runner this stage is bound and loaded: sources may start sending.
        Records the start-up time: process start (imports included) to now."""
        self.is_ready = True
        self.extra["startup_s"] = round(process_age_s(), 3)
        self._send(final=False)

    def _send(self, *, final: bool) -> None:
        if self.sock is None:
            return
        extra = {
            **self.extra,
            "wait_in_s": round(self.wait_in_s, 4),
            "wait_out_s": round(self.wait_out_s, 4),
        }
        msg = Stats(
            self.stage,
            self.counters.to_json(),
            self.busy_s,
            final,
            extra,
            name=self.name,
            ready=self.is_ready,
            ended=self.ended,
        )
        sockets.send(self.sock, msg, block=final, auth=self.auth)


def run_stage_loop(
    loop: Callable[[], int],
    reporter: StatsReporter,
    *,
    cleanup: Callable[[], None] | None = None,
    abort: bool = False,
) -> int:
    """Run a stage's main loop and end it the same way in every stage.

    Returns the loop's exit code, or 130 when it was interrupted (Ctrl-C, or SIGTERM, which
    setup_process turns into KeyboardInterrupt). Then, always: `cleanup` (close files, stop
    threads), a final stats report, and every socket closed, delivering what it still holds,
    or dropping it at once when interrupted or `abort` (the loop knows all was delivered).
    """
    interrupted = False
    try:
        return loop()
    except KeyboardInterrupt:
        interrupted = True
        _stopping.append(True)
        return 130
    finally:
        try:
            if cleanup is not None:
                cleanup()
        finally:
            reporter.final()
            sockets.close_all(abort=interrupted or abort)


class BusyTimer:
    """Adds the time spent inside `with` blocks to a StatsReporter's busy_s (or, with
    `what="wait_in"` / `"wait_out"`, to its time waiting for input / on a slow next stage)."""

    def __init__(
        self,
        reporter: StatsReporter,
        clock: Callable[[], float] = time.perf_counter,
        *,
        what: str = "busy",
    ):
        if what not in ("busy", "wait_in", "wait_out"):
            raise ValueError(f"what must be busy, wait_in or wait_out, got {what!r}")
        self.reporter = reporter
        self.clock = clock
        self.attr = f"{what}_s"

    def __enter__(self) -> None:
        self.t0 = self.clock()
        if self.attr == "busy_s":
            self.reporter.working += 1

    def __exit__(self, *exc: Any) -> None:
        r = self.reporter
        setattr(r, self.attr, getattr(r, self.attr) + self.clock() - self.t0)
        if self.attr == "busy_s":
            r.working -= 1
