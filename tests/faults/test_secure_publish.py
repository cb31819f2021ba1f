"""Publishing beyond loopback, as the README shows it: refused without CURVE keys; with them,
an allowed subscriber gets results and a foreign one (no keys, or keys not allowed) nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import zmq
from faultkit import Run
from rtspfixture import free_port

from streamseg.client import Subscriber
from streamseg.tools import synth
from streamseg.wire import curve

pytestmark = pytest.mark.slow


def keys(tmp, *names, folder="") -> None:
    for name in names:
        curve.write_keypair(tmp / folder if folder else tmp, name)


def test_network_publish_without_keys_is_refused_before_anything_starts(clip, tmp_path):
    video, _ = clip
    cmd = [sys.executable, "-m", "streamseg.cli", "watch", str(video), "--publish", "tcp://*:5599"]
    out = subprocess.run(
        cmd,
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "streamseg keys" in out.stderr


def test_only_allowed_subscribers_get_results(random_config, tmp_path):
    keys(tmp_path, "server", "mallory")
    keys(tmp_path, "alice", folder="allowed")
    clip = tmp_path / "c.mp4"
    synth.write_clip(clip, tmp_path / "c.json", seed=2, frames=250, size=(160, 120), fps=25)
    port = free_port()
    run = Run(
        tmp_path, "watch", "-q", clip, "--config", random_config,
        "--publish", f"tcp://0.0.0.0:{port}", "--keys", tmp_path / "server",
        "--allow-keys", tmp_path / "allowed",
    )  # fmt: skip
    endpoint = f"tcp://127.0.0.1:{port}"
    alice = Subscriber(
        endpoint,
        timeout_s=120,
        security=curve.client_security(tmp_path / "allowed/alice", tmp_path / "server.key"),
    )
    # a foreign subscriber: plain pyzmq, right server key, but a key the pipeline never allowed
    ctx = zmq.Context()
    mallory = ctx.socket(zmq.SUB)
    public, secret = curve.read_keypair(tmp_path / "mallory")
    mallory.curve_publickey, mallory.curve_secretkey = public.encode(), secret.encode()
    mallory.curve_serverkey = curve.read_public_key(tmp_path / "server.key").encode()
    plain = ctx.socket(zmq.SUB)
    for s in (mallory, plain):
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(endpoint)
    try:
        got = []
        for result in alice:
            got.append(result)
            if len(got) >= 10:
                break
        assert [r.stream for r in got] == ["c"] * 10
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # results keep flowing to alice meanwhile
            assert not mallory.poll(100) and not plain.poll(100)
    finally:
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait(timeout=60)
        for s in (mallory, plain):
            s.close(0)
        ctx.term()
    assert code == 0, run.stderr()
