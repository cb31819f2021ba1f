"""What each stage process is started with: one frozen, typed record per stage. Pure.

The plan (streamseg.pipeline.plan) builds these records; a stage's `main(args)` takes one. They
cross the process boundary as JSON (`to_json` / `from_json`), never pickle: the command line
`python -m streamseg.stage STAGE JSON` is the same whether a supervisor, the fork server or a
person on another host starts the stage, so `from_json` checks every field's name and type and
refuses anything else in one line (ConfigError).

Field names are the JSON keys: keep them stable (stage command lines in docs and scripts use
them). Every record has the three links every stage has: where it reports (`stats_endpoint`),
the CURVE keypair of tcp links (`link_keys`) and debug logging (`verbose`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from streamseg.config import ConfigError, ModelConfig, from_dict
from streamseg.config import to_dict as model_dict


@dataclass(frozen=True, kw_only=True)
class _Links:
    stats_endpoint: str | None = None
    """Where the stage reports its counters and heartbeat (None: nowhere)."""
    link_keys: str | None = None
    """CURVE keypair DIR/NAME of tcp links between stages (None: none)."""
    verbose: bool = False
    """Debug logging."""


@dataclass(frozen=True, kw_only=True)
class _Shards:
    """Where a stage sends Detections and stream controls when the run has several postprocess
    processes (streamseg.shards; the defaults: one, on detections_endpoint)."""

    shard_endpoints: tuple[str, ...] = ()
    """Each postprocess shard's detections endpoint, shard I's at I ((): one postprocess)."""
    shard_of: dict[str, int] | None = None
    """Each stream's shard (streamseg.shards.assign; a stream not listed: shards.route)."""


@dataclass(frozen=True, kw_only=True)
class SourceArgs(_Links):
    """One stream: decode it, stamp each frame, send it to inference."""

    source: str
    """The input: a file path, an rtsp:// URL or a camera."""
    stream: str
    """The stream id frames carry."""
    kind: str
    """"file", "rtsp" or "camera" (source.spec.SourceSpec)."""
    frames_endpoint: str
    live: bool = False
    """A live run: frames never wait for inference (a file is then paced like a camera)."""
    realtime: bool = False
    """A file played at its frame rate."""
    hwdecode: str = "off"
    first_frame: int = 0
    """Frame numbers start here (a restarted source goes on past its last life's)."""
    first_pts: float = 0.0
    """Live sources: timestamps start here, seconds (a restarted source goes on)."""
    stay: bool = False
    """After the end-of-stream, wait to be stopped instead of exiting (supervised runs)."""
    decode_threads: int = 0
    """FFmpeg decode threads (0: its default), from the run's thread budget."""
    # -- live sources only (source.live.run_live; the same defaults) --
    stall_s: float = 5.0
    """No frame for this long: the stream is stalled (reconnect)."""
    retry_max_s: float = 10.0
    """Longest wait between reconnect attempts."""
    give_up_s: float | None = None
    """End a stream that stays down this long (None: never)."""


@dataclass(frozen=True, kw_only=True)
class InferenceArgs(_Links, _Shards):
    """The single inference process: batches frames, runs the model, sends detections."""

    model: ModelConfig
    """The resolved model config (its threads: this process's share of the run's budget)."""
    frames_endpoint: str
    detections_endpoint: str
    streams: int = 1
    """End-of-streams that end the run (0: live, never)."""
    live: bool = False
    depth: int = 1
    """Batches in flight."""
    forward_images: bool = True
    """Send each frame's pixels on: a stage downstream renders (video, live views)."""
    restarted: bool = False
    """A new life after the last one died (frames it held are lost, and counted)."""
    weights: dict[str, float] | None = None
    """A stream's share of inference when streams offer more than it can do."""


@dataclass(frozen=True, kw_only=True)
class DispatcherArgs(_Links, _Shards):
    """Inference with several workers: batches frames and hands them to whichever worker is
    free; the stage's accounting is its own."""

    frames_endpoint: str
    work_endpoint: str
    detections_endpoint: str
    streams: int = 1
    live: bool = False
    depth: int = 1
    max_batch: int = 4
    max_wait_ms: float = 10.0
    weights: dict[str, float] | None = None
    lost_s: float = 2.0
    """A worker silent this long is lost: its batch goes to another."""
    restarted: bool = False


@dataclass(frozen=True, kw_only=True)
class WorkerArgs(_Links, _Shards):
    """One inference worker of a dispatcher: runs the model on the batches it is handed."""

    model: ModelConfig
    """Its device: this worker's; its threads: this worker's share of the run's budget."""
    name: str
    """"inference[I]": how it reports."""
    work_endpoint: str
    detections_endpoint: str
    forward_images: bool = True
    share_cpu: int = 1
    """Workers sharing this host's CPU, for an "auto" thread count resolved in the worker (a
    worker started by hand)."""
    restarted: bool = False


