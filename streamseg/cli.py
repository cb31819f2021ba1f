"""The `streamseg` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from streamseg.fleet import cli as fleet_cli  # corpus mode of annotate, `fleet` (docs/fleet.md)

DEFAULT_CONFIG = "shapes"
"""Shipped configs and pipelines are named by name (streamseg/data); paths work too."""

OWN_MODEL = (
    "Use your own model: --weights FILE runs your checkpoint (a torchvision state_dict or a "
    "streamseg checkpoint of the config's arch, e.g. --config maskrcnn_resnet50_fpn --weights "
    "my.pth), with the class names it carries or --labels a,b,c. Or write a config of your "
    "own: `streamseg configs` lists the shipped ones, `streamseg configs show NAME > my.toml` "
    "prints one to copy and edit, then --config my.toml. Fine-tune on your data with "
    "`streamseg train --coco`. README: Use your own model."
)
"""The epilog of every command that runs or trains a model."""

WAIT_HELP = (
    "keep trying a camera or RTSP URL that cannot work at start-up (no such device, "
    "401/403/404, not a video) instead of exiting with code 2, e.g. a camera not plugged in yet; "
    "refused connections and timeouts are retried either way, and so is a source lost after it "
    "worked"
)


def _size(text: str) -> tuple[int, int]:
    """argparse type for WxH: a bad value is one usage line and exit 2, not a traceback."""
    from streamseg.config import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _model_args(p: argparse.ArgumentParser) -> None:
    p.epilog = OWN_MODEL
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="model config: a shipped one by name (shapes, maskrcnn_resnet50_fpn, "
        "maskrcnn_resnet50_fpn_v2) or a path to a .toml; default: %(default)s, the offline model",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="your own model: a checkpoint (torchvision state_dict .pth or streamseg's .pt) of "
        "the config's arch, instead of the config's weights; also coco or random",
    )
    p.add_argument(
        "--labels",
        metavar="NAMES|FILE",
        help="class names of --weights, by label id without the background: a,b,c or a file "
        "with one name a line (default: the names the checkpoint carries, else the config's)",
    )
    p.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:N")
    p.add_argument("--score-threshold", type=float, help="override the config's score threshold")
    p.add_argument("--max-batch", type=int, help="override the config's max_batch")
    p.add_argument("--max-wait-ms", type=float, help="override the config's max_wait_ms")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        help="annotated video (.mp4); with several inputs {stream} in the name is replaced by "
        "the stream id (else NAME.STREAM.mp4)",
    )
    p.add_argument("--results", help="results file (.jsonl, one JSON object per frame; see README)")
    p.add_argument(
        "--publish",
        help="also publish results on this ZeroMQ PUB endpoint: PORT or tcp://:PORT (loopback), "
        "tcp://HOST:PORT; binding beyond loopback needs --keys and --allow-keys",
    )
    p.add_argument("--keys", metavar="DIR/NAME", help="CURVE keypair of this pipeline's publisher")
    p.add_argument(
        "--allow-keys", metavar="DIR", help="folder of the public keys of allowed subscribers"
    )
    p.add_argument(
        "--push",
        metavar="ENDPOINT",
        help="also hand each frame's results to one reader program that binds ENDPOINT (a "
        "ZeroMQ ROUTER granting credit; the link is described in "
        "streamseg/postprocess/sinks/push.py): a file run waits for the reader, a live run "
        "drops what it cannot take (counted as consumer_slow). streamseg.Pipeline uses this",
    )
    p.add_argument(
        "--push-buffer",
        type=int,
        default=16,
        metavar="N",
        help="--push: results queued for the reader before a file run waits or a live run drops "
        "(%(default)s)",
    )
    p.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="URL",
        help="also send each frame's results to a broker (repeatable): mqtt(s)://HOST, "
        "redis(s)://HOST or a webhook http(s)://HOST/PATH; settings as query parameters, e.g. "
        "mqtt://HOST?qos=1&payload=slim (docs/sinks.md). Never slows the run: while a broker is "
        "down, results wait up to max_pending, then the oldest are dropped (counted)",
    )
    p.add_argument(
        "--rtsp-out",
        metavar="[HOST:]PORT",
        help="also serve each stream's annotated video as rtsp://HOST:PORT/STREAM (H.264; VLC, "
        "ffplay, a video management system); PORT alone is this host only (127.0.0.1). Drawn "
        "and encoded only while someone plays it; a slow client skips frames (docs/sinks.md)",
    )
    p.add_argument(
        "--report",
        metavar="FILE",
        help="also write the end-of-run figures as JSON: counters per stage and stream, drops "
        "by reason, restarts, errors, exit code",
    )
    p.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="serve the run over HTTP while it runs: a page with every stream's live annotated "
        "view and figures (/), /metrics (Prometheus) and /healthz; PORT alone is this host "
        "only (127.0.0.1), 0.0.0.0:PORT every interface (docs/serve.md)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="inference processes (override the pipeline's [inference] workers): frames go to "
        "whichever is free; each on its own device from [inference] devices, or sharing the CPU",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the processes the run would start (stages, endpoints, hosts, threads) and "
        "exit without starting them",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging from every stage")


def _load_model_config(args: argparse.Namespace):
    from streamseg.config import ConfigError, load_config, parse_labels

    labels = None
    if getattr(args, "labels", None):
        try:
            labels = parse_labels(args.labels)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return load_config(
        args.config,
        weights=getattr(args, "weights", None),
        labels=labels,
        device=args.device,
        score_threshold=args.score_threshold,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )


def _run_pipeline(args: argparse.Namespace, pipeline_path: str, sources: list[str]) -> int:
    from streamseg.pipeline.preflight import check_outputs, check_weights
    from streamseg.pipeline.report import summary, to_json
    from streamseg.pipeline.spec import insecure_endpoints, load_pipeline
    from streamseg.pipeline.supervisor import run
    from streamseg.source.decode import open_input
    from streamseg.source.spec import SourceError, parse_sources

    pipeline = load_pipeline(pipeline_path)
    exposed = insecure_endpoints(pipeline)
    if exposed:
        print(
            f"streamseg: error: {pipeline.path}: {', '.join(exposed)} can be reached from other "
            'hosts: set [security] keys = "DIR/NAME" (make them with `streamseg keys`) or '
            "use ipc:// or tcp://127.0.0.1 endpoints",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "realtime", False):
        pipeline = type(pipeline)(**{**pipeline.__dict__, "realtime": True})
    if getattr(args, "workers", None) is not None:
        if args.workers < 1:
            print("streamseg: error: --workers must be 1 or more", file=sys.stderr)
            return 2
        pipeline = type(pipeline)(**{**pipeline.__dict__, "workers": args.workers})
    model = _load_model_config(args)
    try:
        specs = parse_sources(sources)
    except SourceError as e:
        print(f"streamseg: error: {e}", file=sys.stderr)
        return 2
    for spec in specs:  # unusable files fail here, in a second, before any stage starts
        if spec.kind == "file":
            try:
                open_input(spec).close()
            except SourceError as e:
                print(f"streamseg: error: {e}", file=sys.stderr)
                return 2
    live = [s for s in specs if s.kind != "file"]
    if live:  # so do sources that never can (streamseg.source.decode.probe)
        code = _check_live_sources(args, live, every=len(live) == len(specs))
        if code:
            return code
    serve = getattr(args, "serve", None) or pipeline.serve or None
    sinks = _check_sinks([*args.sink, *pipeline.sinks], live=pipeline.live or bool(live))
    if sinks is None:
        return 2
    pipeline = type(pipeline)(**{**pipeline.__dict__, "sinks": ()})  # now in `sinks`
    rtsp_out = getattr(args, "rtsp_out", None)
    if rtsp_out:
        from streamseg.sink_urls import rtsp_listen, rtsp_problem

        problem = rtsp_problem(rtsp_out)  # (ConfigError for a malformed one: exit 2, main)
        if problem:
            print(f"streamseg: error: {problem}", file=sys.stderr)
            return 2
        host, port = rtsp_listen(rtsp_out)
        print(f"streamseg: annotated streams on rtsp://{host}:{port}/STREAM", file=sys.stderr)
    if not (
        args.output or args.results or args.publish or pipeline.publish or serve or args.push
    ) and not (sinks or rtsp_out):
        print(
            "streamseg: error: nothing to write: give -o VIDEO, --results FILE, --publish, "
            "--sink or --serve",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.push_buffer <= 10_000:
        print("streamseg: error: --push-buffer must be 1..10000 results", file=sys.stderr)
        return 2
    publish = args.publish or pipeline.publish or None
    try:
        publish, security = _publish_security(publish, args.keys, args.allow_keys)
    except ValueError as e:
        print(f"streamseg: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "plan", False):  # what the run would start, and nothing started
        return _print_plan(args, pipeline, model, specs, publish, security, serve=bool(serve))
    # unusable outputs fail here too, before a model is loaded or a frame is decoded
    inputs = [s.url for s in specs if s.kind == "file"]
    problems = check_outputs(args.output, args.results, [s.stream for s in specs], inputs=inputs)
    for problem in problems:
        print(f"streamseg: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    # the weights too, once, before any worker loads them (streamseg.pipeline.preflight)
    problems = check_weights(model)
    for problem in problems:
        print(f"streamseg: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    web = None
    if serve:  # the port is taken now: a port in use fails here, before any stage starts
        from streamseg.serve.http import ServeError, bind

        try:
            web = bind(serve)
        except ServeError as e:
            print(f"streamseg: error: {e}", file=sys.stderr)
            return 2
        exposed = " (to other hosts too: no password, anyone who reaches it sees the video)"
        print(f"streamseg: serving {web.url}{exposed if web.exposed else ''}", file=sys.stderr)
    live_options = {}
    for key in ("retry_max_s", "give_up_s", "stall_s"):
        if getattr(args, key, None) is not None:
            live_options[key] = getattr(args, key)
    report = run(
        pipeline,
        specs,
        model,
        video=args.output,
        results=args.results,
        publish=publish,
        publish_keys=security,
        live_options=live_options,
        quiet=args.quiet,
        verbose=args.verbose,
        serve=web,
        claim=[args.report],  # one run per output file, the report included (pipeline.lock)
        push=args.push,
        push_buffer=args.push_buffer,
        sinks=sinks,
        rtsp_out=rtsp_out,
    )
    print(summary(report), file=sys.stderr)
    if args.report:
        try:
            Path(args.report).write_text(json.dumps(to_json(report), indent=1) + "\n")
        except OSError as e:
            print(f"streamseg: error: cannot write --report {args.report}: {e}", file=sys.stderr)
            return report.exit_code or 2
    return report.exit_code


def _check_sinks(urls: list[str], *, live: bool) -> list[str] | None:
    """The broker sinks' URLs, checked before any stage starts (streamseg.sink_urls): a bad
    URL or option, a missing extra, an unreadable CA file is one line and None (exit 2); so is
    a server that cannot be reached in a file run. A live run only says so: it keeps trying."""
    import os

    from streamseg.sink_urls import check_extra, hide_secrets, parse_all, unreachable

    if not urls:
        return []
    specs = parse_all(urls)  # ConfigError: one line, exit 2 (main)
    for spec in specs:
        check_extra(spec)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(specs)) as pool:
        problems = [p for p in pool.map(unreachable, specs) if p]
    for problem in problems:
        if live:
            print(f"streamseg: {problem}; it is retried while the run goes on", file=sys.stderr)
        else:
            print(f"streamseg: error: {problem}; start it, or leave out that --sink",
                  file=sys.stderr)  # fmt: skip
    if problems and not live:
        return None
    # passwords and secrets reach the stages by the environment, not their command lines
    hidden = []
    for i, url in enumerate(urls):
        url, env = hide_secrets(url, f"STREAMSEG_SINK{i}")
        os.environ.update(env)
        hidden.append(url)
    return hidden


def _print_plan(args, pipeline, model, specs, publish, security, *, serve: bool) -> int:
    """--plan: print the processes the run would start (streamseg.pipeline.plan); exit 0."""
    from streamseg.pipeline.plan import Outputs, describe, plan, this_host

    pipeline, budget, cuda = this_host(pipeline, model, streams=len(specs))
    outputs = Outputs(
        args.output,
        args.results,
        publish,
        security,
        preview=serve,
        sinks=tuple(args.sink),
        rtsp_out=getattr(args, "rtsp_out", None),
    )
    keys = ("retry_max_s", "give_up_s", "stall_s")
    live = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    run = plan(pipeline, model, specs, outputs, rundir="{run}", budget=budget, cuda=cuda,
               live_options=live, verbose=args.verbose)  # fmt: skip
    print(describe(run))
    return 0


def _check_live_sources(args: argparse.Namespace, live: list, *, every: bool) -> int:
    """Open each camera and RTSP source once before any stage starts: one that can never work
    (no such device, 401/403/404, not a video) is exit 2, unless --wait-for-source. When every
    source of the run is down and --give-up-s is set, keep trying here, with nothing else
    started, and end with exit 3 once the time is up: the stages would wait for nothing. 0: go
    on (a source down for now is retried by its stage)."""
    from concurrent.futures import ThreadPoolExecutor

    from streamseg.source.decode import first_contact, probe

    wait = getattr(args, "wait_for_source", False)
    with ThreadPoolExecutor(len(live)) as pool:
        errors = list(pool.map(probe, live))
        permanent = [e for e in errors if e is not None and e.permanent]
        if permanent and not wait:
            for error in permanent:
                print(
                    f"streamseg: error: {error}; fix the source, or pass --wait-for-source to "
                    "keep trying until it works",
                    file=sys.stderr,
                )
            return 2
        give_up = getattr(args, "give_up_s", None)
        if not (every and give_up and give_up > 0 and all(errors)):
            return 0
        retry_max = getattr(args, "retry_max_s", None) or 10.0
        gone = list(
            pool.map(lambda s: first_contact(s, give_up_s=give_up, retry_max_s=retry_max), live)
        )
    if not all(gone):
        return 0
    for spec, why in zip(live, gone, strict=True):
        print(f"streamseg: error: {spec.stream}: {why}", file=sys.stderr)
    return 3


def _publish_security(
    publish: str | None, keys: str | None, allow: str | None
) -> tuple[str | None, dict[str, str] | None]:
    """The publish endpoint (shortcuts expanded) and its key files, checked now; ValueError
    with one line for the user (a network bind without keys, a bad key file)."""
    from streamseg.wire import curve, security

    if (keys is None) != (allow is None):
        raise ValueError("give both --keys DIR/NAME and --allow-keys DIR, or neither")
    if publish is None:
        if keys:
            raise ValueError("--keys and --allow-keys secure --publish: give an endpoint")
        return None, None
    publish = security.publish_endpoint(publish)
    security.check_bind(publish, curve.server_security(keys, allow) if keys and allow else None)
    return publish, ({"keys": keys, "allow": allow} if keys and allow else None)


def cmd_annotate(args: argparse.Namespace) -> int:
    if fleet_cli.wants_corpus(args):
        return fleet_cli.cmd_corpus(args)
    return _run_pipeline(args, args.pipeline, args.inputs)


def cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(args, args.pipeline, args.sources)


def cmd_watch(args: argparse.Namespace) -> int:
    return _run_pipeline(args, args.pipeline, args.sources)


def cmd_configs(args: argparse.Namespace) -> int:
    from streamseg import shipped

    if args.action == "list":
        if args.name:
            print("streamseg configs: error: `configs` takes no name; did you mean "
                  f"`streamseg configs show {args.name}`?", file=sys.stderr)  # fmt: skip
            return 2
        for name in shipped.names("config"):
            print(f"{name:28s} {shipped.summary('config', name)}")
        print("\nprint one to copy and edit: streamseg configs show NAME > my.toml")
        return 0
    if not args.name:
        print("streamseg configs: error: show which? one of: "
              f"{', '.join(shipped.names('config'))}", file=sys.stderr)  # fmt: skip
        return 2
    try:
        path = shipped.find("config", args.name)
    except shipped.NotFound as e:
        print(f"streamseg configs: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from streamseg.tools import synth

    w, h = args.size
    if (args.output is None) == (args.images is None):
        print("streamseg synth: error: give a video OUTPUT.mp4, or --images DIR", file=sys.stderr)
        return 2
    if args.images:
        from streamseg.tools import synth_images

        try:
            coco = synth_images.write_image_dataset(
                args.images,
                count=args.count,
                seed=args.seed,
                size=(w, h),
                segmentation=args.segmentation,
                image_format=args.image_format,
            )
        except ValueError as e:
            print(f"streamseg synth: error: {e}", file=sys.stderr)
            return 2
        print(
            f"wrote {args.count} images {w}x{h} to {Path(args.images) / 'images'} and "
            f"{Path(args.images) / 'annotations.json'} ({len(coco['annotations'])} instances, "
            f"{args.segmentation})"
        )
        return 0
    gt = args.gt or str(Path(args.output).with_suffix(".json"))
    try:
        coco = synth.write_clip(
            args.output, gt, seed=args.seed, frames=args.frames, size=(w, h), fps=args.fps
        )
    except ValueError as e:
        print(f"streamseg synth: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output} ({args.frames} frames {w}x{h} @ {args.fps} fps) and {gt} "
        f"({len(coco['annotations'])} instances)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from streamseg.tools import evaluate

    try:
        return evaluate.main(args.results, args.gt, tracks=args.tracks)
    except evaluate.EvalError as e:
        print(f"streamseg eval: error: {e}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from streamseg.tools import demo

    return demo.main(
        out=args.out,
        config=args.config,
        pipeline=args.pipeline,
        frames=args.frames,
        seed=args.seed,
        size=args.size,
        device=args.device,
        quiet=args.quiet,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from streamseg.tools import train

    if args.coco:
        from streamseg.tools import train_coco
        from streamseg.tools.coco_data import DatasetError

        if args.iterations is not None:
            print("streamseg train: error: with --coco, give --epochs, not --iterations",
                  file=sys.stderr)  # fmt: skip
            return 2
        try:
            return train_coco.main(
                args.config,
                args.out,
                *args.coco,
                epochs=args.epochs,
                val_fraction=args.val_fraction,
                flip=not args.no_flip,
                init=args.init,
                resume=args.resume,
                batch_size=args.batch_size,
                lr=args.lr,
                device=args.device or "auto",
                threads=args.threads,
            )
        except DatasetError as e:
            print(f"streamseg train: error: {e}", file=sys.stderr)
            return 2
    return train.main(
        args.config,
        args.out,
        resume=args.resume,
        init=args.init,
        iterations=args.iterations,
        batch_size=args.batch_size,
        device=args.device or "auto",
        threads=args.threads,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamseg",
        description="Per-frame instance masks (Mask R-CNN) for video files, RTSP cameras and "
        "webcams. Stages (decode, batched inference, postprocess/sinks) run as separate "
        "processes linked by ZeroMQ.",
        epilog=OWN_MODEL,
    )
    from streamseg import __version__

    parser.add_argument("--version", action="version", version=f"streamseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "annotate",
        help="masks, annotated video and results file for video files",
        description="Run every frame of each INPUT through the model (nothing dropped) and write "
        "the annotated video (-o) and/or the per-frame results (--results). Exit code 0 only "
        "when every decoded frame has results; 2 for unusable input; 3 when frames were lost.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="video file(s), [NAME=]PATH; or a folder, 'GLOB' or @list.txt (corpus mode, below)",
    )  # fmt: skip
    p.add_argument(
        "--pipeline", default="annotate", help="pipeline: shipped name or .toml path (%(default)s)"
    )
    _model_args(p)
    _output_args(p)
    fleet_cli.add_corpus_args(p)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser(
        "run",
        help="run any pipeline file over sources",
        description="Run the stages and endpoints described by a pipeline file (pipelines/*.toml)"
        " over SOURCES.",
    )
    p.add_argument("pipeline", help="pipeline: a shipped name (annotate, watch) or a .toml path")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="[NAME=]file, rtsp:// URL, camera")
    p.add_argument("--realtime", action="store_true", help="play files at their frame rate")
    p.add_argument("--wait-for-source", action="store_true", help=WAIT_HELP)
    _model_args(p)
    _output_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "watch",
        help="watch live sources (RTSP, cameras, files in real time) and publish results",
        description="Run live: each SOURCE ([NAME=]rtsp://..., /dev/videoN or a camera index, or "
        "a file played at its own frame rate) gets a stream id; all share one inference stage. "
        "A live stream never falls behind: while inference is busy only the newest frames wait "
        "and every drop is counted. RTSP sources reconnect with capped exponential backoff; a "
        "watchdog catches streams that stall without closing. Results are published on a "
        "ZeroMQ PUB socket, one topic per stream id (docs/protocol.md). Stop with Ctrl-C.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="[NAME=]URL, device or file")
    p.add_argument(
        "--pipeline", default="watch", help="pipeline: shipped name or .toml path (%(default)s)"
    )
    p.add_argument("--realtime", action="store_true", help="(files always play in real time)")
    p.add_argument("--retry-max-s", type=float, help="longest wait between reconnect attempts")
    p.add_argument(
        "--give-up-s", type=float, help="end a stream that stays down this long (default: never)"
    )
    p.add_argument("--stall-s", type=float, help="watchdog: no frame for this long = stalled")
    p.add_argument("--wait-for-source", action="store_true", help=WAIT_HELP)
    _model_args(p)
    _output_args(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "synth",
        help="generate a synthetic moving-shapes video with COCO ground truth",
        description="Write an H.264 video of moving circles, squares and triangles and its exact "
        "ground-truth instance masks (COCO JSON, one image per frame); or, with --images DIR, "
        "a COCO image dataset: DIR/images/*.png and DIR/annotations.json (for train --coco).",
    )
    p.add_argument("output", nargs="?", help="video file to write (.mp4)")
    p.add_argument("--images", metavar="DIR", help="write an image dataset here instead")
    p.add_argument("--count", type=int, default=100, help="--images: how many (%(default)s)")
    p.add_argument(
        "--segmentation",
        choices=("rle", "polygon", "mixed"),
        default="rle",
        help="--images: masks as RLE, polygons, or mixed (alternating images) (%(default)s)",
    )
    p.add_argument(
        "--image-format", choices=("png", "jpg"), default="png", help="--images (%(default)s)"
    )
    p.add_argument("--gt", help="ground truth JSON (default: OUTPUT with .json)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--frames", type=int, default=150, help="frame count (default %(default)s)")
    p.add_argument(
        "--size", type=_size, default="640x480", help="WxH, even numbers (default %(default)s)"
    )
    p.add_argument("--fps", type=int, default=30, help="frame rate (default %(default)s)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "train",
        help="train the shapes model on generated data, or any model on a COCO dataset",
        description="Train the config's model on synthetic shapes generated on the fly, or with "
        "--coco on a COCO-format instance-segmentation dataset (polygons or RLE; the class names "
        "come from it and travel in the checkpoint), with resumable checkpoints "
        "(OUT.resume.pt). With --coco: a held-out split is scored after every epoch (mask and "
        "box AP, as `streamseg eval`), OUT.toml is a config for the trained model, and "
        "training fine-tunes the config's weights unless --init says otherwise.",
    )
    p.add_argument(
        "--coco",
        nargs=2,
        metavar=("IMAGES_DIR", "ANNOTATIONS_JSON"),
        help="train on this COCO dataset (file_name in the JSON is relative to IMAGES_DIR)",
    )
    p.add_argument("--epochs", type=int, default=12, help="with --coco (default %(default)s)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="with --coco: share of images held out for AP, chosen by [train].seed "
        "(default %(default)s; 0: none)",
    )
    p.add_argument("--no-flip", action="store_true", help="with --coco: no left-right flips")
    p.add_argument("--lr", type=float, help="override [train].lr (AdamW peak learning rate)")
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help="config (name or path) with a [train] table"
    )
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue from OUT.resume.pt if present")
    p.add_argument(
        "--init",
        help="start from this checkpoint; with --coco also streamseg:NAME, coco or random, "
        "default the config's weights, and class layers are replaced when the class count "
        "differs",
    )
    p.add_argument("--iterations", type=int, help="override [train].iterations")
    p.add_argument("--batch-size", type=int, help="override [train].batch_size")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.epilog = OWN_MODEL
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="COCO mask and box AP/AR of a results file against ground truth; MOT figures",
        description="Score a results file (.jsonl from annotate/watch) against COCO ground truth "
        "(e.g. from `streamseg synth --gt`): mask and box AP (IoU .50:.95), AP50, AP75 and AR "
        "via pycocotools. Frames are matched to ground-truth images by their 0-based frame "
        "number; results and ground truth of different clips are refused (exit 2).",
    )
    p.add_argument("results", help="results file (.jsonl)")
    p.add_argument("--gt", required=True, help="COCO ground truth JSON")
    p.add_argument(
        "--tracks",
        action="store_true",
        help="also MOT figures of the results' track_id against the ground truth's track_id: "
        "IDF1, MOTA, MOTP, ID switches (docs/tracking.md)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "demo",
        help="generate a clip, annotate it with the shipped model, report fps and mask AP",
        description="Offline end-to-end demo: generate a moving-shapes clip the model never saw, "
        "run it through the full stage pipeline with the shipped shapes model, write the "
        "annotated video and results under OUT, and print frames, fps and mask AP.",
    )
    p.add_argument("--out", default="streamseg-demo", help="output folder (default %(default)s)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="model config (%(default)s)")
    p.add_argument(
        "--pipeline", default="annotate", help="pipeline: shipped name or .toml path (%(default)s)"
    )
    p.add_argument("--frames", type=int, default=300, help="clip length (default %(default)s)")
    p.add_argument("--seed", type=int, default=2024, help="clip seed (default %(default)s)")
    p.add_argument("--size", type=_size, default="640x480", help="WxH (default %(default)s)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.epilog = OWN_MODEL
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "configs",
        help="list the shipped model configs, or print one to copy and edit",
        description="List the model configs shipped with streamseg (the names --config takes), "
        "or print one: `streamseg configs show maskrcnn_resnet50_fpn > my.toml`, edit it (weights, "
        "labels, thresholds, input size, batching; every field is commented) and run it with "
        "--config my.toml. Paths inside a config are relative to its own folder.",
    )
    p.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    p.add_argument("name", nargs="?", help="show: the config to print")
    p.epilog = OWN_MODEL
    p.set_defaults(func=cmd_configs)

    from streamseg.commands import keys, subscribe
    from streamseg.pipeline import standalone
    from streamseg.tools import bench, export

    standalone.register(sub)
    export.register(sub)
    bench.register(sub)
    subscribe.register(sub)
    keys.register(sub)
    fleet_cli.register(sub)
    for name in ("stage", "bench"):  # they run a model too
        sub.choices[name].epilog = OWN_MODEL
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    from streamseg.stage import PARENT_ENV, die_with_parent

    if parent := os.environ.pop(PARENT_ENV, None):  # started by streamseg.Pipeline: die with it
        die_with_parent(parent)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="streamseg: %(message)s")
    from streamseg.config import ConfigError, WeightsError
    from streamseg.pipeline.lock import OutputBusy

    try:
        return int(args.func(args) or 0)
    except (ConfigError, WeightsError, OutputBusy) as e:
        print(f"streamseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
