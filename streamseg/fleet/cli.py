"""Command-line shells of the fleet package: corpus mode of `streamseg annotate`, and
`streamseg fleet` (cells on Ray). Parsing and printing only; the work is in corpus.py,
runner.py, ray_backend.py and cells.py."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

CORPUS_HELP = (
    "Corpus mode: when the single INPUT is a folder (its video files, recursively), a quoted glob "
    "('clips/*.mp4'), or @list.txt (one path a line), or when -o names a folder (existing, or "
    "ending with /), each input file is annotated by its own run, --jobs at a time (or as Ray "
    "tasks with --ray), into OUTDIR/NAME.jsonl (and NAME.mp4 with --video). A file's outputs "
    "appear only when whole; OUTDIR/manifest.jsonl lists the finished files, so running the same "
    "command again after an interruption does only what is missing (and redoes a file that "
    "changed). Exit 0 when every file is done, 3 when some failed after retries."
)

PASSTHROUGH = (
    ("--config", "config"),
    ("--weights", "weights"),
    ("--labels", "labels"),
    ("--device", "device"),
    ("--score-threshold", "score_threshold"),
    ("--max-batch", "max_batch"),
    ("--max-wait-ms", "max_wait_ms"),
    ("--pipeline", "pipeline"),
    ("--workers", "workers"),
)
"""annotate's options that each file's run gets as they were given."""

NOT_IN_CORPUS = (
    "publish",
    "keys",
    "allow_keys",
    "push",
    "sink",
    "report",
    "serve",
    "plan",
    "rtsp_out",
)


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    """annotate's corpus-mode options."""
    g = p.add_argument_group("corpus mode", CORPUS_HELP)
    g.add_argument(
        "--jobs", type=int, metavar="N", help="corpus: files annotated at once on this machine (1)"
    )
    g.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="corpus: run each file as a Ray task on the cluster at ADDRESS (host:port of `ray "
        "start --head`, auto, or local: a Ray started here); OUTDIR must be a folder every node "
        "sees (needs streamseg[ray])",
    )
    g.add_argument("--video", action="store_true", help="corpus: also write each annotated video")
    g.add_argument(
        "--retries", type=int, default=2, metavar="N", help="corpus: tries after a failed run (2)"
    )


def wants_corpus(args: argparse.Namespace) -> bool:
    """Whether this `streamseg annotate` is corpus mode (corpus.is_corpus; --jobs, --ray or
    --video force it)."""
    from streamseg.fleet.corpus import is_corpus

    forced = args.jobs is not None or args.ray is not None or args.video
    return is_corpus(args.inputs, args.output, forced=forced)


def _argv(args: argparse.Namespace) -> list[str]:
    argv = []
    for flag, attr in PASSTHROUGH:
        value = getattr(args, attr, None)
        if value is not None:
            argv += [flag, str(value)]
    if args.verbose:
        argv.append("-v")
    return argv


def _err(line: str) -> int:
    print(f"streamseg annotate: error: {line}", file=sys.stderr)
    return 2