@dataclass(frozen=True, kw_only=True)
class PostprocessArgs(_Links):
    """Order restore, masks, tracking, and the outputs (results, video, PUB, previews)."""

    detections_endpoint: str
    name: str = "postprocess"
    """"postprocess", or "postprocess[I]" for shard I of several (streamseg.shards)."""
    own_streams: tuple[str, ...] = ()
    """The streams this shard owns (a restart counts their ends only); (): every stream."""
    streams: int = 1
    """End-of-streams that end the run (0: live, never)."""
    mask_threshold: float = 0.5
    mask_nms: float = 0.0
    mask_nms_cross_label: float = 0.0
    score_threshold: float = 0.0
    label_names: tuple[str, ...] = ()
    video: str | None = None
    results: str | None = None
    publish: str | None = None
    """ZeroMQ PUB endpoint for subscribers (None: none)."""
    publish_keys: dict[str, str] | None = None
    """{"keys": DIR/NAME, "allow": DIR}: the publisher's CURVE key files (paths, never keys)."""
    push: str | None = None
    """One reader program's endpoint (postprocess.sinks.push; None: none)."""
    push_buffer: int = 16
    n_outputs: int = 1
    track: bool = True
    track_max_missed: int = 60
    restarted: bool = False
    part: int = 0
    """A restarted life writes NAME.partN.EXT (N = part) next to the last life's outputs."""
    preview_endpoint: str | None = None
    """Where live views are sent (--serve; None: none)."""
    live: bool = False
    reorder_capacity: int = 128
    encoder_threads: int = 0
    """libx264 threads (0: its default), from the run's thread budget."""
    sinks: tuple[str, ...] = ()
    """Broker sinks' URLs (--sink, [[sinks]]; streamseg.sink_urls): MQTT, Redis, webhooks."""
    rtsp_out: str | None = None
    """[HOST:]PORT to serve each stream's annotated video on over RTSP (None: none)."""


StageArgs = SourceArgs | InferenceArgs | DispatcherArgs | WorkerArgs | PostprocessArgs

RECORDS: dict[str, type[StageArgs]] = {
    "source": SourceArgs,
    "inference": InferenceArgs,
    "dispatcher": DispatcherArgs,
    "worker": WorkerArgs,
    "postprocess": PostprocessArgs,
}
STAGES = tuple(RECORDS)
"""The stage processes there are (`python -m streamseg.stage STAGE JSON`)."""


def stage_of(args: StageArgs) -> str:
    """The stage `args` start."""
    for stage, record in RECORDS.items():
        if type(args) is record:
            return stage
    raise TypeError(f"not a stage's arguments: {type(args).__name__}")


def as_dict(args: StageArgs) -> dict[str, Any]:
    """Every field, JSON-ready (tuples as lists, the model config as its fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if isinstance(value, ModelConfig):
            value = model_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def to_json(args: StageArgs) -> str:
    """`args` as the JSON text of a stage's command line."""
    return json.dumps(as_dict(args))


def from_json(stage: str, text: str) -> StageArgs:
    """The record of `stage` from JSON text; ConfigError, one line, for anything but an object
    with exactly its fields, each of its type (fields with a default may be left out)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"stage {stage}: the arguments are not valid JSON") from None
    return from_data(stage, data)


def from_data(stage: str, data: object) -> StageArgs:
    """The record of `stage` from decoded JSON, checked as `from_json` says."""
    record = RECORDS.get(stage)
    if record is None:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    if not isinstance(data, dict):
        raise ConfigError(f"stage {stage}: the arguments must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(record)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"stage {stage}: unknown argument(s) {', '.join(unknown)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"stage {stage}: missing argument(s) {', '.join(missing)}")
    hints = typing.get_type_hints(record)
    values = {name: _value(stage, name, value, hints[name]) for name, value in data.items()}
    return record(**values)


def _value(stage: str, name: str, value: object, hint: Any) -> Any:
    """`value` as a field of type `hint`; ConfigError when it is not one."""
    ok, out = _convert(value, hint)
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(f"stage {stage}: argument {name} must be {_name(hint)}, got {shown}")
    if hint is ModelConfig:
        try:
            return from_dict(out)
        except (ConfigError, TypeError) as e:  # TypeError: a required field left out
            raise ConfigError(f"stage {stage}: argument model: {e}") from None
    return out


def _convert(value: object, hint: Any) -> tuple[bool, Any]:
    """(whether `value` is a `hint`, the value as one): JSON lists become tuples, whole numbers
    floats where a float is wanted; a bool is never a number."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, out = _convert(value, option)
            if ok:
                return True, out
        return False, None
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return type(value) is int, value
    if hint is float:
        return type(value) in (int, float), float(value) if type(value) in (int, float) else None
    if hint is str:
        return isinstance(value, str), value
    if hint is ModelConfig:  # checked field by field by config.from_dict
        return isinstance(value, dict), value
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, list):
            return False, None
        items = [_convert(v, item) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict:
        key, item = typing.get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, None
        items = {k: _convert(v, item) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    raise TypeError(f"no JSON form for {hint!r}")  # a field of a type this module does not know


def _name(hint: Any) -> str:
    """A type as a user reads it: "a string or null", "a list of strings"."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_name(h) for h in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_name(typing.get_args(hint)[0])[2:]}s"
    if origin is dict:
        return f"an object of {_name(typing.get_args(hint)[1])[2:]}s"
    names = {
        type(None): "null",
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        ModelConfig: "a model config object",
    }
    return names.get(hint, getattr(hint, "__name__", str(hint)))
