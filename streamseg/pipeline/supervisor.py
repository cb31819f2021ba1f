"""Runs a pipeline: starts every stage as its own process, watches them, reports, cleans up.

The supervisor never touches frames and imports no stage code (no PyAV, no torch): it binds the
stats endpoint, where stages report their counters and a heartbeat, draws the progress bar and
periodic stats lines from them, and acts on `watchdog.StageWatch`'s verdicts: a hung stage is
killed; a dead one ends a file run at once (exit 1, the others finish their files) and is
restarted in a live run. At the end it hands the counters to `report` for the exit code and
summary. SIGTERM stops a run exactly as Ctrl-C does; a second one stops it at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from streamseg import threads
from streamseg.config import ModelConfig, to_dict
from streamseg.pipeline.forkserver import Forked, ForkServer, make_subreaper
from streamseg.pipeline.progress import Progress
from streamseg.pipeline.report import RunReport, Tally, add_counts, exit_code, stream_lines
from streamseg.pipeline.scaleout import inference_processes, worker_names
from streamseg.pipeline.spec import WORK_ENDPOINT, Pipeline, resolve_workers
from streamseg.pipeline.watchdog import FAIL, KILL, RESTART, StageWatch, describe_exit
from streamseg.serve.board import Board
from streamseg.serve.http import WebServer
from streamseg.serve.views import PreviewHub
from streamseg.serve.window import window_lines
from streamseg.source.spec import SourceSpec
from streamseg.stage import SUPERVISOR_ENV
from streamseg.stage.trust import ENV as TOKENS_ENV
from streamseg.stage.trust import Tokens, from_stages, new_token, source_name
from streamseg.wire import transport
from streamseg.wire.curve import link_security
from streamseg.wire.protocol import Stats

log = logging.getLogger("streamseg")

DRAIN_S = {False: 30.0, True: 5.0}
"""After every source ended, how long (file runs, live runs) the other stages may go without
finishing a frame before the run stops waiting for them: a stage restarted in a live run can
miss an end-of-stream that was in flight when its last life died."""


FORKED = ("worker",)
"""Stages forked from the run's fork server (CPU runs with several workers): each would
otherwise import torch on its own (streamseg.pipeline.forkserver)."""

_IDLERS = ("source", "worker")
"""Stages that wait, once their work is done, to be stopped (sources that ended; workers of
a dispatcher that finished, or restarted after it did): stopped at once at the end."""


@dataclass
class _Proc:
    name: str
    stage: str
    kwargs: dict[str, Any]
    popen: subprocess.Popen | Forked
    code: int | None = None


@dataclass
class _Stop:
    """Set from the signal handlers; read by the supervisor's loop."""

    requested: int = 0
    signals: list[str] = field(default_factory=list)


