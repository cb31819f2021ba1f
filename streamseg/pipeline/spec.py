"""Pipeline files (pipelines/*.toml): which stages run, how they connect, with which policies.

Pure: reading a file gives a frozen Pipeline; nothing here starts a process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from streamseg import shipped, threads
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


def _workers(path: Path, value: object) -> int | str:
    if value != threads.AUTO and (type(value) is not int or value < 1):
        raise ConfigError(f'{path}: [inference] workers must be "auto" or a whole number >= 1')
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
    ok = isinstance(value, dict) and all(type(v) in (int, float) and v > 0 for v in value.values())
    if not ok:
        raise ConfigError(
            f"{path}: [inference] weights must map stream ids to shares > 0, e.g. {{ cam1 = 2.0 }}"
        )
    return {str(k): float(v) for k, v in value.items()} or None


def load_pipeline(name_or_path: str | Path) -> Pipeline:
    """A pipeline file, given by path or by the name of a shipped one ("annotate", "watch")."""
    try:
        path = shipped.find("pipeline", name_or_path)
    except shipped.NotFound as e:
        raise ConfigError(str(e)) from None
    data = read_toml(path)
    endpoints = dict(data.get("endpoints", {}))
    missing = [k for k in ENDPOINTS if k not in endpoints]
    if missing:
        raise ConfigError(f"{path}: [endpoints] needs {', '.join(missing)}")
    src, inf, post = data.get("source", {}), data.get("inference", {}), data.get("postprocess", {})
    return Pipeline(
        endpoints=endpoints,
        live=bool(src.get("live", False)),
        realtime=bool(src.get("realtime", False)),
        depth=int(inf.get("depth", 1)),
        publish=str(post.get("publish", "")),
        hwdecode=str(src.get("hwdecode", "auto")),
        track=bool(post.get("track", True)),
        track_max_missed=int(post.get("track_max_missed", 60)),
        hang_s=float(data.get("supervisor", {}).get("hang_s", 2.0)),
        workers=_workers(path, inf.get("workers", 1)),
        devices=tuple(str(d) for d in inf.get("devices", [])),
        weights=_weights(path, inf.get("weights", {})),
        serve=str(data.get("supervisor", {}).get("serve", "")),
        keys=_keys_path(path, data.get("security", {}).get("keys", "")),
        path=str(path),
    )
