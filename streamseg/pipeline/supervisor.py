"""Runs a pipeline: starts every stage as its own process, watches them, reports, cleans up.

The supervisor never touches frames and imports no stage code (no PyAV, no torch). It starts
exactly the processes the plan (streamseg.pipeline.plan) lists, binds the stats endpoint, where
stages report their counters and a heartbeat, draws the progress bar and periodic stats lines
from them, and acts on `watchdog.StageWatch`'s verdicts: a hung stage is killed; a dead one ends
a file run at once (exit 1, the others finish their files) and is restarted in a live run, until
it died too often. At the end it hands the counters to `report` for the exit code and summary.
SIGTERM stops a run exactly as Ctrl-C does; a second one stops it at once.

A run's life, in `_Run`: `start` (the plan's first processes), `starting` (until they are
ready), then the sources, `loop` (watch, act, draw) until the work is done, `shutdown`,
`report`. Its loop never waits on anything but the stats socket (200 ms at most): stages forked
from the fork server arrive asynchronously (forkserver.Pending).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from streamseg.config import ModelConfig
from streamseg.outputs import output_path, part_path
from streamseg.pipeline import plan as planning
from streamseg.pipeline.forkserver import Forked, ForkServer, Pending, cpu_ticks, make_subreaper
from streamseg.pipeline.lock import lock_outputs
from streamseg.pipeline.plan import Outputs, ProcessSpec, RunPlan
from streamseg.pipeline.progress import Progress
from streamseg.pipeline.report import (
    RunReport,
    Tally,
    add_counts,
    exit_code,
    merge_shards,
    sinks_line,
    stream_lines,
)
from streamseg.pipeline.spec import Pipeline
from streamseg.pipeline.watchdog import FAIL, KILL, RESTART, Action, Drain, StageWatch
from streamseg.pipeline.watchdog import describe_exit as describe_exit
from streamseg.serve.board import Board
from streamseg.serve.http import WebServer
from streamseg.serve.views import PreviewHub
from streamseg.serve.window import window_lines
from streamseg.sink_urls import rtsp_urls
from streamseg.source.spec import SourceSpec
from streamseg.stage import SUPERVISOR_ENV
from streamseg.stage.args import PostprocessArgs, SourceArgs, to_json
from streamseg.stage.links import Links
from streamseg.stage.trust import ENV as TOKENS_ENV
from streamseg.stage.trust import Tokens, from_stages, new_token
from streamseg.wire import sockets
from streamseg.wire.messages import Stats
from streamseg.wire.receiver import Receiver

log = logging.getLogger("streamseg")

DRAIN_S = {False: 30.0, True: 5.0}
"""After every source ended, how long (file runs, live runs) the other stages may go without
finishing a frame, and without one of them busy on frames, before the run stops waiting for
them: a stage restarted in a live run can miss an end-of-stream that was in flight when its
last life died. A model call that takes longer is progress, not a stall (watchdog.Drain)."""

PAUSE_S = 1.0
"""A gap this long in the supervisor's own loop means it was stopped or starved: nothing is
judged on the silence it did not listen to (watchdog.StageWatch.pause_s)."""

START_IDLE_S = 10.0
"""The least a starting stage may go without a sign of progress (a report, CPU time used)
before it is found frozen; at least 5 hang_s."""

_IDLERS = ("source", "worker")
"""Stages that wait, once their work is done, to be stopped (sources that ended; workers of
a dispatcher that finished, or restarted after it did): stopped at once at the end."""


@dataclass
class _Proc:
    spec: ProcessSpec
    popen: subprocess.Popen | Forked | Pending
    code: int | None = None
    cpu: int | None = None
    """CPU ticks at the last look (cpu_ticks), while it starts."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stage(self) -> str:
        return self.spec.stage

    def signal(self, sig: int) -> None:
        try:
            self.popen.send_signal(sig)
        except ProcessLookupError:
            pass


@dataclass
class _Stop:
    """Set from the signal handlers; read by the supervisor's loop."""

    requested: int = 0
    signals: list[str] = field(default_factory=list)


