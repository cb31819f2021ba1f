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
from typing import Any

from streamseg.config import ConfigError
from streamseg.pipeline.spec import insecure_endpoints, load_pipeline
from streamseg.stage.args import STAGES as PROCESS_STAGES

STAGES = (*(s for s in PROCESS_STAGES if s != "dispatcher"), "monitor")
"""What `streamseg stage NAME` runs: a stage of a pipeline (streamseg.pipeline.plan.stage_plan;
"inference" is the dispatcher where the file has several workers), or the monitor."""


def cmd_stage(args: argparse.Namespace) -> int:
    from streamseg.config import load_config
    from streamseg.pipeline.plan import stage_plan
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
        spec = stage_plan(
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
        return run_stage(spec.args)
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
