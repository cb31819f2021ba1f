"""Cells: a fleet file's cameras in shards, each shard one `streamseg watch` run by a Ray actor.

A fleet file (TOML, flat):

    config = "shapes"            # model config of every cell: shipped name or .toml path
    pipeline = "watch"           # pipeline of every cell: shipped name or .toml path
    max_cameras_per_cell = 4     # a cell takes at most this many cameras
    cells = 0                    # how many cells; 0: as few as max_cameras_per_cell allows
    cell_cpus = 1.0              # Ray resources each cell reserves on its node
    cell_gpus = 0.0
    lease_s = 4.0                # a lost cell's cameras wait at most this (+ Ray's detection)
    keys = ""                    # CURVE keypair DIR/NAME of the cells' publishers (needed when
    allow_keys = ""              #   the nodes are not loopback) and folder of allowed subscribers
    options = []                 # more `streamseg watch` options per cell: ["--device", "cpu"]
    serve = true                 # each cell serves its page and /metrics on its node (HTTP, no
                                 #   password: the live video too); false: none

    [[cameras]]
    name = "gate"                # stream id
    url = "rtsp://10.0.0.5/gate" # anything `streamseg watch` takes
    weight = 1.0                 # relative load (a 4K camera: more), for spreading

`load` and `assign` are pure; `Cell` is the actor's body (ray_backend wraps it): it holds its
cell's lease in the registry (registry.py) while its pipeline runs, publishes on a tcp port
of its node, and stops the pipeline the moment it loses the lease. Frames never pass through Ray:
the cell's stages talk ZeroMQ on their node, subscribers connect to the cell's endpoint.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamseg.fleet.registry import fence_s


class FleetError(ValueError):
    """An unusable fleet file: one line naming the file, the field and the fix (exit 2)."""


@dataclass(frozen=True)
class Camera:
    name: str
    url: str
    weight: float = 1.0


@dataclass(frozen=True)
class Fleet:
    """A fleet file, checked. Paths are made absolute (relative to the file's folder)."""

    cameras: tuple[Camera, ...]
    config: str = "shapes"
    pipeline: str = "watch"
    max_cameras_per_cell: int = 4
    cells: int = 0
    cell_cpus: float = 1.0
    cell_gpus: float = 0.0
    lease_s: float = 4.0
    keys: str = ""
    allow_keys: str = ""
    options: tuple[str, ...] = field(default=())
    serve: bool = True


_FIELDS = {
    "config": str,
    "pipeline": str,
    "max_cameras_per_cell": int,
    "cells": int,
    "cell_cpus": (int, float),
    "cell_gpus": (int, float),
    "lease_s": (int, float),
    "keys": str,
    "allow_keys": str,
    "options": list,
    "serve": bool,
}


def _path_or_name(value: str, base: Path) -> str:
    """A shipped name stays a name; a path (has a '/' or ends .toml) becomes absolute."""
    if value and ("/" in value or value.endswith(".toml")):
        p = Path(value)
        return str(p if p.is_absolute() else (base / p).absolute())
    return value


def load(text: str, *, path: str = "fleet.toml", base: Path = Path(".")) -> Fleet:
    """The fleet of a fleet file's text; FleetError with one line when it is not usable."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetError(f"{path}: not TOML: {e}") from None
    unknown = sorted(set(doc) - set(_FIELDS) - {"cameras"})
    if unknown:
        raise FleetError(f"{path}: unknown field {unknown[0]!r}; fields: {', '.join(_FIELDS)}")
    kw: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        if name in doc:
            value = doc[name]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise FleetError(f"{path}: {name} = {value!r} has the wrong type")
            kw[name] = value
    if kw.get("max_cameras_per_cell", 1) < 1 or kw.get("cells", 0) < 0:
        raise FleetError(f"{path}: max_cameras_per_cell must be >= 1 and cells >= 0")
    if kw.get("lease_s", 4.0) <= 0 or kw.get("cell_cpus", 1) < 0 or kw.get("cell_gpus", 0) < 0:
        raise FleetError(f"{path}: lease_s must be > 0, cell_cpus and cell_gpus >= 0")
    if not all(isinstance(o, str) for o in kw.get("options", [])):
        raise FleetError(f"{path}: options is a list of strings, e.g. ['--device', 'cpu']")
    kw["options"] = tuple(kw.get("options", ()))
    for name in ("config", "pipeline", "keys", "allow_keys"):
        if name in kw:
            kw[name] = _path_or_name(kw[name], base)
    if bool(kw.get("keys")) != bool(kw.get("allow_keys")):
        raise FleetError(f"{path}: give both keys and allow_keys, or neither")
    cams = doc.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise FleetError(
            f'{path}: no cameras: add [[cameras]] tables with name = "..." url = "..."'
        )
    cameras = []
    for i, c in enumerate(cams):
        if not isinstance(c, dict) or not isinstance(c.get("url"), str):
            raise FleetError(f'{path}: camera {i + 1} needs url = "..."')
        name = c.get("name", f"cam{i + 1}")
        weight = c.get("weight", 1.0)
        extra = sorted(set(c) - {"name", "url", "weight"})
        if extra:
            raise FleetError(f"{path}: camera {name!r}: unknown field {extra[0]!r}")
        if not isinstance(name, str) or not name or "=" in name:
            raise FleetError(f"{path}: camera {i + 1}: name must be a non-empty string without =")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
            raise FleetError(f"{path}: camera {name!r}: weight must be a number > 0")
        url = c["url"]
        if "://" not in url and not url.isdigit() and not url.startswith("/dev/"):
            url = str((base / url).absolute())  # a file played live, relative to the fleet file
        cameras.append(Camera(name, url, float(weight)))
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise FleetError(f"{path}: camera name {dup!r} is given twice")
    fleet = Fleet(cameras=tuple(cameras), **kw)
    if fleet.cells and fleet.cells * fleet.max_cameras_per_cell < len(cameras):
        raise FleetError(
            f"{path}: {len(cameras)} cameras do not fit in {fleet.cells} cells of "
            f"max_cameras_per_cell = {fleet.max_cameras_per_cell}"
        )
    return fleet


def read(path: str | os.PathLike[str]) -> Fleet:
    """The fleet file at `path`; FleetError when it cannot be read or used."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise FleetError(f"{p}: cannot read the fleet file ({e.strerror})") from None
    return load(text, path=str(p), base=p.parent)


def assign(cameras: Sequence[Camera], cells: int, max_per_cell: int) -> list[list[Camera]]:
    """Cameras spread over cells: `cells` shards (0: as few as `max_per_cell` allows), the
    heaviest camera first into the lightest shard that has room, so the weights even out. Each
    shard keeps the fleet file's order. Pure; every shard is non-empty where there are at least
    as many cameras as cells."""
    n = cells or max(1, math.ceil(len(cameras) / max_per_cell))
    loads = [0.0] * n
    shards: list[list[int]] = [[] for _ in range(n)]
    order = sorted(range(len(cameras)), key=lambda i: (-cameras[i].weight, i))
    for i in order:
        room = [k for k in range(n) if len(shards[k]) < max_per_cell]
        k = min(room, key=lambda k: (loads[k], len(shards[k]), k))
        shards[k].append(i)
        loads[k] += cameras[i].weight
    return [[cameras[i] for i in sorted(s)] for s in shards if s]


def cell_names(n: int) -> list[str]:
    return [f"cell{k}" for k in range(n)]


def watch_command(
    fleet: Fleet,
    cameras: Sequence[Camera],
    endpoint: str,
    *,
    serve: str = "",
    python: str = sys.executable,
) -> list[str]:
    """The `streamseg watch` a cell runs for its cameras, publishing on `endpoint` and serving
    its page and /metrics on `serve` (HOST:PORT; "": not)."""
    cmd = [python, "-m", "streamseg.cli", "watch", "-q"]
    cmd += [f"{c.name}={c.url}" for c in cameras]
    cmd += ["--pipeline", fleet.pipeline, "--config", fleet.config, "--publish", endpoint]
    if serve:
        cmd += ["--serve", serve]
    if fleet.keys:
        cmd += ["--keys", fleet.keys, "--allow-keys", fleet.allow_keys]
    return cmd + list(fleet.options)


# -- the actor's body (runs on a Ray node) -----------------------------------------------------

BAD_INPUT = 2
"""`streamseg watch`'s exit code for unusable settings: starting it again cannot help."""


class _Tail:
    """Reads a run's stderr in a thread: each line goes on to this process's stderr (the Ray
    worker's log), and the last one is kept for `fleet status`."""

    def __init__(self, stream: Any) -> None:
        self._last = "no message"
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            sys.stderr.write(line)
            if line.strip():
                self._last = line.strip()

    def get(self) -> str:
        self._thread.join(timeout=1.0)  # the run ended: its last lines are on their way
        return self._last[:300]


class _Meter:
    """Subscribes to the cell's own results and keeps each camera's figures (figures.Figures)
    for the lease renewals. With CURVE keys it connects with the cell's own keypair: allowed
    only where the fleet's allow_keys folder holds the cell's public key too; where not, the
    handshake is refused and the cell reports no figures (nothing else changes)."""

    def __init__(self, endpoint: str, cameras: Sequence[str], keys: str = "") -> None:
        from streamseg.client import Subscriber
        from streamseg.fleet.figures import Figures
        from streamseg.wire import curve

        self._figures = Figures()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sub = None
        try:
            security = curve.client_security(keys, f"{keys}.key") if keys else None
        except curve.KeyFileError:  # the pipeline says so itself (exit 2, `fleet status`)
            return
        self._sub = Subscriber(endpoint, cameras, security=security)
        self._thread = threading.Thread(target=self._read, name="cell-meter", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        from streamseg.wire.sockets import HandshakeError

        while not self._stop.is_set():
            try:
                r = self._sub.recv(0.5)
            except HandshakeError:  # the cell's key is not among the allowed: no figures
                return
            if r is not None:
                with self._lock:
                    self._figures.add(r.stream, r.frame, r.latency, time.monotonic())

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return self._figures.figures(time.monotonic())

    def close(self) -> None:
        if self._sub is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sub.close()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_address(fleet: Fleet, host: str) -> tuple[str, str]:
    """(the cell's --serve HOST:PORT, its metrics URL) on the host its publisher binds; ("", "")
    when the fleet serves nothing, or its options name their own --serve (unknown to the
    registry)."""
    if not fleet.serve or "--serve" in fleet.options:
        return "", ""
    shown = f"[{host}]" if ":" in host else host
    address = f"{shown}:{free_port(host)}"
    return address, f"http://{address}/metrics"


class Cell:
    """One cell on its node: claim the lease, run the pipeline while holding it, and again.

    Its loop runs in a thread (the actor answers `state` meanwhile): claim the cell in the
    registry (wait while an earlier holder's lease is live), start `streamseg watch` for the
    cameras, renew every lease_s / 4, and stop the pipeline at once when a renewal is refused or
    none succeeded for fence_s(lease_s). A pipeline that ended on its own is released and
    started again under a new epoch. The pipeline dies with this actor's process (its
    supervisor gets SIGTERM when the parent dies), so a lost node takes its pipelines with it.
    """

    def __init__(self, cell: str, fleet: Fleet, cameras: Sequence[Camera]) -> None:
        import ray

        from streamseg.fleet.registry import NAMESPACE, REGISTRY_NAME

        self.cell, self.fleet, self.cameras = cell, fleet, list(cameras)
        # by name, not a handle passed in: a restarted cell finds the registry on its own
        self.registry = ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        self.host = ray.util.get_node_ip_address()
        self.node = ray.get_runtime_context().get_node_id()
        self.epoch = 0
        self.pid = 0
        self.state_name = "claiming"
        self.started = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"cell-{cell}", daemon=True)
        self._thread.start()

    def state(self) -> dict[str, Any]:
        return {"cell": self.cell, "epoch": self.epoch, "host": self.host, "node": self.node,
                "pid": self.pid, "state": self.state_name, "pipelines": self.started}  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        import ray

        lease_s = self.fleet.lease_s
        names = [c.name for c in self.cameras]
        while not self._stop.is_set():
            endpoint = f"tcp://{self.host}:{free_port(self.host)}"
            serve, metrics = serve_address(self.fleet, self.host)
            try:
                epoch = ray.get(
                    self.registry.claim.remote(
                        self.cell, names, self.host, self.node, endpoint, metrics
                    )
                )
            except ray.exceptions.RayError:
                epoch = None
            if epoch is None:
                self._stop.wait(lease_s / 4)
                continue
            self.epoch = epoch
            self._hold(endpoint, serve)

    def _hold(self, endpoint: str, serve: str) -> None:
        import ray

        from streamseg.stage import PARENT_ENV

        lease_s = self.fleet.lease_s
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        cmd = watch_command(self.fleet, self.cameras, endpoint, serve=serve)
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        last_line = _Tail(proc.stderr)  # forwards the run's stderr to this worker's log
        meter = _Meter(endpoint, [c.name for c in self.cameras], self.fleet.keys)
        self.pid, self.state_name = proc.pid, "running"
        self.started += 1
        last_ok = time.monotonic()
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    ok = ray.get(
                        self.registry.renew.remote(
                            self.cell, self.epoch, self.state_name, meter.figures()
                        ),
                        timeout=lease_s / 4,
                    )
                except ray.exceptions.RayError:  # the registry is out of reach: no renewal
                    ok = None
                if ok:
                    last_ok = sent
                if ok is False or time.monotonic() - last_ok >= fence_s(lease_s):
                    self.state_name = "fenced"
                    return  # finally: the pipeline stops before the lease can be granted again
                if proc.poll() == BAD_INPUT and self.state_name == "running":
                    # a wrong setting (a camera URL, keys) is not mended by starting again:
                    # the cell keeps its lease and says why in `fleet status`
                    self.state_name = f"error: {last_line.get()}"
                elif proc.poll() is not None and proc.returncode != BAD_INPUT:
                    self.state_name = "restarting"
                    self.registry.release.remote(self.cell, self.epoch)
                    self._stop.wait(1.0)  # a pipeline that cannot start does not spin
                    return
                self._stop.wait(lease_s / 4)
        finally:
            meter.close()
            if proc.poll() is None:
                # fenced: at once (its stages get SIGTERM as their supervisor dies); stopping
                # the fleet: SIGTERM, the run closes its outputs
                if self.state_name == "fenced":
                    proc.kill()
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.pid = 0
            if self.state_name != "fenced":
                self.registry.release.remote(self.cell, self.epoch)