def run(
    pipeline: Pipeline,
    sources: list[SourceSpec],
    model: ModelConfig,
    *,
    video: str | None = None,
    results: str | None = None,
    publish: str | None = None,
    publish_keys: dict[str, str] | None = None,
    live_options: dict[str, Any] | None = None,
    stats_every_s: float = 5.0,
    quiet: bool = False,
    verbose: bool = False,
    serve: WebServer | None = None,
    drain_s: float | None = None,
    claim: Sequence[str | None] = (),
    push: str | None = None,
    push_buffer: int = 16,
    sinks: Sequence[str] = (),
    rtsp_out: str | None = None,
) -> RunReport:
    """Run the pipeline over `sources` until every stream ended, a stage failed (file runs) or
    the user stopped it (Ctrl-C, SIGTERM); never leaves a stage process behind.
    `serve`: a bound web server (serve.http.bind) to serve the run's page, live views,
    /metrics and /healthz from, while it runs. `drain_s`: DRAIN_S's wait, for this run.
    `claim`: other files this run writes (the CLI's --report), locked with its outputs.
    `push`, `push_buffer`: one reader program's endpoint for every result (plan.Outputs.push).
    `sinks`: broker sinks' URLs, checked (--sink; plan.Outputs.sinks). `rtsp_out`: [HOST:]PORT
    to serve the annotated streams on over RTSP (plan.Outputs.rtsp_out).

    lock.OutputBusy (before any stage starts) when another run holds one of its files."""
    streams = [s.stream for s in sources]
    files = [
        output_path(template, stream, len(streams))
        for template in (video, results)
        if template
        for stream in streams or ["stream"]
    ]
    with lock_outputs([*map(str, files), *(c for c in claim if c)]):
        pipeline, budget, cuda = planning.this_host(pipeline, model, streams=len(sources))
        rundir = tempfile.mkdtemp(prefix="streamseg-")
        try:
            outputs = Outputs(
                video=video,
                results=results,
                publish=publish,
                publish_keys=publish_keys,
                preview=serve is not None,
                push=push,
                push_buffer=push_buffer,
                sinks=tuple(sinks),
                rtsp_out=rtsp_out,
            )
            the_plan = planning.plan(
                pipeline,
                model,
                sources,
                outputs,
                rundir=rundir,
                budget=budget,
                cuda=cuda,
                live_options=live_options,
                verbose=verbose,
            )
            stall_s = float((live_options or {}).get("stall_s") or 5.0)
            r = _Run(the_plan, stats_every_s=stats_every_s, quiet=quiet, stall_s=stall_s)
            if rtsp_out:  # the page links each stream's annotated video
                r.board.rtsp = rtsp_urls(rtsp_out, [s.stream for s in sources])
            return r.run(serve, drain_s=DRAIN_S[pipeline.live] if drain_s is None else drain_s)
        finally:
            shutil.rmtree(rundir, ignore_errors=True)


