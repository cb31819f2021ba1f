"""The fleet registry: which cell holds which cameras, where, under which epoch.

A cell runs its cameras only while it holds its cell's lease. `Leases` (pure; the clock is
passed in) grants a lease with a new epoch only when no earlier holder's lease is still live,
and a holder renews it every `lease_s / 4`; a renewal with a stale epoch, or after the lease
ran out, is refused. A holder that is refused, or that could not renew for `fence_s(lease_s)`
by its own clock, stops its pipeline at once. So when a node is lost (or cut off), its cell's
cameras start elsewhere only after the old holder has stopped or is gone: a camera is never
processed by two cells at once. Each grant that follows another holder is a move, counted with
the time the cell's cameras had no holder.

`Registry` is the same core as a Ray actor (named, on the head node), created by
`streamseg fleet`; cells, `fleet status` and the fleet subscriber ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NAMESPACE = "streamseg"
"""The Ray namespace of streamseg's drivers and named actors."""

REGISTRY_NAME = "streamseg-fleet-registry"
"""The Ray actor name of the registry (in NAMESPACE)."""


def fence_s(lease_s: float) -> float:
    """How long a holder runs on without a successful renewal, measured from when it sent its
    last successful one: less than the lease, so it has stopped before the registry grants the
    cell again (the registry counts the lease from when that renewal arrived, later)."""
    return 0.75 * lease_s


@dataclass(frozen=True)
class Lease:
    """One cell's holder.

    epoch: grows by one per grant of this cell. host, node: the address and Ray node id it
    runs on. endpoint: where its
    results are published (ZeroMQ PUB). state: what the holder last said (starting, running,
    restarting). granted, renewed: registry clock, seconds.
    """

    cell: str
    epoch: int
    host: str
    node: str
    endpoint: str
    cameras: tuple[str, ...]
    state: str
    granted: float
    renewed: float
    figures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Camera -> its figures as the holder last sent them (figures.Figures)."""
    metrics: str = ""
    """Its run's Prometheus page, http://host:port/metrics ("": none)."""


@dataclass(frozen=True)
class Move:
    """A cell granted to a new holder after an earlier one: `gap_s` is the time from the old
    holder's last renewal to the new grant (its cameras had no running cell meanwhile)."""

    cell: str
    cameras: tuple[str, ...]
    from_host: str
    to_host: str
    from_node: str
    to_node: str
    from_epoch: int
    to_epoch: int
    gap_s: float
    at: float


