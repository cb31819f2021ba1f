"""The stage graph of a run: which processes to start, each with its typed arguments. Pure.

`plan` turns a pipeline file, a model config, sources and outputs into the processes a run
starts (the supervisor starts exactly these); `stage_plan` gives one of them for a stage started
by hand on some host (`streamseg stage NAME`); `restart` gives a dead process's next life;
`describe` prints the graph (`streamseg run X.toml --plan`). Nothing here starts a process,
opens a socket or looks at the machine, except `this_host`, which reads its cores.

    sources ──frames──▶ inference ──detections──▶ postprocess ──▶ results, video, PUB, previews
                        (or a dispatcher ──work──▶ workers ──detections──▶)
    every process ──stats──▶ the supervisor (or `streamseg stage monitor`)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from streamseg import shards, threads
from streamseg.config import ConfigError, ModelConfig
from streamseg.pipeline.spec import WORK_ENDPOINT, Pipeline, resolve_workers
from streamseg.source.spec import SourceSpec
from streamseg.stage.args import (
    DispatcherArgs,
    InferenceArgs,
    PostprocessArgs,
    SourceArgs,
    StageArgs,
    WorkerArgs,
)
from streamseg.stage.trust import source_name

Start = Literal["first", "after_ready"]


@dataclass(frozen=True)
class Outputs:
    """What a run writes, besides its report."""

    video: str | None = None
    """Annotated video (.mp4; {stream} in the name for several inputs)."""
    results: str | None = None
    """Results file (.jsonl)."""
    publish: str | None = None
    """ZeroMQ PUB endpoint, expanded (None: the pipeline file's [postprocess] publish, if any)."""
    publish_keys: dict[str, str] | None = None
    """{"keys": DIR/NAME, "allow": DIR}: the publisher's CURVE key files."""
    preview: bool = False
    """Live views are served (--serve): postprocess sends previews, inference sends pixels."""
    sinks: tuple[str, ...] = ()
    """Broker sinks' URLs (--sink; MQTT, Redis Streams, webhooks: streamseg.sink_urls), checked;
    the pipeline file's [[sinks]] are added to them."""
    rtsp_out: str | None = None
    """[HOST:]PORT: each stream's annotated video as rtsp://HOST:PORT/STREAM (--rtsp-out)."""
    push: str | None = None
    """Where one reader program takes every result (--push; streamseg.Pipeline), waiting for it
    in a file run, dropping what it cannot take in a live run (postprocess.sinks.push)."""
    push_buffer: int = 16
    """Results queued towards that reader."""


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a run."""

    name: str
    """How it reports and is watched: "postprocess", "inference", "inference[I]", "source[ID]"."""
    stage: str
    """Which stage it runs (streamseg.stage.args.STAGES)."""
    args: StageArgs
    senders: tuple[str, ...] = ()
    """The processes whose per-run tokens it accepts (stage.trust): who may send to it."""
    start: Start = "first"
    """"after_ready": started once every "first" process said it is ready (sources: so that no
    frame, and no end-of-stream of a source that fails at once, waits on an absent peer)."""
    forked: bool = False
    """Started from the run's fork server (CPU workers: each would otherwise import torch)."""


@dataclass(frozen=True)
class RunPlan:
    """Every process of a run, in start order, and the endpoints they meet on."""

    processes: tuple[ProcessSpec, ...]
    endpoints: dict[str, str]
    """frames, detections, stats (the supervisor binds it), work, preview, with {run} resolved."""
    workers: tuple[str, ...]
    """The inference workers' names; (): a single inference process."""
    pipeline: Pipeline
    """The pipeline file, workers resolved."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.processes)

    @property
    def postprocess(self) -> tuple[str, ...]:
        """The postprocess processes' names: ("postprocess",), or one per shard."""
        return tuple(p.name for p in self.processes if p.stage == "postprocess")

    def get(self, name: str) -> ProcessSpec:
        return next(p for p in self.processes if p.name == name)


def worker_names(pipeline: Pipeline) -> tuple[str, ...]:
    """The inference workers' names; () for a single inference process (workers = 1)."""
    n = _workers(pipeline)
    return tuple(f"inference[{i}]" for i in range(n)) if n > 1 else ()


def this_host(
    pipeline: Pipeline, model: ModelConfig, *, streams: int = 1
) -> tuple[Pipeline, threads.ThreadPlan, bool]:
    """`pipeline` with its workers resolved, the thread budget and whether the model runs on a
    GPU, for a run of `streams` sources on this host (its cores, its GPU device node): what
    `plan` needs."""
    pipeline = resolve_workers(pipeline, model.device)
    cuda = threads.is_cuda(model.device)
    budget = threads.plan(
        model.threads,
        cores=threads.usable_cores(),
        cuda=cuda,
        workers=max(1, len(worker_names(pipeline))),
        streams=streams,
    )
    return pipeline, budget, cuda


def plan(
    pipeline: Pipeline,
    model: ModelConfig,
    sources: Sequence[SourceSpec],
    outputs: Outputs,
    *,
    rundir: str,
    budget: threads.ThreadPlan,
    cuda: bool,
    live_options: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> RunPlan:
    """The processes of a supervised run on this host, in start order: postprocess first (its
    imports, the longest start-up, overlap everything else; with `[postprocess] shards` one
    process per shard, each owning some streams: streamseg.shards), inference (or its
    dispatcher and workers), then the sources, after the others are ready.

    pipeline: workers resolved (this_host); rundir: the run's private folder ({run} in the
    endpoints); budget: threads per process (streamseg.threads); cuda: the model runs on a GPU
    (no fork server then: a GPU driver must not be initialised in a process that forks);
    live_options: stall_s, retry_max_s, give_up_s of live sources."""
    ep = {k: v.replace("{run}", rundir) for k, v in pipeline.endpoints.items()}
    ep.setdefault("work", WORK_ENDPOINT.replace("{run}", rundir))
    ep.setdefault("preview", f"ipc://{rundir}/preview")
    links = {"stats_endpoint": ep["stats"], "verbose": verbose, "link_keys": pipeline.keys or None}
    workers = worker_names(pipeline)
    n = len(sources)
    names = {s.stream: source_name(s.stream) for s in sources}
    post = _postprocess(
        pipeline,
        model,
        links,
        ep,
        streams=n,
        outputs=outputs,
        encoder_threads=budget.encoder,
        preview_endpoint=ep["preview"] if outputs.preview else None,
    )
    posts, routes = _shards(pipeline, post, [s.stream for s in sources], cuda=cuda, budget=budget)
    inference = _inference(
        pipeline,
        model,
        links,
        ep,
        streams=n,
        model_threads=budget.model,
        forward_images=bool(outputs.video or outputs.rtsp_out) or outputs.preview,
    )
    # who may send to whom (stage.trust): frames from the sources (and a dispatcher's workers'
    # credits), detections from inference or its workers
    to_inference = (*names.values(), *workers)
    procs = [
        ProcessSpec(args.name, "postprocess", args, senders=("inference", *workers))
        for args in posts
    ]
    for name, stage, args in inference:
        if routes:  # several postprocess processes: each stream's results to its own
            args = replace(args, **routes)  # type: ignore[arg-type]
        senders = ("inference",) if stage == "worker" else to_inference
        forked = stage == "worker" and len(workers) > 1 and not cuda
        procs.append(ProcessSpec(name, stage, args, senders=senders, forked=forked))
    for spec in sources:
        args = _source(
            pipeline,
            links,
            ep,
            spec,
            stay=True,  # the supervisor stops it once its end-of-stream went through
            decode_threads=budget.decoder,
            live_options=live_options or {},
        )
        procs.append(ProcessSpec(names[spec.stream], "source", args, start="after_ready"))
    return RunPlan(tuple(procs), ep, workers, pipeline)


def stage_plan(
    name: str,
    pipeline: Pipeline,
    model: ModelConfig | None,
    *,
    source: SourceSpec | None = None,
    streams: int = 1,
    worker: int = 0,
    video: str | None = None,
    results: str | None = None,
    publish: str | None = None,
    verbose: bool = False,
) -> ProcessSpec:
    """The process of stage `name` ("source", "inference", "worker", "postprocess") of
    `pipeline`, started by hand on some host (`streamseg stage NAME`). `source`: the source
    stage's input; `worker`: which worker; `streams`: how many end-of-streams end the run (0:
    live, never). ConfigError for what the file cannot give a lone stage.

    Built by the functions `plan` uses; where a stage started by hand differs, on purpose:
    - no senders: no supervisor made per-run tokens; the [security] keys keep strangers out;
    - it reports to the file's stats endpoint only where that is tcp:// (a `monitor` there);
    - no thread budget (nothing knows what else runs on its host): decode and encode threads
      are the libraries' defaults, and the model's "auto" threads are resolved in the process;
    - inference always sends pixels (postprocess, on another host, may render), and there are
      no live views (no supervisor serves them) nor publisher keys;
    - a source exits after its end-of-stream (no supervisor stops it) with the default live
      options;
    - one postprocess on the detections endpoint (`[postprocess] shards` is for supervised
      runs, where the plan gives every shard its streams and endpoint).
    """
    if type(pipeline.workers) is not int:  # "auto": each host would count its own cores
        if name in ("inference", "worker"):
            raise ConfigError(
                f"{pipeline.path}: [inference] workers = {pipeline.workers!r}: stages started by "
                "hand need a number there, the same on every host (1: no dispatcher, no workers)"
            )
        pipeline = replace(pipeline, workers=1)  # the other stages do not depend on it
    ep = dict(pipeline.endpoints)
    ep.setdefault("work", WORK_ENDPOINT)
    workers = _workers(pipeline)
    need = {
        "source": ("frames",),
        "inference": ("frames", "detections") + (("work",) if workers > 1 else ()),
        "worker": ("work", "detections"),
        "postprocess": ("detections",),
    }[name]
    local = [f"{k} = {ep[k]}" for k in need if "{run}" in ep[k]]
    if local:
        raise ConfigError(
            f"{pipeline.path}: {', '.join(local)} is private to one supervised run; a stage run "
            "by itself needs tcp://HOST:PORT (or an ipc:// path) endpoints"
        )
    stats = ep["stats"] if ep["stats"].startswith("tcp://") else None
    links = {"stats_endpoint": stats, "verbose": verbose, "link_keys": pipeline.keys or None}
    if name == "source":
        if source is None:
            raise ConfigError("streamseg stage source: give the INPUT (a file or URL)")
        args = _source(pipeline, links, ep, source, stay=False, decode_threads=0, live_options={})
        return ProcessSpec(source_name(source.stream), "source", args)
    if model is None:
        raise ConfigError(f"streamseg stage {name}: needs a model config")
    if name == "postprocess":
        outputs = Outputs(video=video, results=results, publish=publish)
        args = _postprocess(
            pipeline,
            model,
            links,
            ep,
            streams=streams,
            outputs=outputs,
            encoder_threads=0,
            preview_endpoint=None,
        )
        return ProcessSpec("postprocess", "postprocess", args)
    procs = _inference(
        pipeline,
        model,
        links,
        ep,
        streams=streams,
        model_threads=model.threads,
        forward_images=True,
    )
    if name == "inference":
        return ProcessSpec(*procs[0])
    if workers < 2 or not 0 <= worker < workers:
        raise ConfigError(
            f"{pipeline.path}: worker {worker}: [inference] workers = {workers} "
            "(a worker stage needs workers >= 2, and --worker 0..workers-1)"
        )
    return ProcessSpec(*procs[1 + worker])


def restart(
    spec: ProcessSpec,
    *,
    frames_in: int,
    ended_sources: int,
    first_pts: float,
    ended_streams: Sequence[str] = (),
) -> ProcessSpec:
    """A dead process's next life. frames_in: the frames a source's lives sent so far (its
    last report); ended_sources: sources that sent their end-of-stream (a restarted stage
    waits for the others' only); first_pts: seconds since the run began (a live source's
    timestamps go on from there); ended_streams: those sources' stream ids (a postprocess
    shard waits for the ends of the others of its own streams)."""
    args = spec.args
    if isinstance(args, SourceArgs):
        # Frame numbers go on from where the last life got to (and well past what it may have
        # decoded after its last report), so a stream's frame numbers never repeat.
        first = args.first_frame + frames_in + 1000
        return replace(spec, args=replace(args, first_frame=first, first_pts=first_pts))
    changes: dict[str, Any] = {"restarted": True}
    if isinstance(args, PostprocessArgs) and args.own_streams:
        ended_sources = sum(1 for s in set(ended_streams) if s in args.own_streams)
    if isinstance(args, InferenceArgs | DispatcherArgs | PostprocessArgs) and args.streams:
        changes["streams"] = max(1, args.streams - ended_sources)  # (0: live, stays 0)
    if isinstance(args, PostprocessArgs):
        changes["part"] = args.part + 1  # its outputs go to NAME.partN.EXT
    return replace(spec, args=replace(args, **changes))


def describe(run: RunPlan) -> str:
    """The graph a run would start, one process a line: name, stage, host, what it binds and
    connects, threads, device; for `--plan`."""
    p = run.pipeline
    kind = "live run" if p.live else "file run"
    inference = f"{len(run.workers)} inference workers" if run.workers else "1 inference process"
    n_post = len(run.postprocess)
    post = f", {n_post} postprocess shards" if n_post > 1 else ""
    lines = [f"pipeline {p.path or '(unnamed)'}: {kind}, {inference}{post}"]
    stats = run.endpoints["stats"]
    rows = [
        (
            "supervisor",
            "-",
            _host([stats]),
            f"binds stats {stats} (every process reports there)",
            "",
        )
    ]
    for proc in run.processes:
        binds, connects = _links(proc.args)
        where = "; ".join(
            part
            for part in (
                ", ".join(f"binds {k} {v}" for k, v in binds),
                ", ".join(f"connects {k} {v}" for k, v in connects),
            )
            if part
        )
        notes = [*_resources(proc.args)]
        if proc.start == "after_ready":
            notes.append("starts when the others are ready")
        if proc.forked:
            notes.append("forked")
        rows.append((proc.name, proc.stage, _host([v for _, v in binds]), where, "; ".join(notes)))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(row[:3], width, strict=True))
        lines.append(f"  {head}  {row[3]}" + (f"  ({row[4]})" if row[4] else ""))
    if any("{run}" in v for v in run.endpoints.values()):
        lines.append("  ({run}: the run's own temporary folder, made when it starts)")
    return "\n".join(lines)


# -- the records, built once for `plan` and `stage_plan` --


def _workers(pipeline: Pipeline) -> int:
    if type(pipeline.workers) is not int:
        raise ValueError(f'workers = {pipeline.workers!r}: resolve "auto" first (this_host)')
    return pipeline.workers


def _source(
    pipeline: Pipeline,
    links: dict[str, Any],
    ep: dict[str, str],
    spec: SourceSpec,
    *,
    stay: bool,
    decode_threads: int,
    live_options: Mapping[str, Any],
) -> SourceArgs:
    return SourceArgs(
        **links,
        source=spec.url,
        stream=spec.stream,
        kind=spec.kind,
        frames_endpoint=ep["frames"],
        live=pipeline.live,
        realtime=pipeline.realtime,
        hwdecode=pipeline.hwdecode,
        stay=stay,
        decode_threads=decode_threads,
        **live_options,
    )


def _shards(
    pipeline: Pipeline,
    post: PostprocessArgs,
    streams: Sequence[str],
    *,
    cuda: bool,
    budget: threads.ThreadPlan,
) -> tuple[list[PostprocessArgs], dict[str, Any]]:
    """The postprocess processes of a run (one per shard; `post`: the one of a run without
    shards) and what inference's records need to route to them ({}: one process, as without
    shards). ConfigError when the pipeline's shards cannot be had."""
    single = [
        k
        for k, on in (
            ("publish", post.publish),
            ("push", post.push),
            ("rtsp_out", post.rtsp_out),
        )
        if on
    ]
    try:
        n = shards.count(
            pipeline.shards, cuda=cuda, streams=len(streams), cores=budget.cores, single=single
        )
        endpoints = tuple(shards.endpoint(post.detections_endpoint, i) for i in range(n))
        previews = [  # live views: each shard offers its own streams' (the supervisor reads all)
            shards.endpoint(post.preview_endpoint, i) if post.preview_endpoint else None
            for i in range(n)
        ]
    except ValueError as e:
        raise ConfigError(f"{pipeline.path}: [postprocess] {e}") from None
    if n == 1:
        return [post], {}
    table = shards.assign(streams, n)
    posts = []
    for i, endpoint in enumerate(endpoints):
        own = tuple(s for s in streams if table[s] == i)
        posts.append(
            replace(
                post,
                name=shards.name(i, n),
                detections_endpoint=endpoint,
                preview_endpoint=previews[i],
                own_streams=own,
                streams=len(own) if post.streams else 0,
            )
        )
    return posts, {"shard_endpoints": endpoints, "shard_of": table}


def _postprocess(
    pipeline: Pipeline,
    model: ModelConfig,
    links: dict[str, Any],
    ep: dict[str, str],
    *,
    streams: int,
    outputs: Outputs,
    encoder_threads: int,
    preview_endpoint: str | None,
) -> PostprocessArgs:
    return PostprocessArgs(
        **links,
        detections_endpoint=ep["detections"],
        streams=streams,
        mask_threshold=model.mask_threshold,
        mask_nms=model.mask_nms,
        mask_nms_cross_label=model.mask_nms_cross_label,
        score_threshold=model.score_threshold,
        label_names=tuple(model.labels),
        video=outputs.video,
        results=outputs.results,
        publish=outputs.publish or pipeline.publish or None,
        publish_keys=outputs.publish_keys,
        push=outputs.push,
        push_buffer=outputs.push_buffer,
        n_outputs=max(1, streams),
        track=pipeline.track,
        track_max_missed=pipeline.track_max_missed,
        live=pipeline.live,
        preview_endpoint=preview_endpoint,
        encoder_threads=encoder_threads,
        sinks=(*outputs.sinks, *pipeline.sinks),
        rtsp_out=outputs.rtsp_out,
    )


def _inference(
    pipeline: Pipeline,
    model: ModelConfig,
    links: dict[str, Any],
    ep: dict[str, str],
    *,
    streams: int,
    model_threads: int | str,
    forward_images: bool,
) -> list[tuple[str, str, StageArgs]]:
    """(name, stage, args) of each process that stands for the inference stage. One worker:
    the inference process itself ("inference"). N workers: a dispatcher named "inference" (it
    binds the frames endpoint and reports the stage's accounting), then N workers
    "inference[0]".."inference[N-1]", each on its own device from the pipeline's device list
    (in turn), or sharing the CPU's cores."""
    model = replace(model, threads=model_threads)
    names = worker_names(pipeline)
    if not names:
        single = InferenceArgs(
            **links,
            model=model,
            frames_endpoint=ep["frames"],
            detections_endpoint=ep["detections"],
            streams=streams,
            live=pipeline.live,
            depth=pipeline.depth,
            forward_images=forward_images,
            weights=pipeline.weights,
        )
        return [("inference", "inference", single)]
    dispatcher = DispatcherArgs(
        **links,
        frames_endpoint=ep["frames"],
        work_endpoint=ep["work"],
        detections_endpoint=ep["detections"],
        streams=streams,
        live=pipeline.live,
        depth=pipeline.depth,
        max_batch=model.max_batch,
        max_wait_ms=model.max_wait_ms,
        weights=pipeline.weights,
        lost_s=pipeline.hang_s,
    )
    devices = [pipeline.devices[i % len(pipeline.devices)] if pipeline.devices else model.device
               for i in range(len(names))]  # fmt: skip
    on_cpu = sum(1 for d in devices if not d.startswith("cuda"))  # "auto" may be the CPU
    out: list[tuple[str, str, StageArgs]] = [("inference", "dispatcher", dispatcher)]
    for name, device in zip(names, devices, strict=True):
        args = WorkerArgs(
            **links,
            model=replace(model, device=device),
            name=name,
            work_endpoint=ep["work"],
            detections_endpoint=ep["detections"],
            forward_images=forward_images,
            share_cpu=max(1, on_cpu),
        )
        out.append((name, "worker", args))
    return out


# -- describe --


def _links(args: StageArgs) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(what it binds, what it connects), as (endpoint name, endpoint); every process also
    connects to its stats endpoint, where the supervisor (or a monitor) binds."""
    binds: list[tuple[str, str | None]] = []
    connects: list[tuple[str, str | None]] = []
    if isinstance(args, SourceArgs):
        connects = [("frames", args.frames_endpoint)]
    elif isinstance(args, InferenceArgs | DispatcherArgs | WorkerArgs):
        # several postprocess shards: one detections link to each
        detections = [("detections", e) for e in args.shard_endpoints or [args.detections_endpoint]]
        if isinstance(args, InferenceArgs):
            binds = [("frames", args.frames_endpoint)]
        elif isinstance(args, DispatcherArgs):
            binds = [("frames", args.frames_endpoint), ("work", args.work_endpoint)]
        else:
            connects = [("work", args.work_endpoint)]
        connects += detections
    else:
        binds = [
            ("detections", args.detections_endpoint),
            ("publish", args.publish),
            ("preview", args.preview_endpoint),
        ]
    return [(k, v) for k, v in binds if v], [(k, v) for k, v in connects if v]


def _resources(args: StageArgs) -> list[str]:
    """Threads and device, as a person reads them."""
    if isinstance(args, SourceArgs):
        return [f"decode threads {args.decode_threads or 'default'}"]
    if isinstance(args, InferenceArgs | WorkerArgs):
        return [f"model threads {args.model.threads or 'default'}", f"device {args.model.device}"]
    if isinstance(args, PostprocessArgs):
        owns = [f"streams {', '.join(args.own_streams)}"] if args.own_streams else []
        return [*owns, f"encoder threads {args.encoder_threads or 'default'}"]
    return []


def _host(bound: list[str]) -> str:
    """Where a process runs: the host of a tcp endpoint it binds to a named interface; else
    this host (a supervised run starts every process here)."""
    for endpoint in bound:
        if endpoint.startswith("tcp://"):
            host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
            if host not in ("*", "0.0.0.0", "::", "127.0.0.1", "localhost", "::1"):
                return host
    return "this host"


__all__ = [
    "Outputs",
    "ProcessSpec",
    "RunPlan",
    "describe",
    "plan",
    "restart",
    "stage_plan",
    "this_host",
    "worker_names",
]
