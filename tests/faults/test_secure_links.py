"""Stage links over tcp, as when stages run on several hosts: refused beyond loopback without
keys; with the pipeline's CURVE keys a run works and a foreign peer gets nothing in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from faultkit import Run, results_lines
from rtspfixture import free_port

from streamseg.wire import curve
from streamseg.wire.codec import encode
from streamseg.wire.messages import EndOfStream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the run may take 300 s to end

ROOT = Path(__file__).resolve().parents[2]


def tcp_pipeline(tmp: Path, host: str, keys: str = "") -> tuple[Path, dict[str, str]]:
    ports = {k: free_port() for k in ("frames", "detections", "stats")}
    text = (ROOT / "pipelines" / "annotate.toml").read_text()
    for name, port in ports.items():
        text = text.replace(f'ipc://{{run}}/{name}"', f'tcp://{host}:{port}"')
    if keys:  # the shipped file has the [security] table with its keys line commented out
        assert '# keys = "keys/pipeline"' in text
        text = text.replace('# keys = "keys/pipeline"', f'keys = "{keys}"')
    path = tmp / "tcp.toml"
    path.write_text(text)
    return path, {k: f"tcp://127.0.0.1:{p}" for k, p in ports.items()}


def test_network_links_without_keys_are_refused_up_front(clip, random_config, tmp_path):
    pipeline, _ = tcp_pipeline(tmp_path, "0.0.0.0")
    video, _ = clip
    out = subprocess.run(
        [sys.executable, "-m", "streamseg.cli", "annotate", str(video), "--pipeline",
         str(pipeline), "--config", str(random_config), "--results", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "[security] keys" in out.stderr


def test_keyed_links_run_and_shut_out_a_foreign_peer(clip, random_config, tmp_path):
    curve.write_keypair(tmp_path, "pipeline")
    pipeline, endpoints = tcp_pipeline(tmp_path, "0.0.0.0", keys="pipeline")
    video, _ = clip
    run = Run(
        tmp_path, "annotate", "-q", video, "--pipeline", pipeline, "--config", random_config,
        "--results", "r.jsonl", "--report", "report.json",
        "--workers", "1",  # one inference process: the stage this test waits for
    )  # fmt: skip
    run.stage_pid("inference")
    ctx = zmq.Context()
    foreign = ctx.socket(zmq.PUSH)  # no keys: the handshake fails, nothing is delivered
    foreign.setsockopt(zmq.LINGER, 0)
    foreign.connect(endpoints["frames"])
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            foreign.send_multipart(encode(EndOfStream("shapes", 0)), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        time.sleep(0.05)
    foreign.close(0)
    ctx.term()
    code = run.wait(timeout=300)
    assert code == 0, run.stderr()
    lines = results_lines(tmp_path / "r.jsonl")
    assert [r["frame"] for r in lines] == list(range(10))
    assert "Traceback" not in run.stderr()
    # without CURVE its messages would have arrived and been rejected as forged: none did
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["extra"]["inference"]["rejected"] == 0
