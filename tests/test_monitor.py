"""`streamseg stage monitor` over real ZeroMQ: the end-of-run report has every stage's last word.

Inference workers end only once their dispatcher has no more work, which is often after
postprocess sent its final report; their counts are in their own final reports.
"""

from __future__ import annotations

import json
import threading
import time

from rtspfixture import free_port

from streamseg.pipeline.monitor import FINALS_WAIT_S, monitor
from streamseg.pipeline.spec import load_pipeline
from streamseg.wire import sockets
from streamseg.wire.messages import Stats


def _run_monitor(tmp_path, sends):
    port = free_port()
    (tmp_path / "p.toml").write_text(
        "[endpoints]\n"
        f'frames = "ipc://{tmp_path}/f"\ndetections = "ipc://{tmp_path}/d"\n'
        f'stats = "tcp://127.0.0.1:{port}"\n'
    )
    pipeline = load_pipeline(str(tmp_path / "p.toml"))
    report = tmp_path / "report.json"
    t = threading.Thread(target=monitor, args=(pipeline,), kwargs={"streams": 1, "report": report})
    t0 = time.monotonic()
    t.start()
    sock = sockets.push(f"tcp://127.0.0.1:{port}", hwm=100)
    try:
        for delay, msg in sends:
            time.sleep(delay)
            sockets.send(sock, msg)
        t.join(timeout=30)
    finally:
        sock.close(0)
    assert not t.is_alive()
    return json.loads(report.read_text()), time.monotonic() - t0


def _worker(final: bool, out: int) -> Stats:
    counters = {"a": {"in": out, "out": out, "dropped": {}}} if out else {}
    return Stats("inference", counters, 0.1, final, name="inference[1]")


def test_the_report_waits_for_stages_that_end_after_postprocess(tmp_path):
    post = Stats("postprocess", {"a": {"in": 30, "out": 30, "dropped": {}}}, 1.0, True, {})
    report, took = _run_monitor(
        tmp_path,
        [
            (0.5, _worker(False, 0)),  # ready, nothing done yet
            (0.1, post),
            (1.0, _worker(True, 12)),  # its last report, a second after postprocess's
        ],
    )
    assert report["stages"]["inference[1]"]["counters"]["a"]["out"] == 12
    assert report["streams"]["a"]["out"] == 30
    assert took < FINALS_WAIT_S + 1.5  # it ended when the last final came, not at the limit


def test_a_stage_that_never_ends_holds_the_report_only_so_long(tmp_path):
    post = Stats("postprocess", {"a": {"in": 30, "out": 30, "dropped": {}}}, 1.0, True, {})
    t0 = time.monotonic()
    report, took = _run_monitor(tmp_path, [(0.5, _worker(False, 5)), (0.1, post)])
    assert report["stages"]["inference[1]"]["counters"]["a"]["out"] == 5  # what it last said
    assert FINALS_WAIT_S <= took - 0.6 < FINALS_WAIT_S + 2.0, time.monotonic() - t0