class _Run:
    """One run: its processes, what they reported, the watchdog's view of them, the user's
    stop. Built from the plan; `run` is its whole life."""

    def __init__(self, plan: RunPlan, *, stats_every_s: float, quiet: bool, stall_s: float) -> None:
        self.plan = plan
        self.live = plan.pipeline.live
        self.quiet = quiet
        self.stats_every_s = stats_every_s
        self.specs = {p.name: p for p in plan.processes}
        """Each process's current life (a restart replaces it)."""
        self.tokens = {name: new_token() for name in plan.names}
        ep = plan.endpoints
        self.links = Links("supervisor", keys=plan.pipeline.keys or None)
        security = self.links.security(ep["stats"], bind=True)
        self.stats_sock = sockets.pull(ep["stats"], bind=True, hwm=1000, security=security)
        self.receiver = Receiver(
            self.stats_sock, name="supervisor", accept=from_stages(self.tokens)
        )
        hang_s = plan.pipeline.hang_s
        self.watch = StageWatch(
            live=self.live,
            hang_s=hang_s,
            start_idle_s=max(START_IDLE_S, 5 * hang_s),
            pause_s=PAUSE_S,
        )
        # a lost worker's frames go to the others: the run goes on
        self.watch.spares.update(plan.workers)
        self.tally = Tally()
        self.procs: dict[str, _Proc] = {}
        self.busy: dict[str, bool] = {}
        """Per process: its last heartbeat said it is busy on frames."""
        self.errors: list[str] = []
        self.stop = _Stop()
        self.failed = False
        self.ready = False
        self.t0, self.epoch = time.monotonic(), time.time()
        self.t_ready = self.t0
        self.board = Board(live=self.live, stall_s=stall_s, span_s=stats_every_s)
        self.bar = Progress(None, unit="frames", enabled=None if not quiet else False)
        self.forks: ForkServer | None = None
        self._unreap: Any = None
        self._pauses = 0

    # -- the life of a run --

    def run(self, serve: WebServer | None, *, drain_s: float) -> RunReport:
        restore = _install_signal_handlers(self.stop)
        hub = None
        try:
            if serve is not None:
                ep = self.plan.endpoints["preview"]
                shards = [self.plan.get(name).args for name in self.plan.postprocess]
                hub = PreviewHub(
                    ep,
                    security=self.links.security(ep, bind=False),
                    expect_auth=[self.tokens[name] for name in self.plan.postprocess],
                    more_endpoints=[
                        a.preview_endpoint  # type: ignore[union-attr]
                        for a in shards[1:]
                        if a.preview_endpoint  # type: ignore[union-attr]
                    ],
                )
                hub.start()
                serve.start(self.board, hub)
            self._start_fork_server()
            first = [p for p in self.plan.processes if p.start == "first"]
            for spec in first:  # postprocess first: its imports overlap everything else
                self.start(spec)
            # Sources start once inference and postprocess are bound and loaded, so that no
            # frame (and no end-of-stream of a source that fails at once) waits on an absent peer.
            self.ready = self.starting()
            self.t_ready = time.monotonic()
            if self.ready:
                for spec in self.plan.processes:
                    if spec.start == "after_ready":
                        self.start(spec)
                self.loop(Drain(drain_s, pause_s=PAUSE_S))
            elif not self.stop.requested:
                for p in self.procs.values():  # (2: bad settings, the stage said so: exit 2)
                    if (code := p.popen.poll()) is not None and code != 2:
                        self.errors.append(f"{p.name} {describe_exit(code)} while starting")
                        self.failed = True
        finally:
            interrupted = bool(self.stop.requested)
            self.shutdown(prompt=interrupted or self.failed or not self.ready)
            self.drop_empty_parts()
            self.bar.close()
            if serve is not None:
                serve.close()
            if hub is not None:
                hub.close()
            sockets.close_all(abort=True)
            if self.forks is not None:
                self.forks.close()
            if self._unreap is not None:
                self._unreap()
            restore()
        return self.report(interrupted)

    def _start_fork_server(self) -> None:
        """A fork server for the run's forked processes (CPU inference workers), where it
        saves start-up; without one (not Linux, or it cannot start) they start as usual."""
        if not any(p.forked for p in self.plan.processes):
            return
        self._unreap = make_subreaper()
        if self._unreap is None:
            return
        self.forks = ForkServer.start(preload=["streamseg.inference.worker"])

    def start(self, spec: ProcessSpec) -> None:
        """Start `spec`'s process (forked without waiting, where the plan says so)."""
        self.specs[spec.name] = spec
        senders = {peer: self.tokens[peer] for peer in spec.senders}
        tokens = Tokens(self.tokens[spec.name], senders).to_env()
        # Tokens go in the environment: a command line is visible to every local user.
        env = {TOKENS_ENV: tokens, SUPERVISOR_ENV: str(os.getpid())}
        text = to_json(spec.args)

        def spawn() -> subprocess.Popen:
            cmd = [sys.executable, "-m", "streamseg.stage", spec.stage, text]
            # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops the
            # stages in order (SIGTERM) instead of each one being interrupted wherever it is.
            full = dict(os.environ, PYTHONUNBUFFERED="1", **env)
            return subprocess.Popen(cmd, env=full, start_new_session=True)

        popen: subprocess.Popen | Pending
        if spec.forked and self.forks is not None:
            popen = self.forks.submit(spec.stage, text, env, fallback=spawn)
        else:
            popen = spawn()
        self.procs[spec.name] = _Proc(spec, popen)
        self.busy.pop(spec.name, None)
        self.watch.started(spec.name, time.monotonic())

    def starting(self) -> bool:
        """Wait until every started process said it is ready; False when one exited or hung
        first, or the user stopped the run."""
        waiting = set(self.procs)
        while waiting and not self.stop.requested:
            waiting -= self.absorb(200)
            if self.look():
                return False
            for a in self.watch.check(time.monotonic()):
                if a.kind == KILL:
                    log.warning("%s %s: killing it", a.stage, a.reason)
                    self.procs[a.stage].signal(signal.SIGKILL)
            self._say_pause()
        return not waiting

    def loop(self, drain: Drain) -> None:
        """Watch and act until the work is done, a stage failed (file runs), the drain got
        stuck or the user stopped the run."""
        next_line = self.t0 + self.stats_every_s
        sources = [p.name for p in self.plan.processes if p.stage == "source"]
        while not self.stop.requested:
            self.absorb(200)
            self.look()
            now = time.monotonic()
            if self.act(self.watch.check(now)):
                self.failed = True
                return
            self._say_pause()
            working = [p for p in self.procs.values() if p.stage not in _IDLERS]
            if all(p.code is not None for p in working) and not any(
                self.watch.down(name) for name in self.procs
            ):
                return  # the end: sources that ended wait to be stopped (see source.main)
            done = self.frames_done()
            ended = all(self.ended(name) for name in sources)
            busy = any(self.busy.get(p.name) for p in working if p.code is None)
            if drain.stuck(ended, done, busy, now):
                why = (
                    "every source ended, but no frame was finished (and no stage was busy on "
                    f"one) for {drain.wait_s:g} s"
                )
                if not self.live:  # a file run's stages must finish: something is wrong
                    self.errors.append(f"{why}: stopped waiting")
                    self.failed = True
                else:  # an end-of-stream lost with a stage that died: nothing more will come
                    log.warning("%s: stopping", why)
                    self.stop.requested = 1
                return
            self.draw(now, done)
            if self.live and now >= next_line and not self.quiet:
                next_line = now + self.stats_every_s
                states = {k: str(c.get("state", "up")) for k, c in self.source_stats().items()}
                for line in window_lines(self.board.window.figures(), states):
                    self.bar.line(line)
                post = self.post_stats()
                if post is not None and (sinks := sinks_line(post.extra.get("sinks"))):
                    self.bar.line(sinks)

    def act(self, actions: list[Action]) -> bool:
        """Carry out the watchdog's verdicts; True when the run must end (a file run's stage
        died, or a live run's stage died too often to go on)."""
        failed = False
        for a in actions:
            p = self.procs[a.stage]
            if a.kind == KILL:
                log.warning("%s %s: killing it", a.stage, a.reason)
                p.signal(signal.SIGKILL)
            elif a.kind == FAIL:
                self.errors.append(
                    f"{a.stage} {a.reason}: the run stopped; outputs hold what was done"
                )
                log.error("%s %s: stopping the run", a.stage, a.reason)
                failed = True
            elif a.kind == RESTART:
                n = self.watch.restarts[a.stage]
                log.warning("%s %s: restarting it (restart %d)", a.stage, a.reason, n)
                self.tally.restarted(a.stage)
                self.start(self.next_life(p.spec))
        return failed

    def next_life(self, spec: ProcessSpec) -> ProcessSpec:
        """A dead process's next life (plan.restart) from what the run knows now."""
        prev = self.tally.get(spec.name)
        stream = getattr(spec.args, "stream", None)
        frames_in = prev.counters.get(stream, {}).get("in", 0) if prev and stream else 0
        ended = [
            p.spec.args.stream  # type: ignore[union-attr]
            for p in self.procs.values()
            if p.stage == "source" and self.ended(p.name)
        ]
        return planning.restart(
            spec,
            frames_in=frames_in,
            ended_sources=len(ended),
            first_pts=time.time() - self.epoch,
            ended_streams=ended,
        )

    def shutdown(self, *, prompt: bool) -> None:
        """Let stages finish (they close their files), then terminate, then kill: no orphans.

        Sources are stopped at once (the ones that ended wait for it). `prompt` (stopped by the
        user, or a stage failed): every other stage too, after the sources, so that nothing new
        enters while the others close their outputs."""
        order = sorted(
            self.procs.values(), key=lambda p: (p.stage != "source", p.stage == "postprocess")
        )
        for p in order:  # not forked yet: never will be (SIGTERM: as a worker stopped)
            if isinstance(p.popen, Pending) and p.popen.proc is None:
                p.popen.terminate()
        for p in order:
            if p.popen.poll() is None and (prompt or p.stage in _IDLERS):
                p.signal(signal.SIGTERM)
        grace = 10.0 if prompt else 5.0
        deadline = time.monotonic() + grace
        for sig_deadline, sig in ((deadline, signal.SIGTERM), (deadline + 5.0, signal.SIGKILL)):
            while time.monotonic() < sig_deadline and any(p.popen.poll() is None for p in order):
                if self.stop.requested > 1:  # a second Ctrl-C / SIGTERM: stop waiting
                    break
                self.absorb(50)
            for p in order:
                if p.popen.poll() is None:
                    p.signal(sig)
        for p in order:
            try:
                p.code = p.popen.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.code = p.popen.wait()
        # the last reports (stages send a final one on their way out; a killed one never does)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline and not all(self.watch.said_final(p.name) for p in order):
            self.absorb(50)

    def drop_empty_parts(self) -> None:
        """Remove the empty files of postprocess lives that died before writing anything (a
        full disk: each new life opens NAME.partN.EXT, then dies at its first write)."""
        for name in self.plan.postprocess:
            self._drop_empty_parts(name)

    def _drop_empty_parts(self, name: str) -> None:
        spec = self.specs.get(name)
        args = spec.args if spec is not None else None
        if not isinstance(args, PostprocessArgs) or not args.part:
            return
        n_streams = sum(1 for p in self.plan.processes if isinstance(p.args, SourceArgs))
        streams = args.own_streams or [
            p.args.stream for p in self.plan.processes if isinstance(p.args, SourceArgs)
        ]
        for part in range(1, args.part + 1):
            for template in (args.video, args.results):
                for stream in streams if template else ():
                    path = output_path(part_path(template, part), stream, n_streams)
                    try:
                        if path.stat().st_size == 0:
                            path.unlink()
                    except OSError:
                        pass

    def report(self, interrupted: bool) -> RunReport:
        elapsed = time.monotonic() - self.t0
        stats = _stage_stats(self.tally, self.post_stats())
        sources = self.source_stats()
        report = RunReport(
            exit_code=0,
            elapsed_s=elapsed,
            startup_s=self.t_ready - self.t0 if self.ready else elapsed,
            sources=sources,
            inference=stats["inference"].counters if "inference" in stats else {},
            postprocess=stats["postprocess"].counters if "postprocess" in stats else {},
            busy_s={
                **{k: v.busy_s for k, v in stats.items()},
                "source": sum(c.get("busy_s", 0.0) for c in sources.values()),
            },
            extra={
                **{k: v.figures() for k, v in stats.items()},
                **{  # each worker's own figures (its model time in busy_s), for the breakdown
                    name: {**s.figures(), "busy_s": s.busy_s}
                    for name in self.plan.workers
                    if (s := self.tally.get(name)) is not None
                },
                **{  # each postprocess shard's own figures, when there are several
                    name: {**s.figures(), "busy_s": s.busy_s}
                    for name in self.plan.postprocess
                    if len(self.plan.postprocess) > 1 and (s := self.tally.get(name)) is not None
                },
            },
            restarts=dict(self.watch.restarts),
        )
        report.errors.extend(self.errors)
        # A worker stopped at the end holds nothing: the dispatcher accounts for every frame.
        stopped = (130, -signal.SIGTERM)
        codes = {
            p.name: p.code
            for p in self.procs.values()
            if p.stage != "worker" or p.code not in stopped
        }
        report.exit_code = exit_code(
            codes, report, live=self.live, interrupted=interrupted, failed=self.failed
        )
        if self.stop.signals:
            report.errors.insert(0, f"stopped by {self.stop.signals[0]}")
        if self.live:
            report.stream_lines = stream_lines(sources, stats, elapsed)
        return report

    # -- what the run sees --

    def absorb(self, timeout_ms: float) -> set[str]:
        """Take every report waiting (waiting up to `timeout_ms` for the first); the names of
        the processes that said they are ready."""
        ready = set()
        msg = self.receiver.recv(timeout_ms)
        while msg is not None:
            if isinstance(msg, Stats):
                name = msg.sender
                self.watch.seen(name, time.monotonic(), ready=msg.ready, final=msg.final)
                if msg.ready:
                    ready.add(name)
                if msg.heartbeat:
                    self.busy[name] = msg.busy
                else:
                    self.tally.update(name, msg)
            msg = self.receiver.recv(0)
        return ready

    def look(self) -> bool:
        """Note the processes that exited, and the progress of those starting (CPU time used:
        imports run before a stage can report). True when one exited."""
        now = time.monotonic()
        exited = False
        for p in self.procs.values():
            if p.code is not None:
                continue
            if (code := p.popen.poll()) is not None:
                p.code = code
                exited = True
                self.busy.pop(p.name, None)
                self.watch.exited(p.name, code, now)
            elif self.watch.problem(p.name) == "starting":
                pid = p.popen.pid
                ticks = cpu_ticks(pid) if pid is not None else None
                if pid is None or (ticks is not None and ticks >= 0 and ticks != p.cpu):
                    self.watch.progress(p.name, now)  # (being forked: the server's deadlines)
                p.cpu = ticks
        return exited

    def _say_pause(self) -> None:
        while self._pauses < len(self.watch.paused):
            _, gap = self.watch.paused[self._pauses]
            self._pauses += 1
            if gap >= self.watch.hang_s:
                log.info(
                    "the supervisor itself was stopped or starved for %.1f s: every stage gets "
                    "a fresh %g s before it is judged",
                    gap,
                    self.watch.hang_s,
                )

    def ended(self, name: str) -> bool:
        """The source `name` sent its end-of-stream (it then waits to be stopped, or exited)."""
        p = self.procs.get(name)
        if p is None:
            return False
        last = self.tally.latest.get(name)
        return p.code in (0, 2, 3) or bool(last is not None and last.ended)

    def post_stats(self) -> Stats | None:
        """The postprocess stage's report over all its lives, its shards' added up."""
        shards = [s for name in self.plan.postprocess if (s := self.tally.get(name))]
        return merge_shards(shards)

    def frames_done(self) -> int:
        post = self.post_stats()
        return sum(c.get("out", 0) for c in post.counters.values()) if post else 0

    def source_stats(self) -> dict[str, dict[str, Any]]:
        """Per stream: its source's counters over all its lives, its figures, and its state."""
        out: dict[str, dict[str, Any]] = {}
        for spec in self.plan.processes:
            if spec.stage != "source" or (msg := self.tally.get(spec.name)) is None:
                continue
            stream = spec.args.stream  # type: ignore[union-attr]
            counts = add_counts({}, msg.counters.get(stream, {}))
            out[stream] = {**counts, **{k: v for k, v in msg.figures().items() if k != "name"}}
            out[stream]["busy_s"] = msg.busy_s
            if self.watch.down(spec.name):
                out[stream]["state"] = "source restarting"
        return out

    def draw(self, now: float, done: int) -> None:
        """The progress bar, and the board the page, /metrics and /healthz read."""
        sources = self.source_stats()
        expected = [c.get("frames_expected") for c in sources.values()]
        n = sum(1 for p in self.plan.processes if p.stage == "source")
        if expected and all(expected) and len(expected) == n:
            self.bar.total = int(sum(expected))
        self.bar.update(done - self.bar.done)
        self.board.update(
            now,
            stages={name: self.watch.problem(name, now) for name in self.procs},
            reports={  # postprocess as one stage, its shards added up (no frame counted twice)
                **{
                    name: r
                    for name in self.tally.names()
                    if name not in self.plan.postprocess and (r := self.tally.get(name))
                },
                **({"postprocess": post} if (post := self.post_stats()) else {}),
            },
            sources=sources,
            restarts=self.watch.restarts,
        )


def _stage_stats(tally: Tally, post: Stats | None) -> dict[str, Stats]:
    """inference and postprocess's reports (`post`: postprocess's, its shards added up)."""
    out = {k: s for k in ("inference",) if (s := tally.get(k)) is not None}
    if post is not None:
        out["postprocess"] = post
    workers = [s for n in tally.names() if n.startswith("inference[") and (s := tally.get(n))]
    if "inference" in out and workers:  # the dispatcher's accounting, the workers' model time
        out["inference"] = replace(out["inference"], busy_s=sum(w.busy_s for w in workers))
    return out


def _install_signal_handlers(stop: _Stop) -> Any:
    """Ctrl-C and SIGTERM ask the run to stop (the loop notices within 0.2 s); restores the
    previous handlers when called. Only the main thread can set handlers: elsewhere, none."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        stop.requested += 1
        stop.signals.append(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


__all__ = ["run", "describe_exit"]
