"""Liveness of the stage processes, and what the supervisor does about a dead or hung one. Pure.

The supervisor feeds it what it sees (a stage started, reported in, exited) with the time, and
asks for verdicts; no clock of its own and no processes, so every decision is testable exactly.

- A stage that said it is ready and then is silent for `hang_s` is hung: KILL it (a stage's
  heartbeat thread reports every 0.25 s whatever its main loop is doing, so silence means the
  process is frozen or gone). Until it is ready (importing torch, loading a model: work that
  can hold the interpreter for seconds on a loaded machine), the start-up rule below holds.
- A stage that exits with a code other than 0 (done) or 3 (done, frames lost) died: once
  running, even a stage's own error exit (2: a full disk, say) leaves the pipeline without
  it. In a file run that ends the run (FAIL): nothing after it can complete. In a live run
  it is restarted (RESTART) after a backoff that doubles per death, from retry_min_s to
  retry_max_s, so a stage that dies at once does not spin. A stage that died `max_deaths`
  times within `deaths_window_s` (a full disk: every new life dies on its first write) is not
  restarted again: FAIL, with why.
- Until it is ready a stage must show progress: a report, a heartbeat or, fed in by the
  supervisor, CPU time used (imports run before a stage can report). Silent and idle for
  `start_idle_s` while starting, it is frozen: KILL, naming the step it froze in (importing,
  before its first report; loading, after). `start_s` bounds start-up as a whole.
- Verdicts only on evidence: a gap of more than `pause_s` between two checks means the
  supervisor itself was stopped (Ctrl-Z, SIGSTOP) or starved, and saw nothing meanwhile. Every
  stage then gets a fresh `hang_s` (and start-up allowance) from that moment, time for the
  reports that queued up to be read, instead of a verdict on silence nobody listened to.
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
    progress: float
    """The last sign of life while starting: started, a report, CPU time used."""
    seen: float | None = None
    ready: bool = False
    final: bool = False
    code: int | None = None
    deaths: int = 0
    restart_at: float | None = None
    killed_for: str = ""
    failed: bool = False
    ready_at: float | None = None
    hopeless: str = ""
    """Why it is not restarted again (it died too often), if so."""


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
        start_idle_s: float = 30.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
        max_deaths: int = 5,
        deaths_window_s: float = 60.0,
        settle_s: float = 10.0,
        pause_s: float | None = None,
    ) -> None:
        times = (hang_s, start_s, start_idle_s, deaths_window_s, pause_s or 1.0)
        if not all(t > 0 for t in times) or not 0 < retry_min_s <= retry_max_s:
            raise ValueError(
                "need hang_s, start_s, start_idle_s, deaths_window_s, pause_s > 0 and "
                "0 < retry_min_s <= retry_max_s"
            )
        if max_deaths < 1 or settle_s < 0:
            raise ValueError("need max_deaths >= 1 and settle_s >= 0")
        self.live = live
        self.hang_s, self.start_s, self.start_idle_s = hang_s, start_s, start_idle_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.max_deaths, self.deaths_window_s = max_deaths, deaths_window_s
        self.settle_s = settle_s
        """A restarted stage counts as a problem until it has been ready this long: a stage
        dying in a loop must not look healthy between two deaths."""
        self.pause_s = pause_s
        """A gap between two checks longer than this is the supervisor's own pause (None:
        checks come when they come, as in tests that jump the clock)."""
        self.stages: dict[str, _Stage] = {}
        self.restarts: dict[str, int] = {}
        """Restarts so far, per stage name."""
        self.spares: set[str] = set()
        """Stages restarted in file runs too: inference workers, whose lost frames the
        dispatcher sends to another worker, so the run goes on without them meanwhile."""
        self.paused: list[tuple[float, float]] = []
        """(when, seconds) of each gap in the supervisor's own checks (see pause_s)."""
        self._deaths: dict[str, list[float]] = {}
        self._checked: float | None = None

    def started(self, stage: str, now: float) -> None:
        old = self.stages.get(stage)
        self.stages[stage] = _Stage(started=now, progress=now, deaths=old.deaths if old else 0)

    def progress(self, stage: str, now: float) -> None:
        """`stage` showed it is working at `now` without reporting (it used CPU time): while it
        starts, that is progress (imports run before a stage can report)."""
        s = self.stages.get(stage)
        if s is not None and s.code is None:
            s.progress = now

    def seen(self, stage: str, now: float, *, ready: bool = False, final: bool = False) -> None:
        """`stage` reported in at `now`; `ready`: it said it is loaded and running; `final`:
        its last report, on its way out (its heartbeat has stopped; delivering what its
        sockets still hold may take a while)."""
        s = self.stages.get(stage)
        if s is not None and s.code is None:
            s.seen = s.progress = now
            if ready and not s.ready:
                s.ready, s.ready_at = True, now
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
            deaths = self._deaths.setdefault(stage, [])
            deaths[:] = [t for t in deaths if now - t < self.deaths_window_s] + [now]
            if len(deaths) >= self.max_deaths:
                # dying again and again (a full disk): restarting cannot help; end the run
                s.hopeless = (
                    f"died {len(deaths)} times in {now - deaths[0]:.0f} s"
                    f" (last: {s.killed_for or describe_exit(code)}); not restarted again"
                )
            elif self.live or stage in self.spares:
                delay = min(self.retry_max_s, self.retry_min_s * 2.0 ** (s.deaths - 1))
                s.restart_at = now + delay

    def running(self, stage: str) -> bool:
        s = self.stages.get(stage)
        return s is not None and s.code is None

    def down(self, stage: str) -> bool:
        """Dead and waiting to be restarted."""
        s = self.stages.get(stage)
        return s is not None and s.restart_at is not None

    def problem(self, stage: str, now: float | None = None) -> str | None:
        """What is wrong with `stage` now: None while it runs and is ready (or once it ended
        normally), else "starting", why it was killed, or how it died ("..., restarting").
        With `now`: a restarted stage stays a problem until it has been ready for settle_s."""
        s = self.stages.get(stage)
        if s is None:
            return "not started"
        if s.code is None:
            if s.killed_for or not s.ready:
                return s.killed_for or "starting"
            if now is not None and s.deaths and s.ready_at is not None:
                if now - s.ready_at < self.settle_s:
                    deaths = f"{s.deaths} death{'' if s.deaths == 1 else 's'}"
                    return f"restarted {now - s.ready_at:.0f} s ago ({deaths} so far)"
            return None
        if s.code in NORMAL_EXITS:
            return None
        why = s.hopeless or s.killed_for or describe_exit(s.code)
        return f"{why}, restarting" if s.restart_at is not None else why

    def check(self, now: float) -> list[Action]:
        """What to do now, in stage order."""
        self._notice_pause(now)
        actions = []
        for name, s in self.stages.items():
            if s.code is None:
                if s.killed_for:
                    continue  # killed, its exit not seen yet
                if not s.ready and now - s.started >= self.start_s:
                    s.killed_for = f"not ready {self.start_s:g} s after starting"
                elif not s.ready and now - s.progress >= self.start_idle_s:
                    # the step it froze in: before its first report a stage imports its
                    # modules (torch: seconds); then it loads (a model, its sockets)
                    step = "importing" if s.seen is None else "loading"
                    s.killed_for = (
                        f"frozen while starting ({step}): no sign of progress for "
                        f"{now - s.progress:.1f} s"
                    )
                elif s.ready and not s.final and s.seen is not None and now - s.seen >= self.hang_s:
                    s.killed_for = f"hung: no heartbeat for {now - s.seen:.1f} s"
                if s.killed_for:
                    actions.append(Action(KILL, name, s.killed_for))
            elif s.code not in NORMAL_EXITS:
                why = s.hopeless or s.killed_for or describe_exit(s.code)
                if s.hopeless or (not self.live and name not in self.spares):
                    if not s.failed:
                        s.failed = True
                        actions.append(Action(FAIL, name, why))
                elif s.restart_at is not None and now >= s.restart_at:
                    s.restart_at = None
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    actions.append(Action(RESTART, name, why))
        return actions

    def _notice_pause(self, now: float) -> None:
        """A gap since the last check: this process was stopped or starved, and heard nothing
        meanwhile. Every running stage gets a fresh hang_s (and its start-up timers move on by
        the gap), so that what queued up is read before anything is judged."""
        last, self._checked = self._checked, now
        if self.pause_s is None or last is None or now - last <= self.pause_s:
            return
        gap = now - last
        self.paused.append((now, gap))
        for s in self.stages.values():
            if s.code is None and not s.killed_for:
                s.started += gap
                s.progress = now
                if s.seen is not None:
                    s.seen = now


class Drain:
    """Notices stages that will never finish once every source has ended. Pure.

    Progress is a frame finished, or a stage busy on work (its heartbeat says so: a model call
    on a batch can take longer than any fixed wait on a CPU). Stuck: neither for `wait_s` (an
    end-of-stream lost with a stage that died; a stage alive but idle with frames missing).
    A gap of more than `pause_s` between two calls (this process stopped) is not waiting."""

    def __init__(self, wait_s: float, *, pause_s: float | None = None) -> None:
        self.wait_s = wait_s
        self.pause_s = pause_s
        self.done = -1
        self.since = 0.0
        self._last: float | None = None

    def stuck(self, ended: bool, done: int, busy: bool, now: float) -> bool:
        """ended: every source has sent its end-of-stream; done: frames finished so far;
        busy: a stage says it is working on frames now."""
        last, self._last = self._last, now
        if not ended:
            self.done = -1
            return False
        if self.pause_s is not None and last is not None and now - last > self.pause_s:
            self.since += now - last
        if done != self.done or busy:
            self.done, self.since = done, now
            return False
        return now - self.since >= self.wait_s
