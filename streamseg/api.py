"""Use streamseg from Python: run a pipeline from your program, iterate its results, stop it.

    import streamseg

    report = streamseg.annotate("clip.mp4", results="clip.jsonl")      # one call for a file

    with streamseg.Pipeline(["cam1=rtsp://10.0.0.5/live", "clip.mp4"]) as p:
        for result in p:                                                  # client.FrameResult
            print(result.stream, result.frame, result.counts())

The stage processes run exactly as for the command line: the pipeline is the `streamseg`
command itself, started as a child process (its own session, so a terminal's Ctrl-C reaches
only this program, which then stops it in order). Results reach this process over a private
ZeroMQ link with credit-based flow control (an ipc:// socket in a temporary folder only this
user can open; postprocess.sinks.push), in the format subscribers get (docs/protocol.md), as
`client.FrameResult`s.

Back-pressure: a file run waits for a slow consumer (nothing is lost: postprocess holds the next
result until this side takes one, and the stages before it wait in turn); a live run keeps real
time, and a result the consumer was too slow to take is dropped and counted (`missed`; in the
report, `sinks["push"]["dropped"]["consumer_slow"]`). Up to `buffer` results wait on each side
of the link. Frames the pipeline itself dropped to stay real time are in `report.dropped`.

Stopping: leaving the `with` block or the loop early, an exception in the loop, Ctrl-C,
`close()`, or the Pipeline object being garbage collected stop every process it started
(SIGTERM to the run, which stops its stages in order; SIGKILL after `stop_s`); a process that
outlives its parent dies with it (the stages' parent-death signal).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamseg.client import FrameResult, parse
from streamseg.stage import PARENT_ENV

__all__ = ["Pipeline", "Report", "StreamsegError", "annotate"]

_POLL_S = 0.2
"""How often a waiting iterator looks whether the run ended."""


class StreamsegError(Exception):
    """A run that could not start or go on for a reason the user can fix (a missing file, bad
    settings, an output another run holds): str() is the one line the command line prints."""


@dataclass(frozen=True)
class Report:
    """The end of a run, as data: what `--report FILE` writes, with the main figures named."""

    exit_code: int
    """0: every frame has results (file runs) / stopped cleanly (live); 1: a stage failed;
    2: unusable input or settings; 3: frames were lost; 130: stopped by the user."""
    frames: int
    """Frames with results."""
    decoded: int
    """Frames the sources decoded."""
    dropped: dict[str, int]
    """Frames dropped, by reason (see docs/reliability.md)."""
    elapsed_s: float
    errors: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict, repr=False)
    """Every figure of the run (counters per stage and stream, restarts, busy time)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def sinks(self) -> dict[str, dict[str, Any]]:
        """Per output (results, video, publish, push, ...): delivered, dropped by reason,
        pending (postprocess.sinks.SinkCounts)."""
        return dict((self.figures.get("extra") or {}).get("postprocess", {}).get("sinks") or {})

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any], exit_code: int | None = None) -> Report:
        sources = data.get("sources") or {}
        post = data.get("postprocess") or {}
        return cls(
            exit_code=int(data.get("exit_code", 0) if exit_code is None else exit_code),
            frames=sum(int(c.get("out", 0)) for c in post.values()),
            decoded=sum(int(c.get("in", 0)) for c in sources.values()),
            dropped={str(k): int(v) for k, v in (data.get("dropped") or {}).items()},
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            errors=tuple(str(e) for e in data.get("errors") or ()),
            figures=data,
        )


def _sources(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(sources, str | os.PathLike):
        return [os.fspath(sources)]
    out = [os.fspath(s) for s in sources]
    if not out:
        raise StreamsegError("no sources: give a file, an rtsp:// URL or a camera")
    return out


def _is_live(sources: list[str]) -> bool:
    """A source that is not a file on disk (a URL, a camera): the run is live."""
    for s in sources:
        url = s.split("=", 1)[1] if "=" in s.split("://", 1)[0] else s
        if "://" in url or url.startswith("/dev/") or url.isdigit():
            return True
    return False


def _options(
    *,
    config: str | os.PathLike[str] | None,
    weights: str | os.PathLike[str] | None,
    results: str | os.PathLike[str] | None,
    video: str | os.PathLike[str] | None,
    publish: str | None,
    serve: str | int | None,
    workers: int | None,
    device: str | None,
    score_threshold: float | None,
    extra: Sequence[str],
) -> list[str]:
    """The command-line options for these keyword arguments (None: the default)."""
    out: list[str] = []
    for flag, value in (
        ("--config", config),
        ("--weights", weights),
        ("--results", results),
        ("--output", video),
        ("--publish", publish),
        ("--serve", serve),
        ("--workers", workers),
        ("--device", device),
        ("--score-threshold", score_threshold),
    ):
        if value is not None:
            out += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return out + [str(a) for a in extra]


def _error_line(stderr: str) -> str:
    """The run's one-line error (the last "error:" line it printed), or its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    line = errors[-1] if errors else (lines[-1] if lines else "the run stopped with exit 2")
    return line.removeprefix("streamseg: error: ").removeprefix("streamseg: ")


class _Tail:
    """Reads a child's stderr on a thread: keeps its last lines, echoes them when asked."""

    def __init__(self, stream: Any, *, echo: bool, keep: int = 200) -> None:
        self.lines: list[str] = []
        self.keep = keep
        self.echo = echo
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line)
            del self.lines[: -self.keep]
            if self.echo:
                sys.stderr.write(line)
        stream.close()

    def text(self) -> str:
        self.thread.join(timeout=2.0)
        return "".join(self.lines)