def _spawn(
    stage: str,
    kwargs: dict[str, Any],
    name: str,
    tokens: Tokens,
    forks: ForkServer | None = None,
    give_up: Callable[[], bool] = lambda: False,
    asked: float | None = None,
) -> _Proc:
    # Tokens go in the environment: a command line is visible to every local user.
    if forks is not None and stage in FORKED:
        env = {TOKENS_ENV: tokens.to_env(), SUPERVISOR_ENV: str(os.getpid())}
        forked = forks.spawn(stage, kwargs, env, give_up=give_up, asked=asked)
        if forked is not None:
            return _Proc(name, stage, kwargs, forked)
    cmd = [sys.executable, "-m", "streamseg.stage", stage, json.dumps(kwargs)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{TOKENS_ENV: tokens.to_env()})
    env[SUPERVISOR_ENV] = str(os.getpid())  # the stage exits if it outlived us (die_with_parent)
    # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops the stages in
    # order (SIGTERM) instead of each one being interrupted wherever it happens to be.
    popen = subprocess.Popen(cmd, env=env, start_new_session=True)
    return _Proc(name, stage, kwargs, popen)


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
) -> RunReport:
    """Run the pipeline over `sources` until every stream ended, a stage failed (file runs) or
    the user stopped it (Ctrl-C, SIGTERM); never leaves a stage process behind.
    `serve`: a bound web server (serve.http.bind) to serve the run's page, live views,
    /metrics and /healthz from, while it runs."""
    pipeline = resolve_workers(pipeline, model.device)
    rundir = tempfile.mkdtemp(prefix="streamseg-")
    ep = {k: v.replace("{run}", rundir) for k, v in pipeline.endpoints.items()}
    publish = publish if publish is not None else (pipeline.publish or None)
    keys = pipeline.keys or None
    stats_sock = transport.pull(
        ep["stats"], bind=True, hwm=1000, security=link_security(keys, ep["stats"], bind=True)
    )
    workers = worker_names(pipeline)  # several: "inference" is their dispatcher
    names = ["postprocess", "inference", *(source_name(s.stream) for s in sources), *workers]
    tokens = {name: new_token() for name in names}
    receiver = transport.Receiver(stats_sock, name="supervisor", accept=from_stages(tokens))
    live = pipeline.live
    n = len(sources)
    common = {"stats_endpoint": ep["stats"], "verbose": verbose, "link_keys": keys}
    stop = _Stop()
    restore = _install_signal_handlers(stop)
    watch = StageWatch(live=live, hang_s=pipeline.hang_s)
    watch.spares.update(workers)  # a lost worker's frames go to the others: the run goes on
    tally = Tally()
    procs: dict[str, _Proc] = {}
    errors: list[str] = []
    t0, epoch = time.monotonic(), time.time()
    # what the stats lines and --serve show: figures of the last stats_every_s, health
    stall_s = float((live_options or {}).get("stall_s") or 5.0)
    board = Board(live=live, stall_s=stall_s, span_s=stats_every_s)
    preview_ep = ep.get("preview", f"ipc://{rundir}/preview")
    hub = None
    if serve is not None:
        hub = PreviewHub(
            preview_ep,
            security=link_security(keys, preview_ep, bind=False),
            expect_auth=tokens["postprocess"],
        )
        hub.start()
        serve.start(board, hub)

    # how the stages share the cores (streamseg.threads): resolved here, for every process
    budget = threads.plan(
        model.threads,
        cores=threads.usable_cores(),
        cuda=threads.is_cuda(model.device),
        workers=max(1, len(workers)),
    )

    def start(stage: str, name: str, kwargs: dict[str, Any], asked: float | None = None) -> None:
        if stage == "inference" and workers:  # a dispatcher, then the workers
            work = ep.get("work", WORK_ENDPOINT.replace("{run}", rundir))
            asked = time.time()  # all at once, though forking the first waits for the server
            for each in inference_processes(kwargs, pipeline, work_endpoint=work):
                start(*each, asked=asked)
            return
        senders = {
            "inference": names[2:],
            "dispatcher": names[2:],  # sources' frames, workers' credits
            "worker": ["inference"],
            "postprocess": ["inference", *workers],
        }.get(stage, [])
        own = Tokens(tokens[name], {peer: tokens[peer] for peer in senders})
        procs[name] = _spawn(
            stage,
            {**common, **kwargs},
            name,
            own,
            forks,
            give_up=lambda: stop.requested > 0,
            asked=asked,
        )
        watch.started(name, time.monotonic())

    # first, so that its imports (the longest part of start-up) overlap everything else
    forks, unreap = _fork_server(len(workers), model.device)
    start(
        "postprocess",
        "postprocess",
        {
            "detections_endpoint": ep["detections"],
            "streams": n,
            "mask_threshold": model.mask_threshold,
            "mask_nms": model.mask_nms,
            "mask_nms_cross_label": model.mask_nms_cross_label,
            "score_threshold": model.score_threshold,
            "label_names": list(model.labels),
            "video": video,
            "results": results,
            "publish": publish,
            "publish_keys": publish_keys,
            "n_outputs": n,
            "track": pipeline.track,
            "track_max_missed": pipeline.track_max_missed,
            "live": live,
            "preview_endpoint": preview_ep if serve is not None else None,
            "encoder_threads": budget.encoder,
        },
    )
    start(
        "inference",
        "inference",
        {
            "model": {**to_dict(model), "threads": budget.model},
            "frames_endpoint": ep["frames"],
            "detections_endpoint": ep["detections"],
            "streams": n,
            "live": live,
            "depth": pipeline.depth,
            "forward_images": bool(video) or serve is not None,
        },
    )
    source_names = {spec.stream: source_name(spec.stream) for spec in sources}
    bar = Progress(None, unit="frames", enabled=None if not quiet else False)
    ready = failed = False
    t_ready = t0
    try:
        # Sources start once inference and postprocess are bound and loaded, so that no frame
        # (and no end-of-stream of a source that fails at once) waits on an absent peer.
        ready = _wait_ready(receiver, procs, watch, tally, stop)
        t_ready = time.monotonic()
        if ready:
            for spec in sources:
                start(
                    "source",
                    source_names[spec.stream],
                    {
                        "source": spec.url,
                        "stream": spec.stream,
                        "kind": spec.kind,
                        "frames_endpoint": ep["frames"],
                        "live": live,
                        "realtime": pipeline.realtime,
                        "hwdecode": pipeline.hwdecode,
                        "stay": True,
                        "decode_threads": budget.decoder,
                        **(live_options or {}),
                    },
                )
        next_line = t0 + stats_every_s
        drain = _Drain(DRAIN_S[live])
        while ready and not stop.requested:
            now = time.monotonic()
            _absorb_all(receiver, tally, watch, 200)
            for p in procs.values():
                if p.code is None and (code := p.popen.poll()) is not None:
                    p.code = code
                    watch.exited(p.name, code, time.monotonic())
            actions = watch.check(time.monotonic())
            if _act(actions, procs, tally, watch, start, errors, epoch):
                failed = True
                break
            working = [p for p in procs.values() if p.stage not in _IDLERS]
            if all(p.code is not None for p in working) and not any(
                watch.down(name) for name in procs
            ):
                break  # the end: sources that ended wait to be stopped (see source.main)
            post = tally.get("postprocess")
            done = sum(c.get("out", 0) for c in post.counters.values()) if post else 0
            ended = all(_ended(procs.get(name), tally) for name in source_names.values())
            if drain.stuck(ended, done, now):
                why = f"every source ended, but no frame was finished for {drain.wait_s:g} s"
                if not live:  # a file run's stages must finish: something is wrong
                    errors.append(f"{why}: stopped waiting")
                    failed = True
                else:  # an end-of-stream lost with a stage that died: nothing more will come
                    log.warning("%s: stopping", why)
                    stop.requested = 1
                break
            source_stats = _source_stats(tally, source_names, watch)
            expected = [c.get("frames_expected") for c in source_stats.values()]
            if expected and all(expected) and len(expected) == n:
                bar.total = int(sum(expected))
            bar.update(done - bar.done)
            board.update(
                now,
                stages={name: watch.problem(name) for name in procs},
                reports={name: r for name in tally.names() if (r := tally.get(name))},
                sources=source_stats,
                restarts=watch.restarts,
            )
            if live and now >= next_line and not quiet:
                next_line = now + stats_every_s
                states = {k: str(c.get("state", "up")) for k, c in source_stats.items()}
                for line in window_lines(board.window.figures(), states):
                    bar.line(line)
        if not ready and not stop.requested:
            for p in procs.values():  # (2: bad settings, and the stage said so; exit code 2)
                if (code := p.popen.poll()) is not None and code != 2:
                    errors.append(f"{p.name} {describe_exit(code)} while starting")
                    failed = True
    finally:
        interrupted = bool(stop.requested)
        _shutdown(procs, watch, tally, receiver, stop, prompt=interrupted or failed or not ready)
        bar.close()
        if serve is not None:
            serve.close()
        if hub is not None:
            hub.close()
        transport.close_all(abort=True)
        shutil.rmtree(rundir, ignore_errors=True)
        if forks is not None:
            forks.close()
        if unreap is not None:
            unreap()
        restore()
    elapsed = time.monotonic() - t0
    stats = _stage_stats(tally)
    source_stats = _source_stats(tally, source_names, watch)
    report = RunReport(
        exit_code=0,
        elapsed_s=elapsed,
        startup_s=t_ready - t0 if ready else elapsed,
        sources=source_stats,
        inference=stats["inference"].counters if "inference" in stats else {},
        postprocess=stats["postprocess"].counters if "postprocess" in stats else {},
        busy_s={
            **{k: v.busy_s for k, v in stats.items()},
            "source": sum(c.get("busy_s", 0.0) for c in source_stats.values()),
        },
        extra={
            **{k: v.figures() for k, v in stats.items()},
            **{  # each worker's own figures (its model time in busy_s), for the breakdown
                name: {**s.figures(), "busy_s": s.busy_s}
                for name in workers
                if (s := tally.get(name)) is not None
            },
        },
        restarts=dict(watch.restarts),
    )
    report.errors.extend(errors)
    # A worker stopped at the end holds nothing: the dispatcher accounts for every frame.
    stopped = (130, -signal.SIGTERM)
    codes = {p.name: p.code for p in procs.values() if p.stage != "worker" or p.code not in stopped}
    report.exit_code = exit_code(codes, report, live=live, interrupted=interrupted, failed=failed)
    if stop.signals:
        report.errors.insert(0, f"stopped by {stop.signals[0]}")
    if live:
        report.stream_lines = stream_lines(source_stats, stats, elapsed)
    return report


