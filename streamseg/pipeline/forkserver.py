"""Stage processes forked from one preloaded parent, so that torch is imported once per run.

Every inference worker starts by importing torch and torchvision: about 4 s of CPU each on the
2-core test machine, where the shapes model then loads in 0.2 s. With two workers that import
ran twice, beside postprocess's, on two cores: the run's start-up was mostly imports. The
supervisor therefore starts one fork server as soon as the run starts. It imports the stage
modules once (`preload`), then forks a worker on each request, in milliseconds, sharing the
imported pages copy-on-write.

How a forked stage stays an ordinary child of the supervisor: the server forks twice and the
middle process exits at once, so the stage is re-parented to the nearest "child subreaper",
which the supervisor made itself (Linux prctl). It can then be polled, signalled and reaped
exactly like a subprocess.Popen child (:class:`Forked`), its exit code included, and it dies
with the supervisor (its PR_SET_PDEATHSIG, set by the stage once re-parented). A killed or
hung fork server costs nothing but speed, and never the supervisor's attention: `submit` asks
without waiting and hands back a :class:`Pending`, which the supervisor polls like any child; a
server that fails, stops making progress or does not answer in time means the stage starts the
usual way.

Fork safety: the server runs no torch op and starts no thread; it refuses to fork (and says
why) if the imports left a second thread running. OPENBLAS_NUM_THREADS=1 keeps numpy's
OpenBLAS from starting its pool at import; a worker's model runs on torch's own pool, created
in the child. Used for CPU runs only: a GPU driver must not be initialised before a fork.

The wire between supervisor and server is two pipes of JSON lines (never pickle):
request  {"stage": ..., "args": JSON_TEXT, "env": {...}, "asked": TIME}  (the stage's record as
         its command line carries it: streamseg.stage.args.to_json)  (time.time(): the
         stage's start-up counts from then, imports waited for included)
replies  {"ready": N_THREADS} once, then {"pid": PID} or {"error": WHY} per request.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence

log = logging.getLogger("streamseg")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

TITLE_ROOM = 4096
"""Bytes of command line each forked stage can show (a worker's is about 750)."""
READY_TIMEOUT_S = 60.0
"""The longest a stage waits for the server's imports; then it starts the usual way."""
STALL_S = 5.0
"""A server importing without using CPU time this long is stopped or stuck: given up."""
REPLY_TIMEOUT_S = 2.0
"""A ready server forks in milliseconds: a stage not forked this long after it was asked for
(or after the server became ready) starts the usual way."""


# -- supervisor side ------------------------------------------------------------------------------


def _prctl(option: int, arg: int | ctypes.c_int | ctypes._Pointer) -> int:  # type: ignore[type-arg]
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def make_subreaper() -> Callable[[], None] | None:
    """Make this process the reaper of its orphaned descendants (Linux); returns the undo, or
    None where that is not possible (then nothing can be forked for it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        was = ctypes.c_int(0)
        if _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.pointer(was)) != 0:
            return None
        if _prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
            return None
    except (OSError, AttributeError):
        return None

    def undo() -> None:
        _prctl(_PR_SET_CHILD_SUBREAPER, was.value)

    return undo


class Forked:
    """A stage forked by the server and re-parented to this process: the subset of
    subprocess.Popen that the supervisor uses (pid, poll, wait, send_signal, kill)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its code is lost
                self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(0.05, delay * 2)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Pending:
    """A stage asked of the fork server and not forked yet: what the supervisor holds meanwhile,
    Popen's subset as Forked, so that its loop never waits on the server. `poll` (which never
    blocks) resolves it: to the forked stage when the server answers, or to `fallback()` (the
    stage started the usual way) when the server fails or does not answer in time. A signal
    sent before it exists cancels it: it reads as killed, and a fork that comes later is
    killed at once."""

    def __init__(self, server: ForkServer, fallback: Callable[[], subprocess.Popen] | None):
        self.server = server
        self.fallback = fallback
        self.asked = time.monotonic()
        self.proc: Forked | subprocess.Popen | None = None
        self.cancelled: int | None = None
        self.failed = False
        """The server could not fork it (and there is no fallback)."""

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def resolve(self) -> None:
        """Take the server's answer if there is one; fall back if there will be none."""
        if self.proc is not None or self.cancelled is not None or self.failed:
            return
        self.server.pump()
        if self.proc is None and self.server.overdue(self):
            self.server.forget(self)
            if self.fallback is None:
                self.failed = True
            else:
                self.proc = self.fallback()

    def poll(self) -> int | None:
        self.resolve()
        if self.proc is not None:
            return self.proc.poll()
        if self.cancelled is not None:
            return -self.cancelled
        return 255 if self.failed else None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("a stage being forked", timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        self.resolve()
        if self.proc is not None:
            self.proc.send_signal(sig)
        elif self.cancelled is None and not self.failed:
            self.cancelled = sig
            self.server.forget(self)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The supervisor's handle on a fork server process."""

    def __init__(self, popen: subprocess.Popen, requests: int, replies: int) -> None:
        self._popen = popen
        self._requests = requests
        os.set_blocking(requests, False)  # a stopped server must never block a request
        self._replies = replies
        self._buffer = b""
        self._waiting: list[Pending | None] = []  # in request order; None: nobody waits now
        self._strays: list[Forked] = []  # forked for a request given up on: killed, reaped
        self._started = time.monotonic()
        self._ready_at = 0.0
        self._cpu = (self._started, cpu_ticks(popen.pid))
        self.ready: bool | None = None  # None: not yet known
        self.why = ""

    @classmethod
    def start(cls, preload: Sequence[str]) -> ForkServer | None:
        """Start a server importing `preload`; None where stages cannot be forked here."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "streamseg.pipeline.forkserver", str(req_r), str(rep_w)]
        # the last argument only makes room for the forked stages' command lines (_retitle)
        cmd += [",".join(preload), " " * TITLE_ROOM]
        try:
            popen = subprocess.Popen(cmd, env=env, pass_fds=(req_r, rep_w), start_new_session=True)
        except OSError as e:
            log.debug("fork server: not started: %s", e)
            for fd in (req_r, req_w, rep_r, rep_w):
                os.close(fd)
            return None
        os.close(req_r)
        os.close(rep_w)
        return cls(popen, req_w, rep_r)

    def _fail(self, why: str) -> None:
        if self.ready is not False:
            log.debug("fork server: %s; stages start as their own processes", why)
        self.ready, self.why = False, why
        self._popen.kill()

    def submit(
        self,
        stage: str,
        args: str,
        env: dict[str, str],
        *,
        fallback: Callable[[], subprocess.Popen] | None = None,
        asked: float | None = None,
    ) -> Pending:
        """Ask for `stage` with `args` (JSON text, as on its command line) and these
        environment variables set, without waiting:
        the answer comes through the Pending's poll. `fallback`: how to start the stage the
        usual way if the server cannot (gone, not ready within READY_TIMEOUT_S or making no
        progress for STALL_S, no pid within REPLY_TIMEOUT_S, unsafe). `asked`: when the stage
        was asked for (time.time(); default now), where its start-up counts from."""
        pending = Pending(self, fallback)
        if self.ready is False:
            pending.resolve()
            return pending
        asked = time.time() if asked is None else asked
        line = json.dumps({"stage": stage, "args": args, "env": env, "asked": asked}) + "\n"
        try:
            if os.write(self._requests, line.encode()) != len(line.encode()):
                raise BlockingIOError("short write")
        except (OSError, ValueError) as e:  # a full pipe: the server stopped reading
            self._fail(f"not taking requests ({e})")
        else:
            self._waiting.append(pending)
        pending.resolve()
        return pending

    def pump(self) -> None:
        """Read whatever the server has answered (never blocks); hand pids to their requests."""
        if self._replies < 0:
            return
        while True:
            try:
                readable, _, _ = select.select([self._replies], [], [], 0)
                chunk = os.read(self._replies, 65536) if readable else None
            except OSError:
                chunk = b""
            if chunk is None:
                break
            if not chunk:  # the server is gone
                if self.ready is not False:
                    self._fail("gone")
                break
            self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                reply = json.loads(line)
            except ValueError:
                reply = None
            self._answer(reply if isinstance(reply, dict) else {"error": "malformed reply"})
        if self.ready is None:
            self._watch_progress()

    def _answer(self, reply: dict) -> None:
        if self.ready is None:
            if "ready" in reply:
                self.ready, self._ready_at = True, time.monotonic()
            else:
                self._fail(str(reply.get("error", "not ready")))
            return
        pending = self._waiting.pop(0) if self._waiting else None
        pid = reply.get("pid")
        if not isinstance(pid, int):
            self._fail(str(reply.get("error", "no pid")))
            return
        forked = Forked(pid)
        if pending is None:  # given up on meanwhile: it must not run
            forked.kill()
            self._strays.append(forked)
        else:
            pending.proc = forked

    def _watch_progress(self) -> None:
        """A server that is importing uses CPU time; one stopped or stuck does not."""
        since, ticks = self._cpu
        now_ticks = cpu_ticks(self._popen.pid)
        now = time.monotonic()
        if now_ticks is None or ticks is None or now_ticks != ticks:
            self._cpu = (now, now_ticks)
        elif now - since >= STALL_S:
            self._fail(f"no progress for {now - since:.0f} s while importing")

    def overdue(self, pending: Pending) -> bool:
        """Whether `pending` will not be answered in time (then it starts the usual way)."""
        if self.ready is False or pending not in self._waiting:
            return True
        now = time.monotonic()
        if self.ready is None:
            late = now - self._started >= READY_TIMEOUT_S
        else:
            late = now - max(pending.asked, self._ready_at) >= REPLY_TIMEOUT_S
        if late:
            self._fail("too slow to answer")
        return late

    def forget(self, pending: Pending) -> None:
        """Nobody waits for `pending` any more: a stage forked for it later is killed."""
        self._waiting = [None if p is pending else p for p in self._waiting]

    def spawn(
        self,
        stage: str,
        args: str,
        env: dict[str, str],
        *,
        give_up: Callable[[], bool] = lambda: False,
        ready_timeout_s: float = READY_TIMEOUT_S,
        asked: float | None = None,
    ) -> Forked | None:
        """Fork `stage` and wait for it (submit, then poll): None if the server cannot (gone,
        not ready within ready_timeout_s, give_up() said so, or unsafe)."""
        pending = self.submit(stage, args, env, asked=asked)
        while pending.proc is None and not pending.failed:
            if give_up() or (
                self.ready is None and time.monotonic() - self._started >= ready_timeout_s
            ):
                self._fail("not ready")
            pending.resolve()
            if pending.proc is None and not pending.failed:
                select.select([self._replies] if self._replies >= 0 else [], [], [], 0.05)
        return pending.proc if isinstance(pending.proc, Forked) else None

    def close(self) -> None:
        """End the server (its forked stages live on: they are this process's children)."""
        if self._replies < 0:
            return
        try:
            os.close(self._requests)
        except OSError:
            pass
        try:
            self._popen.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        self._waiting = [None for _ in self._waiting]
        self.pump()  # a fork answered as it ended: killed (nobody waits for it now)
        os.close(self._replies)
        self._replies = -1
        for stray in self._strays:
            stray.wait(timeout=5.0)


def cpu_ticks(pid: int) -> int | None:
    """CPU time process `pid` used so far, in clock ticks (Linux /proc); -1 while it is stopped
    (SIGSTOP, Ctrl-Z) or a zombie, which make no progress; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    try:
        if fields[0] in (b"T", b"t", b"Z", b"X"):
            return -1
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (ValueError, IndexError):
        return None


# -- server side ----------------------------------------------------------------------------------


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _retitle(args: Sequence[str]) -> None:
    """Show `args` as this process's command line (/proc/PID/cmdline: ps, pgrep -f, tools that
    find stages by theirs) by rewriting the process's original argument area in place, as
    setproctitle does, but as NUL-separated arguments, cut to the room there is. Best effort."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size <= 1:
        return
    data = b"\0".join(a.encode() for a in args)[: size - 1]
    ctypes.memmove(start, data.ljust(size, b"\0"), size)


def _fork_stage(
    stage: str, args: str, env: dict[str, str], asked: float, fds: Sequence[int]
) -> int:
    """Fork twice; the grandchild runs the stage and is re-parented to the subreaper. Returns
    its pid (in the server)."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the middle process: fork the stage, tell its pid, exit
        try:
            os.close(r)
            me = os.getpid()  # (not the grandchild's getppid: this may have exited by then)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _run_stage(stage, args, env, asked, fds, me)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 32)
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    return int(data)


def _run_stage(
    stage: str, args: str, env: dict[str, str], asked: float, fds: Sequence[int], middle: int
) -> None:
    """The forked stage: never returns into the server's code."""
    from streamseg.stage import SUPERVISOR_ENV, die_with_parent, shell
    from streamseg.stage.__main__ import exit_now
    from streamseg.stage.__main__ import main as stage_main

    code = 1
    try:
        # The server's pipes become /dev/null: closing them would free their numbers while the
        # server's file objects (alive in this copy of its stack) still name them.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in fds:
            os.dup2(null, fd)
        os.close(null)
        # Wait to be re-parented, so that the stage's death signal (setup_process) follows the
        # supervisor, not the middle process, which is exiting now.
        while os.getppid() == middle:
            time.sleep(0.0005)
        # its death signal now, and exit if the supervisor died while it was re-parented
        die_with_parent(env.get(SUPERVISOR_ENV))
        os.setsid()
        # the command line it would have had if started on its own (supervisor._Run.start)
        _retitle([sys.executable, "-m", "streamseg.stage", stage, args])
        os.environ.update(env)
        shell.count_age_from(asked)
        code = stage_main([stage, args])
    except SystemExit as e:
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # as a stage started on its own would: the traceback, exit 1
        traceback.print_exc()
        code = 1
    finally:
        exit_now(code)


def serve(requests: int, replies: int, preload: Sequence[str]) -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the supervisor
    except (OSError, AttributeError):
        pass
    _retitle([sys.executable, "-m", "streamseg.pipeline.forkserver", *preload])
    out = os.fdopen(replies, "w", buffering=1)
    try:
        for module in ("streamseg.stage.__main__", "streamseg.stage.shell", *preload):
            importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure means "start stages the usual way"
        out.write(json.dumps({"error": f"preload failed: {e}"}) + "\n")
        return 1
    threads = _threads()
    out.write(json.dumps({"ready": threads}) + "\n")
    for line in os.fdopen(requests, "r"):
        try:
            req = json.loads(line)
            stage, args, env, asked = req["stage"], req["args"], req["env"], req["asked"]
            if not isinstance(args, str):
                raise TypeError("args must be JSON text")
            float(asked)
        except (ValueError, KeyError, TypeError):
            out.write(json.dumps({"error": "malformed request"}) + "\n")
            continue
        if threads > 1:  # a fork would copy a thread's locks, not the thread
            out.write(json.dumps({"error": f"{threads} threads after preload"}) + "\n")
            continue
        try:
            pid = _fork_stage(stage, args, env, float(asked), (requests, replies))
        except (OSError, ValueError) as e:  # no fork (out of processes or memory)
            out.write(json.dumps({"error": f"fork failed: {e}"}) + "\n")
            continue
        out.write(json.dumps({"pid": pid}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")))
