"""Fair share: live RTSP streams offering more frames than inference can take each get an equal
share of what it does (the Batcher takes streams in turn), with one worker and with two.

Measured before the change: 6 RTSP streams into one worker gave 4.7, 4.4, 1.2, 1.0, 0.5 and
0.3 fps processed (one camera 15 times another's share).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from faultkit import Collector, Run
from rtspfixture import free_port

# two waits of up to 240 s for results and a minute to stop: more than the default limit
pytestmark = [pytest.mark.slow, pytest.mark.rtsp, pytest.mark.timeout(600)]

STREAMS = 4


def _per_stream(collector: Collector, since: float) -> dict[str, int]:
    counts = {f"cam{i}": 0 for i in range(STREAMS)}
    for h in collector.since(since):
        counts[h["stream"]] += 1
    return counts


@pytest.mark.parametrize("workers", [1, 2])
def test_streams_over_capacity_get_equal_shares(workers, camera, random_config, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    collector = Collector(endpoint)
    sources = [f"cam{i}={camera.url}" for i in range(STREAMS)]
    run = Run(
        tmp_path, "watch", "-q", *sources, "--config", random_config, "--workers", str(workers),
        "--publish", endpoint, "--report", "report.json",
    )  # fmt: skip
    try:
        # every stream flowing first (they connect one by one), then a window of >= 20 each
        run.wait_for(lambda: min(_per_stream(collector, 0).values()) >= 3, 240, "all streams")
        t0 = time.monotonic()
        run.wait_for(lambda: min(_per_stream(collector, t0).values()) >= 20, 240, "20 each")
        counts = _per_stream(collector, t0)
    finally:
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait(timeout=60)
        collector.close()
    err = run.stderr()
    assert code == 0, err
    # over capacity, from the run's own counts (not a speed): inference dropped frames of every
    # stream for newer ones (stale), so each offered more than it was given and the shares
    # below are the Batcher's doing
    inference = json.loads((tmp_path / "report.json").read_text())["inference"]
    stale = {s: inference[s]["dropped"].get("stale", 0) for s in counts}
    assert min(stale.values()) > 0, (stale, err)
    assert max(counts.values()) / min(counts.values()) <= 1.25, counts