def _fork_server(workers: int, device: str) -> tuple[ForkServer | None, Callable[[], None] | None]:
    """A fork server for the run's inference workers, where it saves start-up: several
    workers, on CPU (a GPU driver must not be initialised in a process that forks)."""
    if workers < 2 or threads.is_cuda(device):
        return None, None
    unreap = make_subreaper()
    if unreap is None:
        return None, None
    forks = ForkServer.start(preload=["streamseg.inference.worker"])
    if forks is None:
        unreap()
        return None, None
    return forks, unreap


class _Drain:
    """Notices stages that will never finish once every source has ended."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.done = -1
        self.since = 0.0

    def stuck(self, ended: bool, done: int, now: float) -> bool:
        """ended: every source has sent its end-of-stream; done: frames finished so far."""
        if not ended:
            self.done = -1
            return False
        if done != self.done:
            self.done, self.since = done, now
            return False
        return now - self.since >= self.wait_s


def _act(
    actions: list[Any],
    procs: dict[str, _Proc],
    tally: Tally,
    watch: StageWatch,
    start: Any,
    errors: list[str],
    epoch: float,
) -> bool:
    """Carry out the watchdog's verdicts; True when the run must end (a file run's stage died)."""
    failed = False
    for a in actions:
        p = procs[a.stage]
        if a.kind == KILL:
            log.warning("%s %s: killing it", a.stage, a.reason)
            _signal(p, signal.SIGKILL)
        elif a.kind == FAIL:
            errors.append(f"{a.stage} {a.reason}: the run stopped; outputs hold what was done")
            log.error("%s %s: stopping the run", a.stage, a.reason)
            failed = True
        elif a.kind == RESTART:
            log.warning(
                "%s %s: restarting it (restart %d)", a.stage, a.reason, watch.restarts[a.stage]
            )
            tally.restarted(a.stage)
            start(p.stage, a.stage, _restart_kwargs(p, procs, tally, epoch))
    return failed


def _ended(p: _Proc | None, tally: Tally) -> bool:
    """The source `p` sent its end-of-stream (it then waits to be stopped, or has exited)."""
    if p is None:
        return False
    last = tally.latest.get(p.name)
    return p.code in (0, 2, 3) or bool(last is not None and last.ended)


def _restart_kwargs(
    p: _Proc, procs: dict[str, _Proc], tally: Tally, epoch: float
) -> dict[str, Any]:
    """A dead stage's arguments for its next life."""
    kwargs = {k: v for k, v in p.kwargs.items() if k not in ("stats_endpoint", "verbose")}
    ended = sum(1 for q in procs.values() if q.stage == "source" and _ended(q, tally))
    if p.stage == "source":
        # Frame numbers go on from where the last life got to (and well past what it may have
        # decoded after its last report), so a stream's frame numbers never repeat.
        prev = tally.get(p.name)
        count = prev.counters.get(kwargs["stream"], {}).get("in", 0) if prev else 0
        kwargs["first_frame"] = int(kwargs.get("first_frame", 0)) + count + 1000
        kwargs["first_pts"] = time.time() - epoch
    else:
        if "streams" in kwargs:  # (inference workers have none)
            kwargs["streams"] = max(1, int(kwargs["streams"]) - ended) if kwargs["streams"] else 0
        kwargs["restarted"] = True
    if p.stage == "postprocess":
        kwargs["part"] = int(kwargs.get("part", 0)) + 1
    return kwargs


