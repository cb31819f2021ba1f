"""`streamseg stage NAME --pipeline X.toml`: one stage of a pipeline file, by itself.

The same pipeline file then runs on several hosts: a source host, inference hosts and a sink
host each start their stage(s) with it; the tcp:// endpoints in the file say where each binds
and connects (inference, or its dispatcher, binds `frames` and `work`; postprocess binds
`detections`), and [security] keys (the same keypair on every host) make every tcp link CURVE:
a peer without the key is refused in the handshake. Stages started this way have no per-run
tokens (no supervisor made them); the keys are what keeps strangers out. Each stage reports to
the file's `stats` endpoint when it is a tcp:// one (`streamseg stage monitor` binds it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from streamseg.config import ConfigError, ModelConfig, to_dict
from streamseg.pipeline.scaleout import inference_processes
from streamseg.pipeline.spec import WORK_ENDPOINT, Pipeline, insecure_endpoints, load_pipeline

STAGES = ("source", "inference", "worker", "postprocess", "monitor")


def stage_processes(
    name: str,
    pipeline: Pipeline,
    model: ModelConfig | None,
    *,
    source: Any = None,
    streams: int = 1,
    worker: int = 0,
    video: str | None = None,
    results: str | None = None,
    publish: str | None = None,
    verbose: bool = False,
) -> tuple[str, dict[str, Any]]:
    """(stage process, its kwargs) for stage `name` of `pipeline`. `source`: a SourceSpec
    (source stage); `worker`: which worker (worker stage); `streams`: how many end-of-streams
    end the run (0: live, never). ConfigError for what the file cannot give a lone stage."""
    if type(pipeline.workers) is not int:  # "auto": each host would count its own cores
        if name in ("inference", "worker"):
            raise ConfigError(
                f"{pipeline.path}: [inference] workers = {pipeline.workers!r}: stages started by "
                "hand need a number there, the same on every host (1: no dispatcher, no workers)"
            )
        pipeline = replace(pipeline, workers=1)  # the other stages do not depend on it
    ep = dict(pipeline.endpoints)
    ep.setdefault("work", WORK_ENDPOINT)
    need = {
        "source": ("frames",),
        "inference": ("frames", "detections") + (("work",) if pipeline.workers > 1 else ()),
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
    common = {"stats_endpoint": stats, "verbose": verbose, "link_keys": pipeline.keys or None}
    if name == "source":
        return "source", {
            **common,
            "source": source.url,
            "stream": source.stream,
            "kind": source.kind,
            "frames_endpoint": ep["frames"],
            "live": pipeline.live,
            "realtime": pipeline.realtime,
            "hwdecode": pipeline.hwdecode,
        }
    assert model is not None
    if name == "postprocess":
        return "postprocess", {
            **common,
            "detections_endpoint": ep["detections"],
            "streams": streams,
            "mask_threshold": model.mask_threshold,
            "mask_nms": model.mask_nms,
            "mask_nms_cross_label": model.mask_nms_cross_label,
            "score_threshold": model.score_threshold,
            "label_names": list(model.labels),
            "video": video,
            "results": results,
            "publish": publish or pipeline.publish or None,
            "n_outputs": max(1, streams),
            "track": pipeline.track,
            "track_max_missed": pipeline.track_max_missed,
            "live": pipeline.live,
        }
    single = {
        **common,
        "model": to_dict(model),
        "frames_endpoint": ep["frames"],
        "detections_endpoint": ep["detections"],
        "streams": streams,
        "live": pipeline.live,
        "depth": pipeline.depth,
        "forward_images": True,  # postprocess may render: it is on another host, ask nothing
    }
    procs = inference_processes(single, pipeline, work_endpoint=ep["work"])
    if name == "inference":
        stage, _, kwargs = procs[0]
        return stage, {**common, **kwargs}
    if pipeline.workers < 2 or not 0 <= worker < pipeline.workers:
        raise ConfigError(
            f"{pipeline.path}: worker {worker}: [inference] workers = {pipeline.workers} "
            "(a worker stage needs workers >= 2, and --worker 0..workers-1)"
        )
    _, _, kwargs = procs[1 + worker]
    return "worker", {**common, **kwargs}


def cmd_stage(args: argparse.Namespace) -> int:
    from streamseg.config import load_config
    from streamseg.source.spec import SourceError, parse_sources
    from streamseg.stage.__main__ import run_stage

    try:
        pipeline = load_pipeline(args.pipeline)
        exposed = insecure_endpoints(pipeline)
        if exposed:
            raise ConfigError(
                f"{pipeline.path}: {', '.join(exposed)} can be reached from other hosts: set "
                '[security] keys = "DIR/NAME" (`streamseg keys`), the same keypair on every host'
            )
        if args.name == "monitor":
            from streamseg.pipeline.monitor import monitor

            return monitor(pipeline, streams=args.streams, report=args.report)
        source = None
        if args.name == "source":
            if not args.input:
                raise ConfigError("streamseg stage source: give the INPUT (a file or URL)")
            source = parse_sources([args.input])[0]
        model = None if args.name == "source" else load_config(args.config, device=args.device)
        stage, kwargs = stage_processes(
            args.name,
            pipeline,
            model,
            source=source,
            streams=args.streams,
            worker=args.worker,
            video=args.output,
            results=args.results,
            publish=args.publish,
            verbose=args.verbose,
        )
    except (ConfigError, SourceError) as e:
        print(f"streamseg stage: error: {e}", file=sys.stderr)
        return 2
    try:
        return run_stage(stage, kwargs)
    except KeyboardInterrupt:
        return 130


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stage",
        help="run one stage of a pipeline file by itself (stages on several hosts)",
        description="Run one stage of a pipeline file in this process: the tcp:// endpoints in "
        "the file connect it to the other stages, on this host or others (docs/deploy.md). "
        "`monitor` binds the file's tcp:// stats endpoint and prints what the stages report.",
    )
    p.add_argument("name", choices=STAGES, help="which stage")
    p.add_argument("input", nargs="?", help="source: the input, [ID=]FILE|URL (as `run` takes)")
    p.add_argument("--pipeline", required=True, help="the pipeline file (tcp endpoints, keys)")
    p.add_argument(
        "--streams",
        type=int,
        default=1,
        help="inference, postprocess, monitor: streams whose end ends the run (0: never, live)",
    )
    p.add_argument("--worker", type=int, default=0, help="worker: which one, 0..workers-1")
    p.add_argument("--config", default="shapes", help="model config (inference, postprocess)")
    p.add_argument("--device", help="inference, worker: override the config's device")
    p.add_argument("-o", "--output", help="postprocess: annotated video (.mp4)")
    p.add_argument("--results", help="postprocess: results file (.jsonl)")
    p.add_argument("--publish", help="postprocess: ZeroMQ PUB endpoint for subscribers")
    p.add_argument("--report", help="monitor: write the final figures here (JSON)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_stage)
