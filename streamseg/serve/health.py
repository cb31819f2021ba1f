"""The /healthz rule and each stream's state as the page shows it. Pure: times are passed in.

Healthy (200) while every stage process is alive and each stream had a new frame within its
stall window; otherwise 503 and one line per reason. A stage restarted after it died is a reason
until it has been up a while (watchdog.StageWatch.problem, settle_s): a stage dying in a loop
keeps the run at 503 between its deaths. The supervisor knows a stream's frames
only from its source's reports (about one a second), so the window is the source's own stall
window (`--stall-s`) plus `report_slack_s`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CONNECTED, RECONNECTING, LOST, ENDED, STARTING = (
    "connected",
    "reconnecting",
    "lost",
    "ended",
    "starting",
)


def stream_state(source: Mapping[str, object] | None) -> str:
    """What a stream is doing, from its source's latest report (None: no report yet):
    connected, reconnecting (connecting, down and retrying, its source restarting), lost (the
    source gave up), ended (a file that finished) or starting."""
    if source is None:
        return STARTING
    state = str(source.get("state", "up"))
    if state == "gone" or (source.get("ended") and source.get("lost")):
        return LOST
    if source.get("ended"):
        return ENDED
    if state == "up":
        return CONNECTED if int(source.get("in", 0) or 0) > 0 else STARTING  # type: ignore[arg-type]
    return RECONNECTING


class FrameClock:
    """When each stream last had a new frame: the time its source's frame count last grew."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def update(self, stream: str, frames_in: int, now: float) -> None:
        if frames_in > self.counts.get(stream, 0):
            self.last[stream] = now
        self.counts[stream] = max(frames_in, self.counts.get(stream, 0))

    def age(self, stream: str, now: float) -> float | None:
        """Seconds since the stream's last new frame (None: it never had one)."""
        last = self.last.get(stream)
        return None if last is None else now - last


@dataclass(frozen=True)
class StreamHealth:
    state: str
    """stream_state()."""
    frame_age_s: float | None
    """Seconds since its last new frame (None: never had one)."""
    detail: str = ""
    """The source's own words for its state ("down, retrying in 2 s")."""


def problems(
    stages: Mapping[str, str | None],
    streams: Mapping[str, StreamHealth],
    *,
    stall_s: float,
    report_slack_s: float = 1.5,
) -> list[str]:
    """Why the run is not healthy, one line each; [] when it is.

    stages: per stage process, None when alive (or finished its work) or what is wrong with it
    ("starting", "dead (killed by SIGKILL), restarting"). A stream that ended is healthy (a
    file that finished); one that was lost, or is reconnecting, or had no new frame for
    `stall_s + report_slack_s`, is not."""
    out = [f"{name}: {why}" for name, why in sorted(stages.items()) if why is not None]
    window = stall_s + report_slack_s
    for stream, h in sorted(streams.items()):
        if h.state == ENDED:
            continue
        if h.state == LOST:
            out.append(f"{stream}: lost" + (f" ({h.detail})" if h.detail else ""))
        elif h.state == RECONNECTING:
            out.append(f"{stream}: reconnecting" + (f" ({h.detail})" if h.detail else ""))
        elif h.frame_age_s is None:
            out.append(f"{stream}: no frame yet")
        elif h.frame_age_s > window:
            out.append(f"{stream}: no new frame for {h.frame_age_s:.1f} s (window {window:g} s)")
    return out
