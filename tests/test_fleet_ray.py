"""The fleet and the corpus on a real multi-node Ray cluster on this one machine.

Each test re-executes tests/fleet_ray_driver.py inside a network namespace that has only
loopback (`unshare -n`, root): Ray advertises the machine's interface address even when told
127.0.0.1, and in there the only address is 127.0.0.1. The driver builds the cluster
(ray.cluster_utils.Cluster: a head and two worker nodes, one CPU each, small object stores),
runs the real `streamseg` commands against it, removes a node, and writes what it saw as JSON;
the assertions are here. Without Ray installed, or without root for the namespace, they skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamseg.fleet import manifest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(600)]

DRIVER = Path(__file__).with_name("fleet_ray_driver.py")


@pytest.fixture(scope="module")
def netns() -> None:
    """Skip unless this process may make a loopback-only network namespace."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a loopback-only namespace")
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip("needs root (unshare -n) for a loopback-only network namespace")


def drive(tmp_path: Path, *args: str | Path, timeout: float) -> dict:
    facts = tmp_path / "facts.json"
    script = f"ip link set lo up && exec {sys.executable} {DRIVER} " + " ".join(
        f"'{a}'" for a in (*args, facts)
    )
    # Ray's token authentication, with a token of this test's own (not ~/.ray/auth_token):
    # every node, driver and `streamseg` command below inherits it
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert facts.exists(), proc.stderr[-3000:]
    got = json.loads(facts.read_text())
    got["driver_stderr"] = proc.stderr[-3000:]
    return got


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from streamseg.tools import synth

    d = tmp_path_factory.mktemp("corpus")
    for i in range(8):
        synth.write_clip(d / f"clip{i}.mp4", d / "gt.json", seed=i, frames=10, size=(96, 64))
    (d / "gt.json").unlink()
    return d


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """The shipped weights at tiny sizes, one frame a batch: the same results every run."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(
        '[model]\narch = "shapes_mobilenet_v3_fpn"\nweights = "streamseg:shapes.pt"\n'
        'labels = ["__background__", "circle", "square", "triangle"]\nscore_threshold = 0.0\n'
        "detections_per_img = 5\nmin_size = 128\nmax_size = 160\n"
        '[runtime]\ndevice = "cpu"\nmax_batch = 1\nmax_wait_ms = 0.0\nthreads = 1\n'
    )
    return path


def test_corpus_on_ray_survives_a_lost_node_and_does_each_file_once(
    netns, clips, tiny_config, tmp_path
):
    outdir = tmp_path / "out"
    facts = drive(tmp_path, "corpus", clips, outdir, tiny_config, timeout=560)
    assert facts.get("done_before_removal", 0) >= 2, facts
    first, second = facts["first"], facts["second"]
    assert first["rc"] == 0, first["stderr"][-3000:]
    assert second["rc"] == 0 and "8 done before, 0 to do" in second["stderr"], second

    entries, torn = manifest.read(outdir / manifest.MANIFEST)
    assert torn == 0
    assert sorted(e.name for e in entries) == [f"clip{i}.mp4" for i in range(8)]  # each once
    for e in entries:
        data = (outdir / f"{Path(e.name).stem}.jsonl").read_bytes()
        frames = [json.loads(line)["frame"] for line in data.splitlines()]
        assert frames == list(range(10)) and e.frames == 10, e.name  # whole, none duplicated
        assert manifest.is_done(e, e.key, {k: len(data) for k in e.outputs})
    assert not list((outdir / ".partial").iterdir())

    # equal to `streamseg annotate` of the file alone (two of them: each run costs seconds)
    for name in ("clip0", "clip7"):
        ref = tmp_path / f"{name}.ref.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "streamseg.cli", "annotate", "-q", clips / f"{name}.mp4",
             "--results", ref, "--config", tiny_config],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert (outdir / f"{name}.jsonl").read_bytes() == ref.read_bytes()


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory, tiny_config) -> Path:
    """4 cameras (files played live: 2 minutes at 5 fps each), 2 cells of 2, CURVE keys."""
    from streamseg.tools import synth

    d = tmp_path_factory.mktemp("fleet")
    for i in range(4):
        synth.write_clip(d / f"cam{i}.mp4", d / "gt.json", seed=i, frames=600, size=(96, 64), fps=5)
    (d / "gt.json").unlink()
    # CURVE, as between hosts: the cells' keypair, a viewer's, and the cells' own public key
    # among the allowed (each cell measures its cameras from its own results)
    for where, name in (("keys", "cell"), ("keys/allowed", "viewer")):
        made = subprocess.run(
            [sys.executable, "-m", "streamseg.cli", "keys", d / where, "--name", name],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    shutil.copy(d / "keys" / "cell.key", d / "keys" / "allowed" / "cell.key")
    cameras = "".join(f'[[cameras]]\nname = "cam{i}"\nurl = "cam{i}.mp4"\n' for i in range(4))
    path = d / "fleet.toml"
    path.write_text(
        f'config = "{tiny_config}"\nmax_cameras_per_cell = 2\ncells = 2\ncell_cpus = 1\n'
        f'lease_s = 3.0\nkeys = "keys/cell"\nallow_keys = "keys/allowed"\n{cameras}'
    )
    return path


def test_a_lost_node_cell_moves_and_its_cameras_resume_within_30_s(netns, fleet_file, tmp_path):
    facts = drive(tmp_path, "fleet", fleet_file, timeout=560)
    assert facts.get("all_before_s"), facts
    moved = facts["moved_cameras"]
    assert len(moved) == 2, facts
    assert facts["back_after_s"] and facts["back_after_s"] <= 30, facts
    assert facts["all_after"] == ["cam0", "cam1", "cam2", "cam3"]  # the --fleet subscriber too
    assert facts["followed"] >= 1  # it followed the cell to its new endpoint
    cli = facts["subscribe_cli"]  # `streamseg subscribe --fleet`, after the move
    assert cli["rc"] == 0, cli["stderr"]
    lines = cli["stdout"].splitlines()
    assert len(lines) == 60 and {line.split()[1] for line in lines} == {f"cam{i}" for i in range(4)}

    after = facts["status_after"]
    (move,) = after["moves"]
    assert move["cell"] == facts["moved_cell"] and sorted(move["cameras"]) == moved
    assert move["from_node"] != move["to_node"] and move["to_epoch"] == move["from_epoch"] + 1
    rows = {r["camera"]: r for r in after["cameras"]}
    assert {rows[c]["state"] for c in rows} == {"running"}
    for status in (facts["status_before"], after):  # each cell measures its cameras
        for r in status["cameras"]:
            assert r["fps"] > 0 and r["latency_ms"] > 0 and r["dropped"] >= 0, r
    assert all(rows[c]["epoch"] == move["to_epoch"] for c in moved)
    assert facts["fleet"]["rc"] == 0 and "moved" in facts["fleet"]["stderr"]
    # one Prometheus file_sd list: every cell's /metrics, labelled with its cell and host
    sd = facts["metrics"]
    assert sorted(g["labels"]["cell"] for g in sd["groups"]) == ["cell0", "cell1"], sd
    assert {g["labels"]["host"] for g in sd["groups"]} == {"127.0.0.1"}
    assert sorted(",".join(sorted(g["labels"]["cameras"].split(","))) for g in sd["groups"]) == (
        sorted(",".join(sorted(r["camera"] for r in facts["status_before"]["cameras"]
                               if r["cell"] == cell)) for cell in ("cell0", "cell1"))
    )  # fmt: skip
    assert set(sd["answered"].values()) == {True}, sd["answered"]

    # never two cells at once: per camera, every result of one epoch came before any result
    # of the next, and a camera's results all came from one cell
    spans: dict[tuple[str, int], list[float]] = {}
    cell_of: dict[str, set[str]] = {}
    for when, cell, epoch, stream, _frame in facts["rows"]:
        span = spans.setdefault((stream, epoch), [when, when])
        span[1] = when
        cell_of.setdefault(stream, set()).add(cell)
    assert all(len(c) == 1 for c in cell_of.values()), cell_of
    for camera in moved:
        old, new = spans[(camera, move["from_epoch"])], spans[(camera, move["to_epoch"])]
        assert old[1] < new[0], (camera, old, new)
        assert old[1] < facts["removed_at_s"] + 1  # the lost cell stopped with its node


def test_rebalance_moves_a_cell_onto_a_node_that_joined(netns, fleet_file, tmp_path):
    facts = drive(tmp_path, "rebalance", fleet_file, timeout=560)
    before = facts["status_before"]
    assert len({r["node"] for r in before["cameras"]}) == 1, before  # both cells on one node
    reb = facts["rebalance"]
    assert reb["rc"] == 0 and "moved 1 cells" in reb["stdout"], reb
    after = facts["status_after"]
    assert len({r["node"] for r in after["cameras"]}) == 2, after  # one cell a node now
    (move,) = after["moves"]
    assert move["from_node"] != move["to_node"]
    assert {r["state"] for r in after["cameras"]} == {"running"}
    for r in after["cameras"]:
        assert r["fps"] > 0, r  # every camera delivers, the moved ones from the new node
    spans: dict[tuple[str, int], list[float]] = {}
    for when, _cell, epoch, stream, _frame in facts["rows"]:
        spans.setdefault((stream, epoch), [when, when])[1] = when
    for camera in move["cameras"]:
        old, new = spans[(camera, move["from_epoch"])], spans[(camera, move["to_epoch"])]
        assert old[1] < new[0], (camera, old, new)  # never two cells at once
    assert "rebalance" in facts["fleet"]["stderr"]
