"""Pipeline files (pipelines/*.toml): which stages run, how they connect, with which policies.

Pure: reading a file gives a frozen Pipeline; nothing here starts a process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from streamseg import shards, shipped, threads
from streamseg.config import ConfigError, read_toml

ENDPOINTS = ("frames", "detections", "stats")
WORK_ENDPOINT = "ipc://{run}/work"
"""Where inference workers ask the dispatcher for work, unless [endpoints] work says."""


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file (pipelines/*.toml): which stages, which endpoints, which policies."""

    endpoints: dict[str, str]
    live: bool = False
    realtime: bool = False
    depth: int = 1
    publish: str = ""
    hwdecode: str = "auto"
    track: bool = True
    """Give every instance a track id (postprocess.tracking), per stream."""
    track_max_missed: int = 60
    """A track survives this many frames without its object (occlusion, a missed detection)."""
    keys: str = ""
    """CURVE keypair DIR/NAME every stage holds; tcp:// links between stages then admit only
    it ("": none; a tcp endpoint beyond loopback is then refused)."""
    hang_s: float = 2.0
    """A stage silent (no heartbeat) for this long is hung: killed, then handled as dead."""
    workers: int | str = 1
    """Inference processes; more than 1: a dispatcher hands batches to whichever is free.
    "auto": decided where the run starts (`resolve_workers`, streamseg.threads.workers)."""
    devices: tuple[str, ...] = ()
    """Worker i runs on devices[i % len] (e.g. "cuda:0", "cuda:1"); (): the config's device."""
    weights: dict[str, float] | None = None
    """A stream's share of inference when streams offer more than it can do (default 1.0)."""
    serve: str = ""
    """[HOST:]PORT to serve the run's page, live views, /metrics and /healthz on ("": none)."""
    sinks: tuple[str, ...] = ()
    """[[sinks]]: broker sinks' URLs, each table's options in its query (streamseg.sink_urls)."""
    shards: int | str = 1
    """Postprocess processes, each owning some streams (streamseg.shards); "auto": 1 on CPU,
    more with the model on a GPU and several streams. 1: one process, as without shards."""
    path: str = ""


def _keys_path(pipeline: Path, keys: str) -> str:
    """A keys path of a pipeline file, relative to the file's folder like a config's paths."""
    if not keys:
        return ""
    return str(pipeline.parent / keys) if not Path(keys).is_absolute() else keys


def insecure_endpoints(pipeline: Pipeline) -> list[str]:
    """The endpoints of `pipeline` that are reachable from other hosts but have no keys."""
    from streamseg.wire.security import needs_keys

    if pipeline.keys:
        return []
    return [f"{k} = {v}" for k, v in pipeline.endpoints.items() if needs_keys(v)]


MAX_WORKERS = 64
"""Most inference worker processes a pipeline may ask for (each holds a model)."""


def _workers(path: Path, value: object) -> int | str:
    if value != threads.AUTO and (type(value) is not int or not 1 <= value <= MAX_WORKERS):
        raise ConfigError(
            f'{path}: [inference] workers must be "auto" or a whole number in [1, {MAX_WORKERS}]'
        )
    return value  # type: ignore[return-value]


def _shards(path: Path, value: object) -> int | str:
    if value != shards.AUTO and (type(value) is not int or not 1 <= value <= shards.MAX_SHARDS):
        raise ConfigError(
            f'{path}: [postprocess] shards must be "auto" or a whole number in '
            f"[1, {shards.MAX_SHARDS}]"
        )
    return value  # type: ignore[return-value]


def resolve_workers(pipeline: Pipeline, device: str) -> Pipeline:
    """`pipeline` with `workers = "auto"` replaced by the number for this machine and the
    model config's `device` (streamseg.threads.workers)."""
    if pipeline.workers != threads.AUTO:
        return pipeline
    n = threads.workers(
        threads.AUTO,
        cores=threads.usable_cores(),
        cuda=threads.is_cuda(device),
        devices=len(pipeline.devices),
    )
    return replace(pipeline, workers=n)


