"""Liveness of the stage processes, and what the supervisor does about a dead or hung one. Pure.

The supervisor feeds it what it sees (a stage started, reported in, exited) with the time, and
asks for verdicts; no clock of its own and no processes, so every decision is testable exactly.

- A stage that said it is ready and then is silent for `hang_s` is hung: KILL it (a stage's
  heartbeat thread reports every 0.25 s whatever its main loop is doing, so silence means the
  process is frozen or gone). Until it is ready (importing torch, loading a model: work that
  can hold the interpreter for seconds on a loaded machine), it gets `start_s`.
- A stage that exits with a code other than 0 (done) or 3 (done, frames lost) died: once
  running, even a stage's own error exit (2: a full disk, say) leaves the pipeline without
  it. In a file run that ends the run (FAIL): nothing after it can complete. In a live run
  it is restarted (RESTART) after a backoff that doubles per death, from retry_min_s to
  retry_max_s, so a stage that dies at once does not spin.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

KILL, RESTART, FAIL = "kill", "restart", "fail"
NORMAL_EXITS = (0, 3)


@dataclass(frozen=True)
class Action:
    kind: str
    """KILL (the stage is hung), RESTART (start it again now) or FAIL (end the run)."""
    stage: str
    reason: str


@dataclass
class _Stage:
    started: float
    seen: float | None = None
    ready: bool = False
    final: bool = False
    code: int | None = None
    deaths: int = 0
    restart_at: float | None = None
    killed_for: str = ""
    failed: bool = False


def describe_exit(code: int | None) -> str:
    """ "exited with 1", "killed by SIGKILL", "stopped" (130: by SIGTERM or Ctrl-C)."""
    if code is None:
        return "still running"
    if code == 130:
        return "stopped (interrupted)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


class StageWatch:
    def __init__(
        self,
        *,
        live: bool,
        hang_s: float = 2.0,
        start_s: float = 300.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        if hang_s <= 0 or start_s <= 0 or not 0 < retry_min_s <= retry_max_s:
            raise ValueError("need hang_s, start_s > 0 and 0 < retry_min_s <= retry_max_s")
        self.live = live
        self.hang_s, self.start_s = hang_s, start_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.stages: dict[str, _Stage] = {}
        self.restarts: dict[str, int] = {}
        """Restarts so far, per stage name."""
        self.spares: set[str] = set()
        """Stages restarted in file runs too: inference workers, whose lost frames the
        dispatcher sends to another worker, so the run goes on without them meanwhile."""

    def started(self, stage: str, now: float) -> None:
        old = self.stages.get(stage)
        self.stages[stage] = _Stage(started=now, deaths=old.deaths if old else 0)

    def seen(self, stage: str, now: float, *, ready: bool = False, final: bool = False) -> None:
        """`stage` reported in at `now`; `ready`: it said it is loaded and running; `final`:
        its last report, on its way out (its heartbeat has stopped; delivering what its
        sockets still hold may take a while)."""
        s = self.stages.get(stage)
        if s is not None and s.code is None:
            s.seen = now
            s.ready = s.ready or ready
            s.final = s.final or final

    def said_final(self, stage: str) -> bool:
        """Whether `stage` (its current process) sent its last report."""
        s = self.stages.get(stage)
        return s is not None and s.final

    def exited(self, stage: str, code: int, now: float) -> None:
        s = self.stages.get(stage)
        if s is None or s.code is not None:
            return
        s.code = code
        if code not in NORMAL_EXITS:
            s.deaths += 1
            if self.live or stage in self.spares:
                delay = min(self.retry_max_s, self.retry_min_s * 2.0 ** (s.deaths - 1))
                s.restart_at = now + delay

    def running(self, stage: str) -> bool:
        s = self.stages.get(stage)
        return s is not None and s.code is None

    def down(self, stage: str) -> bool:
        """Dead and waiting to be restarted."""
        s = self.stages.get(stage)
        return s is not None and s.restart_at is not None

    def problem(self, stage: str) -> str | None:
        """What is wrong with `stage` now: None while it runs and is ready (or once it ended
        normally), else "starting", why it was killed, or how it died ("..., restarting")."""
        s = self.stages.get(stage)
        if s is None:
            return "not started"
        if s.code is None:
            return s.killed_for or (None if s.ready else "starting")
        if s.code in NORMAL_EXITS:
            return None
        why = s.killed_for or describe_exit(s.code)
        return f"{why}, restarting" if self.live else why

    def check(self, now: float) -> list[Action]:
        """What to do now, in stage order."""
        actions = []
        for name, s in self.stages.items():
            if s.code is None:
                if s.killed_for:
                    continue  # killed, its exit not seen yet
                if not s.ready and now - s.started >= self.start_s:
                    s.killed_for = f"not ready {self.start_s:g} s after starting"
                elif s.ready and not s.final and s.seen is not None and now - s.seen >= self.hang_s:
                    s.killed_for = f"hung: no heartbeat for {now - s.seen:.1f} s"
                if s.killed_for:
                    actions.append(Action(KILL, name, s.killed_for))
            elif s.code not in NORMAL_EXITS:
                why = s.killed_for or describe_exit(s.code)
                if not self.live and name not in self.spares:
                    if not s.failed:
                        s.failed = True
                        actions.append(Action(FAIL, name, why))
                elif s.restart_at is not None and now >= s.restart_at:
                    s.restart_at = None
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    actions.append(Action(RESTART, name, why))
        return actions
