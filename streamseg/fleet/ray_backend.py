"""Corpus files as Ray tasks (`streamseg annotate ... -o OUTDIR --ray ADDRESS`).

Each file is one Ray task that runs `runner.annotate_one` on whichever node Ray picks: the same
temporary names and renames as on one machine, so OUTDIR must be a folder every node sees (NFS
or the like). Ray retries a task whose run failed (not for unusable input) and a task whose
node or worker died, up to --retries times. Only this process (the driver) appends to the
manifest, when a task has returned: a task lost with its node leaves no line, and its retry
renames whole outputs over whatever an earlier attempt renamed (the same bytes: a run is
deterministic per file).

Ray is imported only here and only when called: `pip install 'streamseg[ray]'` is optional.
Ray moves the task's plain arguments and its one-line result with its own serialisation
(cloudpickle) between the cluster's nodes: a Ray cluster is one trust domain; keep its ports
private (docs/fleet.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from streamseg.fleet import manifest
from streamseg.fleet.cells import Fleet
from streamseg.fleet.corpus import Task
from streamseg.fleet.registry import NAMESPACE
from streamseg.fleet.runner import Outcome, Recorder, TaskFailed, annotate_one


class RayUnavailable(Exception):
    """Ray is not installed, or the cluster cannot be reached: one line for the user (exit 2)."""


class RunFailed(TaskFailed):
    """A failed run that may succeed when tried again (Ray retries exactly these)."""


def require_ray() -> ModuleType:
    """The ray module; RayUnavailable naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("Ray is not installed: pip install 'streamseg[ray]'") from None
    return ray


