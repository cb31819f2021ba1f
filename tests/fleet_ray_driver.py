"""The Ray side of tests/test_fleet_ray.py, run inside a network namespace with only loopback.

Ray advertises this machine's interface address even when told 127.0.0.1; inside
`unshare -n` (root) the only interface is loopback, so the whole multi-node cluster binds and
advertises 127.0.0.1 and nothing of it is reachable from outside. The test starts

    unshare -n sh -c "ip link set lo up && python fleet_ray_driver.py SCENARIO ARGS... FACTS"

and asserts on the facts (JSON) this script writes; it asserts nothing itself. Scenarios:

  corpus CLIPS OUTDIR CONFIG FACTS   `streamseg annotate --ray` with a worker node removed once
                                     two files are done, then the same command again
  fleet FLEET.toml FACTS             `streamseg fleet` with 2 cells; the node of a cell that is
                                     not the head's is removed once every camera delivered;
                                     results are read with FLEET.toml's folder's keys/ (CURVE)
  rebalance FLEET.toml FACTS         both cells on one node; a node joins; `streamseg fleet
                                     rebalance`
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

STORE = 80 * 2**20  # the smallest object store Ray takes: nothing big goes through it
SYSTEM = {  # a lost node is noticed in ~3 s (default: 15 s)
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def cluster(head_cpus: int = 1, workers: tuple[int, ...] = (1, 1)) -> Cluster:
    """A head and worker nodes with these CPUs (the head also runs the registry)."""
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "object_store_memory": STORE,
            "include_dashboard": False,
            "_system_config": SYSTEM,
        },
    )
    for cpus in workers:
        c.add_node(num_cpus=cpus, object_store_memory=STORE)
    c.wait_for_nodes()
    return c


def streamseg(*args: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamseg.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def until(what, timeout: float, interval: float = 0.2):
    """what()'s first truthy value within `timeout` s, else None (the facts say so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(interval)
    return None


