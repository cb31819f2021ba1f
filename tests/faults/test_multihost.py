"""One pipeline over four "hosts": Linux network namespaces joined by veth pairs to a bridge.

A source host, two inference hosts (the dispatcher and a worker on one, a second worker on the
other) and a sink host each run `streamseg stage NAME --pipeline X.toml`; every link is tcp
with CURVE (the pipeline's keys), and a monitor on the root namespace collects their stats. A
peer with other keys is refused. Needs root (`ip netns`); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from faultkit import results_lines
from harness import wait_until

from streamseg.tools import synth
from streamseg.wire import curve

pytestmark = pytest.mark.slow

SUBNET = "10.77.{}"
HOSTS = ("src", "inf1", "inf2", "sink")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _netns_allowed() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces (ip netns)"
    probe = f"ssgprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"`ip netns` is not allowed here: {getattr(e, 'stderr', e)}".strip()
    return None


@pytest.fixture
def hosts():
    """{host: (namespace, address)} on a bridge; the root namespace is .254."""
    why = _netns_allowed()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    net = SUBNET.format(int(tag) % 200 + 20)
    bridge = f"ssgbr{tag}"
    made: list[str] = []
    out = {}
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, host in enumerate(HOSTS):
            ns, a, b = f"ssg{tag}{host}", f"ssg{tag}{i}a", f"ssg{tag}{i}b"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", b, "netns", ns)
            _ip("link", "set", a, "master", bridge)
            _ip("link", "set", a, "up")
            _ip("-n", ns, "addr", "add", f"{net}.{i + 1}/24", "dev", b)
            _ip("-n", ns, "link", "set", b, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out[host] = (ns, f"{net}.{i + 1}")
        out["root"] = (None, f"{net}.254")
        yield out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def _stage(tmp: Path, ns: str | None, name: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamseg.cli", "stage", name, *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    log = open(tmp / f"{name}-{len(list(tmp.glob('*.log')))}.log", "w")
    return subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)


def _logs(tmp: Path) -> str:
    return "\n".join(f.read_text() for f in sorted(tmp.glob("*.log")))


def test_four_hosts_over_tcp_with_curve(hosts, random_config, tmp_path):
    clip = tmp_path / "a.mp4"
    synth.write_clip(clip, tmp_path / "a.json", seed=31, frames=30, size=(160, 120), fps=25)
    curve.write_keypair(tmp_path / "keys", "pipeline")
    curve.write_keypair(tmp_path / "other", "pipeline")  # a stranger's keys
    inf1, sink, root = hosts["inf1"][1], hosts["sink"][1], hosts["root"][1]
    pipeline = tmp_path / "multihost.toml"
    pipeline.write_text(
        "[endpoints]\n"
        f'frames = "tcp://{inf1}:5601"\n'
        f'work = "tcp://{inf1}:5602"\n'
        f'detections = "tcp://{sink}:5603"\n'
        f'stats = "tcp://{root}:5604"\n'
        "[inference]\n"
        "workers = 2\n"
        "[security]\n"
        'keys = "keys/pipeline"\n'
    )
    p = ["--pipeline", str(pipeline), "--config", str(random_config)]
    procs = {
        "monitor": _stage(tmp_path, None, "monitor", *p, "--report", "monitor.json"),
        "postprocess": _stage(tmp_path, hosts["sink"][0], "postprocess", *p,
                              "--results", "r.jsonl"),
        "inference": _stage(tmp_path, hosts["inf1"][0], "inference", *p, "-v"),
        "worker0": _stage(tmp_path, hosts["inf1"][0], "worker", *p, "--worker", "0"),
        "worker1": _stage(tmp_path, hosts["inf2"][0], "worker", *p, "--worker", "1"),
    }  # fmt: skip
    # a peer with other keys tries to send frames: refused in the handshake
    ctx = zmq.Context()
    stranger = ctx.socket(zmq.PUSH)
    public, secret = curve.read_keypair(tmp_path / "other" / "pipeline")
    server = curve.read_keypair(tmp_path / "keys" / "pipeline")[0]
    stranger.curve_publickey, stranger.curve_secretkey = public.encode(), secret.encode()
    stranger.curve_serverkey = server.encode()
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(f"tcp://{inf1}:5601")
    try:
        # the source starts once both workers are loaded: else the first one ready may do it all
        wait_until(
            lambda: all(f"inference[{i}] is ready" in _logs(tmp_path) for i in (0, 1)),
            120, "both workers to be ready", log=lambda: _logs(tmp_path),
        )  # fmt: skip
        procs["source"] = _stage(tmp_path, hosts["src"][0], "source", f"a={clip}", *p)
        deadline = time.monotonic() + 300
        for name in ("source", "postprocess", "inference", "worker0", "worker1", "monitor"):
            code = procs[name].wait(timeout=max(1.0, deadline - time.monotonic()))
            logs = "\n".join(f.read_text() for f in sorted(tmp_path.glob("*.log")))
            assert code == 0, f"{name} exited with {code}:\n{logs}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stranger.close(0)
        ctx.term()
    logs = "\n".join(f.read_text() for f in sorted(tmp_path.glob("*.log")))
    assert "Traceback" not in logs
    lines = results_lines(tmp_path / "r.jsonl")
    assert [r["frame"] for r in lines] == list(range(30)) and {r["stream"] for r in lines} == {"a"}
    assert "refused a CURVE client whose key is not allowed" in logs
    report = json.loads((tmp_path / "monitor.json").read_text())
    assert report["streams"]["a"]["in"] == 30 and report["streams"]["a"]["out"] == 30
    stages = report["stages"]
    assert {"source[a]", "inference", "inference[0]", "inference[1]", "postprocess"} <= set(stages)
    # both inference hosts did work
    assert all(
        stages[f"inference[{i}]"]["counters"].get("a", {}).get("out", 0) > 0 for i in (0, 1)
    ), json.dumps(stages, indent=1)