def connect(address: str | None) -> ModuleType:
    """Join the Ray cluster at `address` (host:port of `ray start --head`, or "auto"; None:
    start a local one) as a driver; the ray module. RayUnavailable with one line when it cannot."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=False,  # a run's own stderr comes back in its TaskFailed
            configure_logging=True,
        )
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayUnavailable(
            f"cannot join the Ray cluster at {address}: {first} (start one with `ray start "
            "--head`, and give its address)"
        ) from None
    return ray


def corpus_task(
    name: str, path: str, key: tuple[int, int], outdir: str, video: bool, argv: list[str]
) -> str:
    """The Ray task of one file: its manifest line (manifest.encode), once its outputs are in
    place. RunFailed (retried) or TaskFailed (unusable input: not retried)."""
    try:
        return manifest.encode(annotate_one(name, path, key, outdir, video=video, argv=argv))
    except TaskFailed as e:
        if e.retryable:
            raise RunFailed(e.name, e.code, e.why) from None
        raise


def run_corpus(
    address: str | None,
    todo: Sequence[Task],
    outdir: Path,
    recorder: Recorder,
    *,
    video: bool,
    argv: Sequence[str],
    retries: int,
) -> Outcome:
    """Run `todo` as Ray tasks on the cluster at `address`; each finished file's entry is
    recorded here as its task returns. Ctrl-C cancels the tasks under way (their runs stop:
    they die with their worker) and raises KeyboardInterrupt."""
    ray = connect(address)
    from ray.exceptions import RayError, RayTaskError

    task = ray.remote(corpus_task).options(
        num_cpus=1, max_retries=retries, retry_exceptions=[RunFailed]
    )
    pending = {}
    for t in todo:
        key = (t.key.size, t.key.mtime_ns)
        ref = task.remote(t.name, str(t.path.absolute()), key, str(outdir.absolute()), video,
                          list(argv))  # fmt: skip
        pending[ref] = t
        recorder.attempt()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                t = pending.pop(ref)
                try:
                    recorder.done(manifest.decode(ray.get(ref)))
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    why = str(cause) if isinstance(cause, TaskFailed) else str(e).splitlines()[0]
                    recorder.failed(t.name, why)
                except RayError as e:  # the task was lost more often than it may be retried
                    recorder.failed(t.name, f"{t.name}: {type(e).__name__}: {str(e)[:200]}")
                except ValueError as e:  # a line that is not a manifest entry: a bug
                    recorder.failed(t.name, f"{t.name}: {e}")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return recorder.outcome


# -- the fleet: a registry and cells as actors -------------------------------------------------


def start_fleet(ray: ModuleType, fleet: Fleet) -> tuple[Any, dict[str, Any]]:
    """Create the registry (on this driver's node: it needs no resources) and one actor per
    cell; Ray places the cells, and restarts a cell whose node is lost on a node with room.
    The registry handle and cell name -> actor handle. They live as long as this driver."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from streamseg.fleet.cells import assign, cell_names
    from streamseg.fleet.registry import REGISTRY_NAME, Registry

    here = ray.get_runtime_context().get_node_id()
    registry = (
        ray.remote(Registry)
        .options(
            name=REGISTRY_NAME,
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=64,  # cells renew while status is read
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        )
        .remote(fleet.lease_s, fleet.cell_cpus, fleet.cell_gpus)
    )
    ray.get(registry.lease_s.remote())
    shards = assign(fleet.cameras, fleet.cells, fleet.max_cameras_per_cell)
    cells = {}
    for name, cameras in zip(cell_names(len(shards)), shards, strict=True):
        cells[name] = CellHandle(name, cameras, cell_actor(ray, fleet, name, cameras))
    return registry, cells


@dataclass
class CellHandle:
    """The driver's view of one cell: its cameras and its current actor."""

    name: str
    cameras: list[Any]
    actor: Any
    generation: int = 0


def cell_actor(
    ray: ModuleType, fleet: Fleet, name: str, cameras: Any, *, node: str | None = None, gen: int = 0
) -> Any:
    """A Ray actor for cell `name`: anywhere with room, or on `node` while it has room (a
    rebalance; soft: when that node is lost, anywhere again)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from streamseg.fleet.cells import Cell

    strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=True) if node else "DEFAULT"
    return (
        ray.remote(Cell)
        .options(
            name=f"streamseg-{name}" + (f"-g{gen}" if gen else ""),
            namespace=NAMESPACE,
            num_cpus=fleet.cell_cpus,
            num_gpus=fleet.cell_gpus,
            max_restarts=-1,  # a lost node's cell starts again wherever there is room
            max_task_retries=-1,
            max_concurrency=4,
            scheduling_strategy=strategy,
        )
        .remote(name, fleet, cameras)
    )


def move_cell(ray: ModuleType, fleet: Fleet, cell: CellHandle, node: str) -> None:
    """Move a cell to `node` on purpose: its pipeline stops and releases the lease first, then
    a new actor claims it there (a move, counted like any other)."""
    try:
        ray.get(cell.actor.stop.remote(), timeout=30)
    except ray.exceptions.RayError:
        pass  # gone already: its lease runs out
    ray.kill(cell.actor, no_restart=True)
    cell.generation += 1
    cell.actor = cell_actor(ray, fleet, cell.name, cell.cameras, node=node, gen=cell.generation)


def node_room(
    ray: ModuleType, cells: dict[str, str], cell_cpus: float, cell_gpus: float
) -> dict[str, int]:
    """Alive node id -> how many more cells it takes: its CPUs (and GPUs) over a cell's, less
    the cells on it now (`cells`: cell -> node). Other work on a node is not counted."""
    room = {}
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        total = n.get("Resources", {})
        needs = (("CPU", cell_cpus), ("GPU", cell_gpus))
        fits = [int(total.get(kind, 0) // need) for kind, need in needs if need > 0]
        here = sum(1 for node in cells.values() if node == n["NodeID"])
        room[n["NodeID"]] = max(0, (min(fits) if fits else 1_000) - here)
    return room


def registry_of(ray: ModuleType) -> Any:
    """The running fleet's registry; RayUnavailable when no fleet runs on this cluster."""
    from streamseg.fleet.registry import REGISTRY_NAME

    try:
        return ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    except ValueError:
        raise RayUnavailable(
            "no fleet runs on this Ray cluster: start one with `streamseg fleet FLEET.toml`"
        ) from None


def fleet_subscriber(address: str, streams: Sequence[str] | None = None, **kw: Any) -> Any:
    """A FleetSubscriber over the cells of the fleet running on the Ray cluster at `address`
    (this process joins the cluster as a driver to ask the registry for the endpoints)."""
    from streamseg.fleet.subscriber import FleetSubscriber

    ray = connect(address)
    registry = registry_of(ray)
    return FleetSubscriber(lambda: ray.get(registry.endpoints.remote()), streams, **kw)