def manifest_lines(outdir: Path) -> int:
    try:
        return len((outdir / "manifest.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def corpus(clips: str, outdir: str, config: str, facts: dict) -> None:
    c = cluster()
    try:
        args = ("annotate", clips, "-o", outdir, "--ray", c.address, "--retries", "4",
                "--config", config)  # fmt: skip
        t0 = time.monotonic()
        first = streamseg(*args)
        facts["done_before_removal"] = until(
            lambda: manifest_lines(Path(outdir)) >= 2 or first.poll() is not None, 240
        ) and manifest_lines(Path(outdir))
        workers = [n for n in c.list_all_nodes() if n is not c.head_node]
        c.remove_node(workers[0], allow_graceful=False)
        facts["removed_at_s"] = time.monotonic() - t0
        _, err = first.communicate(timeout=400)
        facts["first"] = {"rc": first.returncode, "stderr": err, "s": time.monotonic() - t0}
        second = streamseg(*args)
        _, err = second.communicate(timeout=120)
        facts["second"] = {"rc": second.returncode, "stderr": err}
    finally:
        c.shutdown()


class Collector(threading.Thread):
    """Every fleet result received: (receive time, cell, epoch, stream, frame)."""

    def __init__(self, address: str, keys: Path) -> None:
        super().__init__(daemon=True)
        from streamseg.fleet.ray_backend import fleet_subscriber
        from streamseg.wire import curve

        security = curve.client_security(keys / "allowed" / "viewer", keys / "cell.key")
        self.sub = fleet_subscriber(address, refresh_s=0.5, security=security)
        self.rows: list[tuple[float, str, int, str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            r = self.sub.recv(0.2)
            if r is not None:
                self.rows.append((time.monotonic(), r.cell, r.epoch, r.result.stream,
                                  r.result.frame))  # fmt: skip

    def streams_since(self, t: float, epoch_above: dict[str, int] | None = None) -> set[str]:
        above = epoch_above or {}
        return {s for (when, cell, epoch, s, _) in list(self.rows)
                if when >= t and epoch > above.get(cell, 0)}  # fmt: skip


def status(address: str) -> dict:
    proc = streamseg("fleet", "status", "--ray", address, "--json")
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        return {"error": err}
    return json.loads(out)


def scrape(address: str, sd_file: Path) -> dict:
    """`fleet status --prometheus-sd`'s file, and per target whether its /metrics answered
    with a streamseg_ metric."""
    import urllib.request

    proc = streamseg("fleet", "status", "--ray", address, "--prometheus-sd", str(sd_file))
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        return {"error": err}
    groups = json.loads(sd_file.read_text())
    answered = {}
    for g in groups:
        for target in g["targets"]:
            try:
                with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as r:
                    body = r.read().decode()
                answered[target] = "\nstreamseg_" in "\n" + body
            except OSError as e:
                answered[target] = str(e)
    return {"groups": groups, "answered": answered}


def measured(st: dict) -> dict | None:
    """The status when every camera's cell has measured its rate (else None)."""
    rows = st.get("cameras", [])
    return st if rows and all(r.get("fps") for r in rows) else None


def fleet(fleet_file: str, facts: dict) -> None:
    c = cluster()
    proc = None
    try:
        t0 = time.monotonic()
        proc = streamseg("fleet", fleet_file, "--ray", c.address)
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        until(lambda: "error" not in status(c.address), 60, interval=1.0)
        keys = Path(fleet_file).parent / "keys"  # CURVE: the cells' and a viewer's keypairs
        collector = Collector(c.address, keys)
        collector.start()
        cameras = {"cam0", "cam1", "cam2", "cam3"}
        facts["all_before_s"] = until(lambda: collector.streams_since(0) >= cameras, 180) and (
            time.monotonic() - t0
        )
        before = until(lambda: measured(status(c.address)), 30, interval=1.0) or status(c.address)
        facts["status_before"] = before
        facts["metrics"] = scrape(c.address, Path(fleet_file).parent / "sd.json")
        head = c.head_node.node_id
        rows = before.get("cameras", [])
        moved = next((r for r in rows if r["node"] != head), None)
        if moved is None:
            facts["error"] = "no cell off the head node"
            return
        cell, node = moved["cell"], moved["node"]
        facts["moved_cell"] = cell
        facts["moved_cameras"] = sorted(r["camera"] for r in rows if r["cell"] == cell)
        epochs = {r["cell"]: r["epoch"] for r in rows}
        target = next(n for n in c.list_all_nodes() if n.node_id == node)
        t_remove = time.monotonic()
        c.remove_node(target, allow_graceful=False)
        back = until(
            lambda: (
                collector.streams_since(t_remove, {cell: epochs[cell]})
                >= set(facts["moved_cameras"])
            ),
            90,
        )
        facts["back_after_s"] = back and time.monotonic() - t_remove
        t_after = time.monotonic()
        facts["all_after"] = sorted(
            until(lambda: collector.streams_since(t_after) >= cameras and cameras, 60) or []
        )
        after = until(lambda: measured(status(c.address)), 30, interval=1.0)
        facts["status_after"] = after or status(c.address)
        sub = streamseg("subscribe", "--fleet", c.address, "--count", "60", "--timeout", "30",
                        "--keys", str(keys / "allowed" / "viewer"),
                        "--server-key", str(keys / "cell.key"))  # fmt: skip
        out, err = sub.communicate(timeout=120)
        facts["subscribe_cli"] = {
            "rc": sub.returncode,
            "stdout": out[-6000:],
            "stderr": err[-2000:],
        }
        facts["followed"] = collector.sub.followed
        collector.stop.set()
        collector.join(timeout=10)
        facts["removed_at_s"] = t_remove - t0
        facts["rows"] = [[round(w - t0, 3), cl, ep, s, f] for (w, cl, ep, s, f) in collector.rows]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            facts["fleet"] = {"rc": proc.returncode, "stderr": err[-4000:]}
        ray.shutdown()
        c.shutdown()


def rebalance(fleet_file: str, facts: dict) -> None:
    """Both cells on one 2-CPU node; a second joins; `streamseg fleet rebalance`."""
    c = cluster(head_cpus=0, workers=(2,))
    proc = None
    try:
        t0 = time.monotonic()
        proc = streamseg("fleet", fleet_file, "--ray", c.address)
        ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
        until(lambda: "error" not in status(c.address), 60, interval=1.0)
        collector = Collector(c.address, Path(fleet_file).parent / "keys")
        collector.start()
        before = until(lambda: measured(status(c.address)), 180, interval=1.0)
        facts["status_before"] = before or status(c.address)
        c.add_node(num_cpus=2, object_store_memory=STORE)
        c.wait_for_nodes()
        t_move = time.monotonic()
        reb = streamseg("fleet", "rebalance", "--ray", c.address)
        out, err = reb.communicate(timeout=200)
        facts["rebalance"] = {"rc": reb.returncode, "stdout": out, "stderr": err[-2000:]}
        after = until(lambda: measured(status(c.address)), 60, interval=1.0)
        facts["status_after"] = after or status(c.address)
        facts["moved_at_s"] = t_move - t0
        collector.stop.set()
        collector.join(timeout=10)
        facts["rows"] = [[round(w - t0, 3), cl, ep, s, f] for (w, cl, ep, s, f) in collector.rows]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            facts["fleet"] = {"rc": proc.returncode, "stderr": err[-4000:]}
        ray.shutdown()
        c.shutdown()


def main() -> None:
    scenario, *args, out = sys.argv[1:]
    facts: dict = {"scenario": scenario}
    try:
        if scenario == "corpus":
            corpus(*args, facts)
        elif scenario == "rebalance":
            rebalance(*args, facts)
        else:
            fleet(*args, facts)
    finally:
        Path(out).write_text(json.dumps(facts))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