def _absorb_all(
    receiver: transport.Receiver, tally: Tally, watch: StageWatch, timeout_ms: float
) -> set[str]:
    """Take every report waiting (waiting up to `timeout_ms` for the first); the names of the
    stages that said they are ready."""
    ready = set()
    msg = receiver.recv(timeout_ms)
    while msg is not None:
        if isinstance(msg, Stats):
            name = msg.sender
            is_ready = msg.ready
            watch.seen(name, time.monotonic(), ready=is_ready, final=msg.final)
            if is_ready:
                ready.add(name)
            if not msg.heartbeat:
                tally.update(name, msg)
        msg = receiver.recv(0)
    return ready


def _stage_stats(tally: Tally) -> dict[str, Stats]:
    out = {k: s for k in ("inference", "postprocess") if (s := tally.get(k)) is not None}
    workers = [s for n in tally.names() if n.startswith("inference[") and (s := tally.get(n))]
    if "inference" in out and workers:  # the dispatcher's accounting, the workers' model time
        out["inference"] = replace(out["inference"], busy_s=sum(w.busy_s for w in workers))
    return out


def _source_stats(
    tally: Tally, names: dict[str, str], watch: StageWatch
) -> dict[str, dict[str, Any]]:
    """Per stream: its source's counters over all its lives, its figures, and its state."""
    out: dict[str, dict[str, Any]] = {}
    for stream, name in names.items():
        msg = tally.get(name)
        if msg is None:
            continue
        counts = add_counts({}, msg.counters.get(stream, {}))
        out[stream] = {**counts, **{k: v for k, v in msg.figures().items() if k != "name"}}
        out[stream]["busy_s"] = msg.busy_s
        if watch.down(name):
            out[stream]["state"] = "source restarting"
    return out


