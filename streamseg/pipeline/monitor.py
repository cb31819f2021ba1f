"""`streamseg stage monitor --pipeline X.toml`: the stats of stages that run on several hosts.

It binds the pipeline file's tcp:// stats endpoint (CURVE with the file's keys, so only stages
that hold them report in), prints a line per stream every few seconds from what the stages
report (frames in at the sources, processed at postprocess, drops by reason), and ends once
postprocess sent its final report (it ends after `streams` end-of-streams) and every other stage
that reported has sent its own, waiting at most FINALS_WAIT_S for those; or on Ctrl-C. The
end-of-run figures (every stage's counters, drops by reason) go to `report` as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from streamseg.pipeline.report import Tally, add_counts, total_dropped
from streamseg.pipeline.spec import Pipeline
from streamseg.stage.links import Links
from streamseg.wire import sockets
from streamseg.wire.messages import Stats
from streamseg.wire.receiver import Receiver

FINALS_WAIT_S = 5.0
"""After postprocess's final report, how long the others' may take: inference workers end only
once their dispatcher has no more work for them, often after postprocess has finished, and
their counts are in their final reports."""


def figures(tally: Tally) -> dict[str, Any]:
    """Per stage process: its counters and figures; per stream: in, out, dropped by reason."""
    stages = {}
    streams: dict[str, dict[str, Any]] = {}
    for name in tally.names():
        s = tally.get(name)
        if s is None:
            continue
        stages[name] = {"counters": s.counters, "busy_s": s.busy_s, "extra": s.figures()}
        for stream, c in s.counters.items():
            row = streams.setdefault(stream, {"in": 0, "out": 0, "dropped": {}})
            if s.stage == "source":
                row["in"] += c.get("in", 0)
            if s.stage == "postprocess":
                row["out"] += c.get("out", 0)
            row["dropped"] = add_counts({"dropped": row["dropped"]}, c)["dropped"]
    return {"stages": stages, "streams": streams}


def monitor(
    pipeline: Pipeline, *, streams: int, report: str | None = None, every_s: float = 5.0
) -> int:
    ep = pipeline.endpoints["stats"]
    if not ep.startswith("tcp://"):
        print(f"streamseg stage monitor: error: stats = {ep}: needs tcp://", file=sys.stderr)
        return 2
    links = Links("monitor", keys=pipeline.keys or None)
    sock = sockets.pull(ep, bind=True, hwm=1000, security=links.security(ep, bind=True))
    receiver = Receiver(sock, name="monitor")
    tally = Tally()
    t0 = time.monotonic()
    next_line = t0 + every_s
    done = False
    heard: set[str] = set()
    finals: set[str] = set()
    post_final: float | None = None  # when postprocess said its last
    try:
        while not done:
            msg = receiver.recv(200)
            now = time.monotonic()
            if isinstance(msg, Stats) and not msg.heartbeat:
                name = msg.sender
                tally.update(name, msg)
                heard.add(name)
                if msg.final:
                    finals.add(name)
                if msg.stage == "postprocess" and msg.final and streams > 0 and post_final is None:
                    post_final = now
            if post_final is not None:
                done = heard <= finals or now - post_final >= FINALS_WAIT_S
            if now >= next_line or done:
                next_line = now + every_s
                for stream, row in sorted(figures(tally)["streams"].items()):
                    t = max(now - t0, 1e-9)
                    print(
                        f"{stream}: in {row['in']} ({row['in'] / t:.1f} fps), processed "
                        f"{row['out']} ({row['out'] / t:.1f} fps), dropped "
                        f"{total_dropped(row)} {row['dropped'] or ''}",
                        flush=True,
                    )
    except KeyboardInterrupt:
        pass
    finally:
        if report:
            Path(report).write_text(json.dumps(figures(tally), indent=1))
        sockets.close_all(abort=True)
    return 0
