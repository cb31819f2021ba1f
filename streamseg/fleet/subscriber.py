"""Read a whole fleet's results: one Subscriber per cell, following cells that move.

    from streamseg.fleet.ray_backend import fleet_subscriber

    for r in fleet_subscriber("HEAD:6379"):
        print(r.cell, r.host, r.result.stream, r.result.frame)

The cells' endpoints come from the fleet registry (`endpoints`: a callable, asked every
`refresh_s`); a cell that moved has a new epoch and endpoint: its old subscriber is closed, a new
one connects. Results still travel by ZeroMQ straight from each cell, never through Ray. This
module imports no Ray: `endpoints` may be any callable (tests, a static list).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from streamseg.client import FrameResult, Subscriber
from streamseg.wire.security import Security

_POLL_S = 0.02
"""How long one recv waits on one cell's socket before the next cell's is looked at."""


@dataclass(frozen=True)
class CellResult:
    """A frame's results and the cell (epoch, host) that produced them."""

    cell: str
    epoch: int
    host: str
    result: FrameResult


class FleetSubscriber:
    """Iterate over every cell's results: `for r in FleetSubscriber(endpoints)`.

    endpoints: returns the live cells, each a dict with cell, epoch, host, endpoint (the
    registry's `endpoints`). streams: camera names to receive (None: all). timeout_s: end the
    iteration when no result came for this long (None: never). security: CURVE keys for cells
    on the network (`curve.client_security`).
    """

    def __init__(
        self,
        endpoints: Callable[[], Sequence[dict[str, Any]]],
        streams: Sequence[str] | None = None,
        *,
        timeout_s: float | None = None,
        refresh_s: float = 1.0,
        security: Security | None = None,
    ) -> None:
        self._endpoints = endpoints
        self.streams = list(streams) if streams else None
        self.timeout_s, self.refresh_s, self.security = timeout_s, refresh_s, security
        self.subs: dict[tuple[str, int, str], Subscriber] = {}
        self.hosts: dict[tuple[str, int, str], str] = {}
        self.followed = 0
        """Cells (re)connected to after the first look: each move of a cell counts one."""
        self._next = 0.0
        self._first = True

    def refresh(self) -> None:
        """Connect to cells that appeared or moved, close those that are gone."""
        live = {(e["cell"], int(e["epoch"]), e["endpoint"]): e for e in self._endpoints()}
        for key in [k for k in self.subs if k not in live]:
            self.subs.pop(key).close()
            self.hosts.pop(key, None)
        for key, e in live.items():
            if key not in self.subs:
                self.subs[key] = Subscriber(key[2], self.streams, security=self.security)
                self.hosts[key] = str(e.get("host", ""))
                self.followed += 0 if self._first else 1
        self._first = False
        self._next = time.monotonic() + self.refresh_s

    def recv(self, timeout_s: float | None = None) -> CellResult | None:
        """The next result from any cell, or None when none came within `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if time.monotonic() >= self._next:
                self.refresh()
            for key, sub in list(self.subs.items()):
                r = sub.recv(0)
                if r is not None:
                    return CellResult(key[0], key[1], self.hosts[key], r)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if self.subs:
                key, sub = next(iter(self.subs.items()))
                r = sub.recv(_POLL_S)  # waits on one socket: no busy loop
                if r is not None:
                    return CellResult(key[0], key[1], self.hosts[key], r)
            else:
                time.sleep(_POLL_S)

    def __iter__(self) -> Iterator[CellResult]:
        while True:
            r = self.recv(self.timeout_s)
            if r is None:
                return
            yield r

    def close(self) -> None:
        for sub in self.subs.values():
            sub.close()
        self.subs.clear()

    def __enter__(self) -> FleetSubscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