def _weights(path: Path, value: object) -> dict[str, float] | None:
    """[inference] weights = { STREAM = SHARE, ... }: shares > 0."""
    ok = isinstance(value, dict) and all(
        type(v) in (int, float) and math.isfinite(v) and 0 < v <= 1e6 for v in value.values()
    )
    if not ok:
        raise ConfigError(
            f"{path}: [inference] weights must map stream ids to shares in (0, 1e6], "
            "e.g. { cam1 = 2.0 }"
        )
    return {str(k): float(v) for k, v in value.items()} or None


# The allowed range of every numeric setting: (least, most). Checked where the file is read,
# so that a bad value is one line naming the file and the key, not a traceback in a stage.
RANGES: dict[str, tuple[float, float]] = {
    "depth": (1, 64),  # frames kept per stream while the model is busy
    "track_max_missed": (0, 100_000),  # frames (an hour at 25 fps is 90,000)
    "hang_s": (0.1, 3600.0),  # seconds; NaN or inf would turn hang detection off
}


class _Table:
    """One table of a pipeline file, read with every value checked in type and range."""

    def __init__(self, path: Path, data: dict[str, Any], name: str) -> None:
        self.path, self.name = path, name
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        self.values = table

    def _fail(self, key: str, must: str) -> NoReturn:
        raise ConfigError(
            f"{self.path}: [{self.name}] {key} must be {must}, got {self.values[key]!r}"
        )

    def boolean(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if type(value) is not bool:
            self._fail(key, "true or false")
        return value

    def text(self, key: str, default: str) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str):
            self._fail(key, "a string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.values.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._fail(key, "a list of strings")
        return tuple(value)

    def integer(self, key: str, default: int) -> int:
        value = self.values.get(key, default)
        lo, hi = RANGES[key]
        if type(value) is not int or not lo <= value <= hi:
            self._fail(key, f"an integer in [{lo:g}, {hi:g}]")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.values.get(key, default)
        lo, hi = RANGES[key]
        if type(value) not in (int, float) or not (math.isfinite(value) and lo <= value <= hi):
            self._fail(key, f"a number in [{lo:g}, {hi:g}]")
        return float(value)


def _sinks(path: Path, value: object) -> tuple[str, ...]:
    """[[sinks]] tables (url = "mqtt://...", options as keys) as checked URLs."""
    from streamseg.sink_urls import from_table, parse

    where = f"{path}: [[sinks]]"
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f'{where} must be tables: [[sinks]] url = "mqtt://HOST" ...')
    urls = tuple(from_table(t, where) for t in value)
    for url in urls:
        parse(url, origin=where)
    return urls


def load_pipeline(name_or_path: str | Path) -> Pipeline:
    """A pipeline file, given by path or by the name of a shipped one ("annotate", "watch");
    ConfigError (one line: the file, the key, what it must be) for any value out of type or
    range."""
    try:
        path = shipped.find("pipeline", name_or_path)
    except shipped.NotFound as e:
        raise ConfigError(str(e)) from None
    data = read_toml(path)
    ends = _Table(path, data, "endpoints")
    endpoints = {k: ends.text(k, "") for k in ends.values}
    missing = [k for k in ENDPOINTS if k not in endpoints]
    if missing:
        raise ConfigError(f"{path}: [endpoints] needs {', '.join(missing)}")
    src, inf = _Table(path, data, "source"), _Table(path, data, "inference")
    post, sup = _Table(path, data, "postprocess"), _Table(path, data, "supervisor")
    security = _Table(path, data, "security")
    return Pipeline(
        endpoints=endpoints,
        live=src.boolean("live", False),
        realtime=src.boolean("realtime", False),
        depth=inf.integer("depth", 1),
        publish=post.text("publish", ""),
        hwdecode=src.text("hwdecode", "auto"),
        track=post.boolean("track", True),
        track_max_missed=post.integer("track_max_missed", 60),
        hang_s=sup.number("hang_s", 2.0),
        workers=_workers(path, inf.values.get("workers", 1)),
        devices=inf.texts("devices"),
        weights=_weights(path, inf.values.get("weights", {})),
        serve=sup.text("serve", ""),
        sinks=_sinks(path, data.get("sinks", [])),
        shards=_shards(path, post.values.get("shards", 1)),
        keys=_keys_path(path, security.text("keys", "")),
        path=str(path),
    )