def cmd_corpus(args: argparse.Namespace) -> int:
    """`streamseg annotate` in corpus mode; the exit code."""
    from streamseg.fleet import corpus, manifest, runner
    from streamseg.fleet.ray_backend import RayUnavailable
    from streamseg.pipeline.lock import OutputBusy, lock_outputs

    if args.output is None:
        return _err("a corpus is written into a folder: give -o OUTDIR")
    if args.results is not None:
        return _err("--results names one file; a corpus writes OUTDIR/NAME.jsonl per input")
    given = [k for k in NOT_IN_CORPUS if getattr(args, k, None)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        return _err(f"{flag} is for one run, not a corpus; leave it out or annotate files one run")
    if args.jobs is not None and args.jobs < 1:
        return _err("--jobs must be 1 or more")
    if args.retries < 0:
        return _err("--retries must be 0 or more")
    if args.jobs is not None and args.ray is not None:
        return _err("give --jobs (this machine) or --ray ADDRESS (a cluster), not both")
    outdir = Path(args.output)
    try:
        files = corpus.outside(corpus.expand(args.inputs), outdir)
        if not files:
            raise corpus.CorpusError(f"{' '.join(args.inputs)}: no inputs outside {outdir}")
        tasks = corpus.tasks(files)
        corpus.check_outdir(outdir, tasks, video=args.video)
    except corpus.CorpusError as e:
        return _err(str(e))
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / manifest.MANIFEST
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        with lock_outputs([path]):  # one corpus run per OUTDIR
            runner.clear_partial(outdir)
            entries, torn = manifest.read(path)
            done = manifest.latest(entries)
            todo = corpus.todo(tasks, done, _sizes(outdir, done))
            if torn:
                say(f"{path}: {torn} unreadable line(s) skipped (a torn write): redone if needed")
            print(
                f"corpus: {len(tasks)} files, {len(tasks) - len(todo)} done before, "
                f"{len(todo)} to do",
                file=sys.stderr,
            )
            recorder = runner.Recorder(path, say)
            t0 = time.monotonic()
            if args.ray is not None and todo:  # nothing to do: no cluster needed
                from streamseg.fleet import ray_backend

                address = None if args.ray == "local" else args.ray
                outcome = ray_backend.run_corpus(
                    address, todo, outdir, recorder, video=args.video, argv=_argv(args),
                    retries=args.retries,
                )  # fmt: skip
            else:
                outcome = runner.run_local(
                    todo, outdir, recorder, video=args.video, argv=_argv(args),
                    jobs=args.jobs or 1, retries=args.retries,
                )  # fmt: skip
    except OutputBusy as e:
        return _err(f"{e} (another corpus run uses {outdir})")
    except KeyboardInterrupt:
        print("corpus: stopped; run the same command again to do what is missing", file=sys.stderr)
        return 130
    except RayUnavailable as e:
        return _err(str(e))
    frames = sum(e.frames for e in outcome.done)
    print(
        f"corpus: {len(outcome.done)} files annotated now ({frames} frames, "
        f"{outcome.attempts} runs, {time.monotonic() - t0:.1f}s), {len(outcome.failed)} failed, "
        f"{len(tasks) - len(todo)} done before",
        file=sys.stderr,
    )
    for why in outcome.failed.values():
        print(f"corpus: failed: {why}", file=sys.stderr)
    return 3 if outcome.failed else 0


def _sizes(outdir: Path, done: dict) -> dict[str, int | None]:
    """Output path (relative) -> its size now (None: missing), for the outputs `done` names."""
    sizes: dict[str, int | None] = {}
    for entry in done.values():
        for rel in entry.outputs:
            p = outdir / rel
            sizes[rel] = p.stat().st_size if p.is_file() else None
    return sizes


# -- streamseg fleet ---------------------------------------------------------------------------

FLEET_HELP = (
    "Run a fleet of cameras on a Ray cluster: FLEET.toml lists the cameras and the cells' "
    "settings (docs/fleet.md); the cameras are spread over cells, each cell is one pipeline "
    "(`streamseg watch` of its cameras) run by a Ray actor on the node Ray picks. When a node is "
    "lost, Ray starts its cells on nodes with room and their cameras resume there; a camera is "
    "never run by two cells at once (leases with epochs). Results are published by each cell "
    "(ZeroMQ); read them all with `streamseg subscribe --fleet ADDRESS`. Runs until Ctrl-C. "
    "`streamseg fleet status` prints every camera's cell, host, state, fps and latency, and the "
    "moves; `streamseg fleet rebalance` moves cells onto a node that joined."
)


def register(sub: Any) -> None:
    """Add the `fleet` command to the CLI's subparsers."""
    p = sub.add_parser("fleet", help="cameras in cells on a Ray cluster", description=FLEET_HELP)
    p.add_argument(
        "fleet",
        metavar="FLEET.toml|status|rebalance",
        help="a fleet file to run; status; or rebalance: move cells from the nodes with the most "
        "onto nodes with room (one that joined), and wait until they run there",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        default="auto",
        help="the Ray cluster: HOST:PORT of `ray start --head`, auto (the one this machine "
        "joined; default) or local (start one here, for a single machine)",
    )
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument(
        "--prometheus-sd",
        metavar="FILE",
        help="status: also write FILE, a Prometheus file_sd list of every cell's /metrics "
        "labelled with its cell, host and cameras (replaced whole; run again, e.g. from cron, "
        "to follow moves)",
    )
    p.set_defaults(func=cmd_fleet)


def _connect(address: str) -> Any:
    from streamseg.fleet.ray_backend import connect

    return connect(None if address == "local" else address)


def cmd_fleet(args: argparse.Namespace) -> int:
    from streamseg.fleet.cells import FleetError, read
    from streamseg.fleet.ray_backend import RayUnavailable

    try:
        if args.fleet == "status":
            return _status(_connect(args.ray), as_json=args.json, sd_file=args.prometheus_sd)
        if args.fleet == "rebalance":
            return _rebalance(_connect(args.ray))
        fleet = read(args.fleet)
        return _run_fleet(_connect(args.ray), fleet)
    except (FleetError, RayUnavailable) as e:
        print(f"streamseg fleet: error: {e}", file=sys.stderr)
        return 2


def write_sd(path: str, groups: list[dict[str, Any]]) -> None:
    """Write a file_sd document whole: a temporary file beside it, renamed over it, so
    Prometheus never reads half of one. OSError when the folder cannot be written."""
    import json
    import os
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(groups, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a Prometheus of another user
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _status(ray: Any, *, as_json: bool, sd_file: str | None = None) -> int:
    import json

    from streamseg.fleet.ray_backend import registry_of
    from streamseg.fleet.registry import file_sd

    registry = registry_of(ray)
    if sd_file:
        groups = file_sd(ray.get(registry.endpoints.remote()))
        try:
            write_sd(sd_file, groups)
        except OSError as e:
            print(f"streamseg fleet: error: {sd_file}: cannot write ({e.strerror})",
                  file=sys.stderr)  # fmt: skip
            return 2
    status = ray.get(registry.status.remote())
    if as_json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"{'camera':12s} {'cell':7s} {'epoch':>5s} {'host':15s} {'fps':>6s} {'latency':>8s} "
          f"{'dropped':>7s} {'state':9s} endpoint")  # fmt: skip
    for row in status["cameras"]:
        fps, lat = row.get("fps"), row.get("latency_ms")
        print(f"{row['camera']:12s} {row['cell']:7s} {row['epoch']:5d} {row['host']:15s} "
              f"{'-' if fps is None else f'{fps:.1f}':>6s} "
              f"{'-' if lat is None else f'{lat:.0f} ms':>8s} {row.get('dropped', '-'):>7} "
              f"{row['state']:9s} {row['endpoint']}")  # fmt: skip
    for m in status["moves"]:
        print(f"moved: {m['cell']} ({', '.join(m['cameras'])}) epoch {m['from_epoch']} on "
              f"{_where(m['from_host'], m['from_node'])} -> epoch {m['to_epoch']} on "
              f"{_where(m['to_host'], m['to_node'])} after {m['gap_s']:.1f} s without a "
              "holder")  # fmt: skip
    return 0


REBALANCE_WAIT_S = 120.0
"""How long `fleet rebalance` waits for the moved cells to run on their new nodes."""


def _rebalance(ray: Any) -> int:
    from streamseg.fleet.ray_backend import node_room, registry_of
    from streamseg.fleet.registry import rebalance_plan

    registry = registry_of(ray)
    cells = {e["cell"]: e["node"] for e in ray.get(registry.endpoints.remote())}
    cpus, gpus = ray.get(registry.resources.remote())
    plan = rebalance_plan(cells, node_room(ray, cells, cpus, gpus))
    if not plan:
        print("fleet: balanced: nothing to move")
        return 0
    t0 = time.monotonic()
    for cell, src, dst in plan:
        print(f"fleet: moving {cell} from node {src[:8]} to node {dst[:8]}", flush=True)
        ray.get(registry.request_move.remote(cell, dst))
    want = {cell: dst for cell, _, dst in plan}
    while time.monotonic() - t0 < REBALANCE_WAIT_S:
        now = {e["cell"]: e["node"] for e in ray.get(registry.endpoints.remote())}
        if all(now.get(cell) == node for cell, node in want.items()):
            print(f"fleet: moved {len(plan)} cells in {time.monotonic() - t0:.1f} s")
            return 0
        time.sleep(0.5)  # polling the registry for the moves' end
    print(f"fleet: not all moved within {REBALANCE_WAIT_S:g} s; see `streamseg fleet status`",
          file=sys.stderr)  # fmt: skip
    return 1


def _where(host: str, node: str) -> str:
    """host (node abcdef12): several Ray nodes may share a host."""
    return f"{host} (node {node[:8]})"


def _run_fleet(ray: Any, fleet: Any) -> int:
    import signal
    import threading

    from streamseg.fleet.ray_backend import move_cell, start_fleet

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = [signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)]
    registry, cells = start_fleet(ray, fleet)
    print(f"fleet: {len(fleet.cameras)} cameras in {len(cells)} cells; Ctrl-C stops",
          file=sys.stderr, flush=True)  # fmt: skip
    seen: dict[str, tuple[int, str]] = {}
    moves = 0
    try:
        while not stop.wait(1.0):
            try:
                status = ray.get(registry.status.remote(), timeout=10)
            except ray.exceptions.RayError as e:
                print(f"fleet: registry unreachable ({type(e).__name__})", file=sys.stderr)
                continue
            for row in status["cameras"]:
                now = (row["epoch"], row["state"])
                if seen.get(row["camera"]) != now:
                    seen[row["camera"]] = now
                    line = (f"fleet: {row['camera']}: {row['cell']} epoch {row['epoch']} on "
                            f"{row['host']}: {row['state']}")  # fmt: skip
                    print(line, file=sys.stderr, flush=True)
            for m in status["moves"][moves:]:
                print(f"fleet: moved {m['cell']} ({', '.join(m['cameras'])}) from "
                      f"{_where(m['from_host'], m['from_node'])} to "
                      f"{_where(m['to_host'], m['to_node'])} after {m['gap_s']:.1f} s without "
                      "a holder", file=sys.stderr, flush=True)  # fmt: skip
            moves = len(status["moves"])
            for name, node in ray.get(registry.take_requests.remote(), timeout=10):
                if name in cells:  # `streamseg fleet rebalance` asked for it
                    print(f"fleet: moving {name} to node {node[:8]} (rebalance)",
                          file=sys.stderr, flush=True)  # fmt: skip
                    move_cell(ray, fleet, cells[name], node)
    finally:
        for s, handler in zip((signal.SIGINT, signal.SIGTERM), old, strict=True):
            signal.signal(s, handler)
        with contextlib.suppress(Exception):  # best effort: the actors die with this driver
            ray.get([c.actor.stop.remote() for c in cells.values()], timeout=30)
        print(f"fleet: stopped ({moves} moves)", file=sys.stderr)
    return 0


def subscribe_fleet(args: argparse.Namespace, security: Any) -> int:
    """`streamseg subscribe --fleet ADDRESS`: every cell's results, one line per frame."""
    from streamseg.commands.subscribe import format_line
    from streamseg.fleet.ray_backend import RayUnavailable, fleet_subscriber
    from streamseg.wire import sockets

    try:
        sub = fleet_subscriber(args.fleet, args.streams, timeout_s=args.timeout,
                               security=security)  # fmt: skip
    except RayUnavailable as e:
        print(f"streamseg subscribe: error: {e}", file=sys.stderr)
        return 2
    n = 0
    try:
        for r in sub:
            print(f"{r.cell}@{r.host} {format_line(r.result)}", flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    except sockets.HandshakeError as e:
        print(f"streamseg subscribe: error: {e}", file=sys.stderr)
        return 2
    finally:
        sub.close()
        sockets.close_all(abort=True)
    print(f"received {n} results from the fleet ({sub.followed} moves followed)", file=sys.stderr)
    return 0
