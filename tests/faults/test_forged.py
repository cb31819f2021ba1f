"""A hostile peer on every endpoint of a running file annotation: forged controls, forged
results, forged reports, malformed and oversized messages. The run must finish every frame, exit
0, write nothing it did not compute, and count what it refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq
from faultkit import Run, lines_so_far, results_lines

from streamseg.tools import synth
from streamseg.wire.codec import encode
from streamseg.wire.messages import Detections, EndOfStream, Stats

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # 180 s for results, 300 s for the end

EMPTY = {
    "boxes": np.zeros((0, 4), np.float32),
    "scores": np.zeros(0, np.float32),
    "labels": np.zeros(0, np.int64),
    "masks": np.zeros((0, 28, 28), np.float32),
}


def endpoints(run: Run) -> dict[str, str]:
    """The run's endpoints, read from its inference stage's command line (as any local process
    of the same user could)."""
    pid = run.stage_pid("inference")
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    kwargs = json.loads(cmd[cmd.index(b"inference") + 1])
    return {k: kwargs[f"{k}_endpoint"] for k in ("frames", "detections", "stats")}


def test_forged_and_malformed_messages_change_nothing(random_config, tmp_path):
    clip = tmp_path / "c.mp4"
    synth.write_clip(clip, tmp_path / "c.json", seed=4, frames=120, size=(160, 120), fps=25)
    run = Run(
        tmp_path, "annotate", "-q", clip, "--config", random_config, "--results", "r.jsonl",
        "--report", "report.json",
        "--workers", "1",  # the inference process itself binds frames (no dispatcher)
    )  # fmt: skip
    ep = endpoints(run)
    run.wait_for(lambda: len(lines_so_far(tmp_path / "r.jsonl")) >= 1, 180, "first results")
    ctx = zmq.Context()
    socks = {}
    for name, endpoint in ep.items():
        socks[name] = ctx.socket(zmq.PUSH)
        socks[name].setsockopt(zmq.LINGER, 2000)
        socks[name].connect(endpoint)
    forged_eos = encode(EndOfStream("c", 0))  # would end the stream early
    fake = Detections("c", 5, 0.2, 0.0, 160, 120, **EMPTY)
    socks["frames"].send_multipart(forged_eos)
    socks["detections"].send_multipart(encode(fake))  # a result for a real stream
    socks["detections"].send_multipart(encode(EndOfStream("c", 1)))
    lie = Stats("source", {"c": {"in": 999, "out": 999, "lost": True}}, name="source[c]")
    socks["stats"].send_multipart(encode(lie))  # would change the exit code
    huge = json.dumps({"v": 1, "type": "frame", "stream": "c", "frame": 1, "pts": 0.0,
                       "wall_time": 0.0, "arrays": [{"name": "image", "dtype": "uint8",
                       "shape": [2**32, 2**32, 3]}]}).encode()  # fmt: skip
    socks["frames"].send_multipart([huge, b"\0" * 12])
    socks["frames"].send_multipart([b"[" * 100_000])
    socks["frames"].send_multipart([np.zeros(70 << 20, np.uint8).data])  # over MAXMSGSIZE
    for s in socks.values():
        s.close()
    ctx.term()
    code = run.wait(timeout=300)
    err = run.stderr()
    assert code == 0, err
    lines = results_lines(tmp_path / "r.jsonl")
    assert [r["frame"] for r in lines] == list(range(120))  # every frame, none forged
    assert all(r["instances"] or r["frame"] != 5 for r in lines) or lines[5]["pts"] != 0.2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sources"]["c"]["in"] == 120 and report["postprocess"]["c"]["out"] == 120
    assert "rejected a message: forged" in err
    assert "Traceback" not in err