def _wait_ready(
    receiver: transport.Receiver,
    procs: dict[str, _Proc],
    watch: StageWatch,
    tally: Tally,
    stop: _Stop,
) -> bool:
    """Wait until every started stage said it is ready; False when one exited or hung first,
    or the user stopped the run."""
    waiting = set(procs)
    while waiting and not stop.requested:
        waiting -= _absorb_all(receiver, tally, watch, 200)
        for p in procs.values():
            if p.popen.poll() is not None:
                return False
        for a in watch.check(time.monotonic()):
            if a.kind == KILL:
                log.warning("%s %s: killing it", a.stage, a.reason)
                _signal(procs[a.stage], signal.SIGKILL)
    return not waiting


def _signal(p: _Proc, sig: int) -> None:
    try:
        p.popen.send_signal(sig)
    except ProcessLookupError:
        pass


def _shutdown(
    procs: dict[str, _Proc],
    watch: StageWatch,
    tally: Tally,
    receiver: transport.Receiver,
    stop: _Stop,
    *,
    prompt: bool,
) -> None:
    """Let stages finish (they close their files), then terminate, then kill: no orphans.

    Sources are stopped at once (the ones that ended wait for it). `prompt` (stopped by the
    user, or a stage failed): every other stage too, after the sources, so that nothing new
    enters while the others close their outputs."""
    order = sorted(procs.values(), key=lambda p: (p.stage != "source", p.stage == "postprocess"))
    for p in order:
        if p.popen.poll() is None and (prompt or p.stage in _IDLERS):
            _signal(p, signal.SIGTERM)
    grace = 10.0 if prompt else 5.0
    deadline = time.monotonic() + grace
    for sig_deadline, sig in ((deadline, signal.SIGTERM), (deadline + 5.0, signal.SIGKILL)):
        while time.monotonic() < sig_deadline and any(p.popen.poll() is None for p in order):
            if stop.requested > 1:  # a second Ctrl-C / SIGTERM: stop waiting
                break
            _absorb_all(receiver, tally, watch, 50)
        for p in order:
            if p.popen.poll() is None:
                _signal(p, sig)
    for p in order:
        try:
            p.code = p.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.code = p.popen.wait()
    # the last reports (stages send a final one on their way out; a killed one never does)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline and not all(watch.said_final(p.name) for p in order):
        _absorb_all(receiver, tally, watch, 50)


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