@dataclass
class Leases:
    """The registry's state and rules. Pure: every call takes `now` (seconds)."""

    lease_s: float = 4.0
    leases: dict[str, Lease] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)

    def live(self, cell: str, now: float) -> bool:
        lease = self.leases.get(cell)
        return lease is not None and lease.state != "stopped" and now - lease.renewed < self.lease_s

    def claim(
        self,
        cell: str,
        cameras: tuple[str, ...],
        host: str,
        node: str,
        endpoint: str,
        now: float,
        metrics: str = "",
    ) -> int | None:
        """A new holder for `cell`: its epoch, or None while an earlier holder's lease is
        live (ask again later). metrics: its run's http://host:port/metrics ("": none)."""
        old = self.leases.get(cell)
        if old is not None and self.live(cell, now):
            return None
        epoch = (old.epoch if old else 0) + 1
        if old is not None:
            gap = now - old.renewed
            self.moves.append(
                Move(cell, cameras, old.host, host, old.node, node, old.epoch, epoch, gap, now)
            )
        self.leases[cell] = Lease(
            cell, epoch, host, node, endpoint, cameras, "starting", now, now, metrics=metrics
        )
        return epoch

    def renew(
        self,
        cell: str,
        epoch: int,
        state: str,
        now: float,
        figures: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> bool:
        """Whether the holder of `epoch` still holds `cell` (then its lease runs on from now,
        with its state and its cameras' figures); False: it must stop its pipeline now."""
        lease = self.leases.get(cell)
        if lease is None or lease.epoch != epoch or not self.live(cell, now):
            return False
        self.leases[cell] = replace(lease, state=state, renewed=now, figures=figures or {})
        return True

    def release(self, cell: str, epoch: int, now: float) -> None:
        """The holder of `epoch` stopped its pipeline: the cell may be granted at once."""
        lease = self.leases.get(cell)
        if lease is not None and lease.epoch == epoch:
            self.leases[cell] = replace(lease, state="stopped", renewed=now)

    def status(self, now: float) -> list[dict[str, Any]]:
        """Per camera: its cell, epoch, host, endpoint, metrics page and state (lost: no live
        holder)."""
        rows = []
        for lease in sorted(self.leases.values(), key=lambda x: x.cell):
            live = self.live(lease.cell, now) or lease.state == "stopped"
            state = lease.state if live else "lost"
            for camera in lease.cameras:
                rows.append(
                    {"camera": camera, "cell": lease.cell, "epoch": lease.epoch,
                     "host": lease.host, "node": lease.node, "endpoint": lease.endpoint,
                     "metrics": lease.metrics, "state": state,
                     "since_s": round(now - lease.granted, 1),
                     **lease.figures.get(camera, {})}
                )  # fmt: skip
        return rows

    def endpoints(self, now: float) -> list[dict[str, Any]]:
        """The cells with a live holder: cell, epoch, host, endpoint, metrics, cameras."""
        return [
            {"cell": x.cell, "epoch": x.epoch, "host": x.host, "node": x.node,
             "endpoint": x.endpoint, "metrics": x.metrics,
             "cameras": list(x.cameras)}
            for x in sorted(self.leases.values(), key=lambda x: x.cell)
            if self.live(x.cell, now)
        ]  # fmt: skip


def file_sd(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Prometheus file_sd document (a JSON list) of the cells' metrics pages: one target
    group per cell that serves one, labelled with its cell, host and cameras ("a,b"), so every
    series Prometheus scrapes from a cell carries where it ran. endpoints: `endpoints()`'s
    records. Pure."""
    from urllib.parse import urlsplit

    groups = []
    for e in endpoints:
        url = urlsplit(e.get("metrics") or "")
        if not url.netloc:  # a holder that serves no page (or an older cell)
            continue
        labels = {"cell": e["cell"], "host": e["host"], "cameras": ",".join(e["cameras"])}
        if url.path and url.path != "/metrics":
            labels["__metrics_path__"] = url.path
        groups.append({"targets": [url.netloc], "labels": labels})
    return groups


def rebalance_plan(cells: dict[str, str], room: dict[str, int]) -> list[tuple[str, str, str]]:
    """Moves that even out the cells over the nodes: (cell, from node, to node), each from a
    node with the most cells to one with the fewest, while they differ by 2 or more and the
    target has room. cells: cell -> its node now; room: node -> how many more cells it can take
    (its free resources / a cell's). Pure; [] when balanced."""
    load = {node: 0 for node in room}
    for node in cells.values():
        load[node] = load.get(node, 0) + 1
    free = dict(room)
    where = dict(cells)
    moves = []
    while True:
        targets = [n for n in load if free.get(n, 0) > 0]
        if not targets:
            return moves
        src = max(load, key=lambda n: (load[n], n))
        dst = min(targets, key=lambda n: (load[n], n))
        if load[src] - load[dst] < 2:
            return moves
        cell = sorted(c for c, n in where.items() if n == src)[-1]
        moves.append((cell, src, dst))
        where[cell] = dst
        load[src] -= 1
        load[dst] += 1
        free[dst] -= 1
        free[src] = free.get(src, 0) + 1


class Registry:
    """The Leases as a Ray actor (ray.remote(Registry) in ray_backend): wall clock, plain
    dicts in and out."""

    def __init__(self, lease_s: float, cell_cpus: float = 1.0, cell_gpus: float = 0.0) -> None:
        import threading
        import time

        self._clock = time.monotonic
        # the actor answers calls from several threads (max_concurrency): one at a time here,
        # or two claims of one cell could both be granted
        self._lock = threading.Lock()
        self.core = Leases(lease_s=lease_s)
        self.cell_resources = (cell_cpus, cell_gpus)
        self._requests: list[tuple[str, str]] = []

    def resources(self) -> tuple[float, float]:
        """A cell's CPUs and GPUs (rebalance sizes the nodes' room by them)."""
        return self.cell_resources

    def request_move(self, cell: str, node: str) -> None:
        """Ask the fleet's driver to move `cell` to `node` (`streamseg fleet rebalance`)."""
        with self._lock:
            self._requests.append((cell, node))

    def take_requests(self) -> list[tuple[str, str]]:
        """The moves asked for since the last call (the driver carries them out)."""
        with self._lock:
            taken, self._requests = self._requests, []
            return taken

    def lease_s(self) -> float:
        return self.core.lease_s

    def claim(
        self, cell: str, cameras: list[str], host: str, node: str, endpoint: str, metrics: str = ""
    ) -> int | None:
        with self._lock:
            return self.core.claim(
                cell, tuple(cameras), host, node, endpoint, self._clock(), metrics
            )

    def renew(
        self, cell: str, epoch: int, state: str, figures: dict[str, Any] | None = None
    ) -> bool:
        with self._lock:
            return self.core.renew(cell, epoch, state, self._clock(), figures)

    def release(self, cell: str, epoch: int) -> None:
        with self._lock:
            self.core.release(cell, epoch, self._clock())

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            return {
                "cameras": self.core.status(now),
                "moves": [asdict(m) for m in self.core.moves],
            }

    def endpoints(self) -> list[dict[str, Any]]:
        with self._lock:
            return self.core.endpoints(self._clock())
