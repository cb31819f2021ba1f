"""Which inference worker gets the next batch, what each one holds, and which are lost. Pure.

The dispatcher (streamseg.inference.dispatcher) feeds this what it hears on the work link and
asks what to do; no sockets and no clock of its own, so every decision tests exactly.

- A worker asks for work with a credit (its last batch's results are sent); batches go to the
  worker that has waited longest for one, so a busy worker is never handed more ("whichever
  worker is free", not round-robin).
- Each worker's batch is remembered, with its id, until a credit says that batch is done:
  that is what is lost with it. An idle worker repeats its credit (a restarted dispatcher
  learns of it so); a repeat that crossed a batch on its way says an older batch, and is only
  a sign of life.
- A worker silent for `lost_s` (no credit, no heartbeat: dead, or frozen) is lost: its batch
  comes back to the caller, to be sent again (file runs) or counted (live runs). A new process
  under a lost worker's name (the supervisor restarted it) is simply a new worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Worker:
    peer: bytes
    """Its work socket's id (where batches go)."""
    seen: float
    want: int = 0
    """Frames it asked for (0: busy, or only heard by heartbeat so far)."""
    idle_since: float = 0.0
    batch: list[Any] = field(default_factory=list)
    """The frames it holds."""
    batch_id: int = 0


class Workers:
    def __init__(self, *, lost_s: float, clock: Callable[[], float]) -> None:
        if lost_s <= 0:
            raise ValueError("lost_s must be > 0")
        self.lost_s = lost_s
        self.clock = clock
        self.workers: dict[str, _Worker] = {}

    def credit(
        self, name: str, peer: bytes, frames: int, done: int = 0
    ) -> tuple[list[Any], list[Any]]:
        """Worker `name` spoke from `peer`: asked for up to `frames` frames, having finished
        batch `done`, or (frames 0) said it is alive. Returns (frames it finished, frames it
        lost): a credit that names the batch it holds means that batch is done; a credit from
        another process under the same name (restarted before it was noticed lost) means the
        old process's batch went down with it."""
        now = self.clock()
        w = self.workers.get(name)
        if frames <= 0:  # a heartbeat (from its own socket: says nothing of the work socket)
            if w is not None:
                w.seen = now
            return [], []
        if w is None:
            w = self.workers[name] = _Worker(peer, now)
        finished, lost = [], []
        if w.peer != peer:
            lost, w.batch, w.batch_id, w.peer = w.batch, [], 0, peer
        elif w.batch_id and done != w.batch_id:  # a repeat sent before its batch arrived
            w.seen = now
            return [], []
        else:
            finished, w.batch, w.batch_id = w.batch, [], 0
        w.seen = now
        if w.want <= 0:
            w.want, w.idle_since = frames, now
        return finished, lost

    def idle(self) -> tuple[str, bytes, int] | None:
        """(name, peer, frames wanted) of the worker idle longest; None when all are busy."""
        waiting = [(w.idle_since, n) for n, w in self.workers.items() if w.want > 0]
        if not waiting:
            return None
        name = min(waiting)[1]
        w = self.workers[name]
        return name, w.peer, w.want

    def assign(self, name: str, frames: list[Any], batch_id: int) -> None:
        """Worker `name` was handed `frames` as batch `batch_id` (> 0): it is busy until a
        credit says that batch is done."""
        w = self.workers[name]
        w.batch, w.batch_id, w.want = list(frames), batch_id, 0

    def forget(self, name: str) -> list[Any]:
        """Worker `name` is gone (its socket refused a send): the frames it held."""
        w = self.workers.pop(name, None)
        return w.batch if w else []

    def lost(self) -> list[tuple[str, list[Any]]]:
        """Workers silent for `lost_s`, forgotten now, each with the frames it held."""
        now = self.clock()
        gone = [n for n, w in self.workers.items() if now - w.seen >= self.lost_s]
        return [(n, self.forget(n)) for n in gone]

    def busy_frames(self) -> int:
        """Frames handed out and not yet finished."""
        return sum(len(w.batch) for w in self.workers.values())

    def names(self) -> list[str]:
        return list(self.workers)

    def peers(self) -> list[bytes]:
        return [w.peer for w in self.workers.values()]