def _spawn(command: list[str]) -> subprocess.Popen:
    """The run, in its own session (a terminal's Ctrl-C reaches this program, which stops it in
    order), told to die with this process (PARENT_ENV: cli.main sets its parent-death signal)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _spawn_kept(command: list[str]) -> subprocess.Popen:
    """`_spawn` from a thread that lives as long as the run: Linux sends the parent-death signal
    when the *thread* that forked a process ends, and the caller's thread (a web request's, a
    notebook cell's) may end long before the pipeline it started."""
    started: list[subprocess.Popen | BaseException] = []
    ready = threading.Event()

    def keep() -> None:
        try:
            proc = _spawn(command)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            started.append(e)
            ready.set()
            return
        started.append(proc)
        ready.set()
        proc.wait()

    threading.Thread(target=keep, name="streamseg-run", daemon=True).start()
    ready.wait()
    if isinstance(started[0], BaseException):
        raise started[0]
    return started[0]


def _stop(proc: subprocess.Popen, stop_s: float) -> None:
    """Stop a run and wait for it: SIGTERM (it stops its stages in order), SIGKILL after
    `stop_s` (its stages then die with it: parent-death signal)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=stop_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cleanup(proc: subprocess.Popen | None, folder: str, stop_s: float) -> None:
    """What a Pipeline leaves behind, undone (also from weakref.finalize: no self here)."""
    if proc is not None:
        _stop(proc, stop_s)
    shutil.rmtree(folder, ignore_errors=True)


class Pipeline:
    """A streamseg pipeline started from this program; iterate it for results.

    sources: files, rtsp:// URLs, cameras (/dev/videoN or an index), each optionally NAME=...
    (the stream id), as `streamseg run` takes them. live: None decides from the sources (a URL
    or a camera: live, `watch`; only files: a lossless file run, `annotate`); True plays files
    in real time. config: a shipped model config by name or a .toml path; weights: your own
    checkpoint (see README "Use your own model"). results, video, publish, serve: the other
    outputs, written at the same time (as -o/--results/--publish/--serve). buffer: results
    waiting on each side of the link to this process. options: any other command-line options
    (e.g. ["--give-up-s", "30"]). quiet: False echoes the run's own output to stderr.
    """

    def __init__(
        self,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        config: str | os.PathLike[str] | None = None,
        weights: str | os.PathLike[str] | None = None,
        live: bool | None = None,
        pipeline: str | os.PathLike[str] | None = None,
        results: str | os.PathLike[str] | None = None,
        video: str | os.PathLike[str] | None = None,
        publish: str | None = None,
        serve: str | int | None = None,
        workers: int | None = None,
        device: str | None = None,
        score_threshold: float | None = None,
        buffer: int = 16,
        options: Sequence[str] = (),
        quiet: bool = True,
        stop_s: float = 15.0,
    ) -> None:
        if not 1 <= buffer <= 10_000:
            raise StreamsegError(f"buffer must be 1..10000 results, not {buffer}")
        self.sources = _sources(sources)
        self.live = _is_live(self.sources) if live is None else live
        self.buffer = buffer
        self.quiet = quiet
        self.stop_s = stop_s
        self._folder = tempfile.mkdtemp(prefix="streamseg-api-")  # 0700: this user only
        self.endpoint = f"ipc://{self._folder}/results"
        self._report_path = Path(self._folder) / "report.json"
        command = "watch" if self.live else "annotate"
        if pipeline is not None:
            command_line = ["run", os.fspath(pipeline), *self.sources]
            if self.live:
                command_line.append("--realtime")
        else:
            command_line = [command, *self.sources]
        self.command = [
            sys.executable,
            "-m",
            "streamseg.cli",
            *command_line,
            *_options(
                config=config,
                weights=weights,
                results=results,
                video=video,
                publish=publish,
                serve=serve,
                workers=workers,
                device=device,
                score_threshold=score_threshold,
                extra=options,
            ),
            "--push",
            self.endpoint,
            "--push-buffer",
            str(buffer),
            "--report",
            str(self._report_path),
            "--quiet",
        ]
        self._proc: subprocess.Popen | None = None
        self._sock: Any = None
        self._tail: _Tail | None = None
        self._report: Report | None = None
        self._lock = threading.Lock()
        self.received = 0
        self.rejected = 0
        self._finalizer = weakref.finalize(self, _cleanup, None, self._folder, stop_s)

    # --- the run ----------------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Start the run (done by `with` and by the first iteration)."""
        with self._lock:
            if self._proc is not None:
                return self
            from streamseg.wire import sockets

            # bound before the run starts: its first result always has somewhere to go. The
            # other end is postprocess.sinks.push (its docstring has the link's messages).
            self._sock = sockets.router(
                self.endpoint, hwm=self.buffer + 2, max_msg_bytes=sockets.DEFAULT_MAX_MSG_BYTES
            )
            self._proc = _spawn_kept(self.command)
            self._tail = _Tail(self._proc.stderr, echo=not self.quiet)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(
                self, _cleanup, self._proc, self._folder, self.stop_s
            )
        return self

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[FrameResult]:
        self.start()
        while True:
            result = self.next(timeout_s=None)
            if result is None:
                return
            yield result

    def next(self, timeout_s: float | None = None) -> FrameResult | None:
        """The next result; None when the run ended (every result taken) or, with
        `timeout_s`, when none came in that time (then see `running`). Raises StreamsegError
        when the run could not start (exit 2), with the line the command line printed."""
        self.start()
        from streamseg.wire import sockets
        from streamseg.wire.fields import ProtocolError

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._sock is None:
                return None
            ended = self._proc is not None and self._proc.poll() is not None
            wait = 0.0 if ended else _POLL_S
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            got = sockets.recv_raw(self._sock, wait * 1000.0)
            if got is not None and len(got) >= 2:
                peer, parts = got[0], got[1:]
                if parts == [b"hello"]:  # a (new) postprocess: it may send `buffer` results
                    self._say(peer, b"credit", str(self.buffer).encode())
                    continue
                if parts == [b"end"]:  # we have every result it sent
                    self._say(peer, b"end")
                    continue
                self._say(peer, b"took", b"1")  # taken: one more may come
                try:
                    result = parse(parts, time.time())
                except ProtocolError:  # not a result (the link is private: a bug): skipped
                    self.rejected += 1
                    continue
                self.received += 1
                return result
            if got is not None:
                continue
            if ended:  # every result it sent has been taken
                self._finish()
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _say(self, peer: bytes, *parts: bytes) -> None:
        from streamseg.wire import sockets

        # False: that postprocess is gone (a restarted stage says hello again)
        sockets.send_raw_to(self._sock, peer, list(parts))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _finish(self) -> None:
        """The run ended by itself: read its report; exit 2 raises the run's one line."""
        if self._report is not None or self._proc is None:
            return
        code = self._proc.wait()
        stderr = self._tail.text() if self._tail is not None else ""
        self._close_link()
        self._report = self._read_report(code)
        if code == 2:
            raise StreamsegError(_error_line(stderr))

    def _read_report(self, code: int) -> Report:
        try:
            data = json.loads(self._report_path.read_text())
        except (OSError, ValueError):
            data = {"errors": [_error_line(self._tail.text())] if self._tail else []}
        return Report.from_json(data, exit_code=code)

    def _close_link(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> Report | None:
        """Stop the run (if it still runs) and every process it started; its report."""
        with self._lock:
            proc = self._proc
            if proc is None:
                self._finalizer()
                return None
            self._close_link()
            if self._report is None:
                _stop(proc, self.stop_s)
                self._report = self._read_report(proc.returncode)
            self._finalizer()
            return self._report

    @property
    def report(self) -> Report | None:
        """The run's report, once it ended (by itself or by close())."""
        return self._report

    @property
    def missed(self) -> int:
        """Results this consumer was too slow to take (live runs; known once the run ended):
        the report's `sinks["push"]["dropped"]`."""
        if self._report is None:
            return 0
        return sum((self._report.sinks.get("push") or {}).get("dropped", {}).values())


def annotate(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    results: str | os.PathLike[str] | None = None,
    video: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    device: str | None = None,
    score_threshold: float | None = None,
    options: Sequence[str] = (),
    quiet: bool = True,
) -> Report:
    """Annotate video files: every frame through the model, results and/or annotated video
    written (as `streamseg annotate`); the run's report. Raises StreamsegError, with the line
    the command line prints, for what the user can fix (exit code 2)."""
    sources = _sources(inputs)
    if results is None and video is None:
        raise StreamsegError("nothing to write: give results=FILE.jsonl and/or video=FILE.mp4")
    folder = tempfile.mkdtemp(prefix="streamseg-api-")
    report_path = Path(folder) / "report.json"
    command = [
        sys.executable,
        "-m",
        "streamseg.cli",
        "annotate",
        *sources,
        *_options(
            config=config,
            weights=weights,
            results=results,
            video=video,
            publish=None,
            serve=None,
            workers=workers,
            device=device,
            score_threshold=score_threshold,
            extra=options,
        ),
        "--report",
        str(report_path),
        "--quiet",
    ]
    proc = _spawn(command)  # this thread waits for it: the run's parent lives as long as it
    tail = _Tail(proc.stderr, echo=not quiet)
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C, or an exception from another thread: stop the run
        _stop(proc, 15.0)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    stderr = tail.text()
    try:
        if code == 2:
            raise StreamsegError(_error_line(stderr))
        try:
            data = json.loads(report_path.read_text())
        except (OSError, ValueError):
            data = {"errors": [_error_line(stderr)]}
        return Report.from_json(data, exit_code=code)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
