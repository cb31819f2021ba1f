"""Postprocess shards: which postprocess process owns which stream, and where its detections go.
Pure.

One postprocess process does every stream's paste, RLE, tracking, drawing and encoding on one
thread: with the model on a GPU it is the first stage to run out of time (a 1080p frame with 20
large instances and a video costs about 65 ms of CPU, most of it tracking, drawing and encoding:
docs/benchmarks.md). With
`[postprocess] shards = N` the run has N postprocess processes, "postprocess[0]" ..
"postprocess[N-1]", each owning a fixed set of streams and binding its own detections endpoint;
inference (or its dispatcher and workers) sends each stream's Detections, StreamStart and
EndOfStream to its owner's endpoint (`route`). A stream's messages all go to one process, in
the order they were sent, so its order restore, tracking and accounting are as with one.

The plan (streamseg.pipeline.plan) decides everything here once: `count` (how many), `assign`
(which stream to which shard, round-robin in the sources' order, so that N streams on N shards
get one each) and `endpoint` (each shard's detections endpoint). shards = 1 is exactly the
graph without shards: one process named "postprocess" on the detections endpoint.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

AUTO = "auto"
MAX_SHARDS = 64
"""Most postprocess processes a pipeline may ask for."""
STREAMS_PER_SHARD = 1
"""With "auto" on a GPU: streams one postprocess process takes. One: a process did not keep up
with one 1080p30 stream with 20 large instances and a video (docs/benchmarks.md), so more
streams a process would only add to its backlog."""
SINGLE_OUTPUTS = ("publish", "push", "rtsp_out")
"""Outputs that bind one endpoint or port for every stream: one postprocess process only."""


def count(
    requested: int | str, *, cuda: bool, streams: int, cores: int, single: Sequence[str] = ()
) -> int:
    """How many postprocess processes a run has.

    requested: `[postprocess] shards` ("auto" or a number >= 1); streams: the run's sources;
    cores: this host's usable cores; single: the run's outputs of SINGLE_OUTPUTS, which need one
    process ("auto" then gives 1; a number above 1 is a ValueError naming them).
    "auto": 1 on CPU (the model needs the cores more); with the model on a GPU one process per
    STREAMS_PER_SHARD streams, at most one per 2 cores beside the GPU feeder (each has its
    encoders' threads too). Never more processes than streams (one without any streams).
    """
    if requested == AUTO:
        if not cuda or single:
            return 1
        by_streams = -(-streams // STREAMS_PER_SHARD)
        return max(1, min(by_streams, (cores - 1) // 2, MAX_SHARDS))
    if type(requested) is not int or not 1 <= requested <= MAX_SHARDS:
        raise ValueError(f'shards must be "auto" or a whole number in [1, {MAX_SHARDS}]')
    if requested > 1 and single:
        need = "needs" if len(single) == 1 else "need"
        raise ValueError(
            f"shards = {requested}: {' and '.join(single)} {need} one postprocess process "
            "(every stream served on one endpoint); set shards = 1"
        )
    return max(1, min(requested, streams))


def assign(streams: Sequence[str], shards: int) -> dict[str, int]:
    """Each stream's shard: round-robin in the order given (the sources' order), so that the
    streams spread evenly and the same sources always give the same table."""
    if shards < 1:
        raise ValueError(f"need shards >= 1, got {shards}")
    return {stream: i % shards for i, stream in enumerate(streams)}


def route(stream: str, table: Mapping[str, int], shards: int) -> int:
    """The shard that owns `stream`: its entry in `table` (assign's), else a stable hash of its
    id (a stream the plan did not list still always goes to one shard). 0 for one shard."""
    if shards <= 1:
        return 0
    shard = table.get(stream)
    if shard is not None and 0 <= shard < shards:
        return shard
    return zlib.crc32(stream.encode("utf-8")) % shards


def name(shard: int, shards: int) -> str:
    """The process name of a shard: "postprocess" when it is the only one, else
    "postprocess[I]"."""
    return "postprocess" if shards <= 1 else f"postprocess[{shard}]"


def endpoint(detections: str, shard: int) -> str:
    """Shard `shard`'s detections endpoint: shard 0 binds `detections` itself, shard I an ipc
    path (or inproc name) beside it, "DETECTIONS-I". ValueError for tcp://, where the ports
    would have to be chosen by hand."""
    if shard == 0:
        return detections
    if detections.startswith(("ipc://", "inproc://")):
        return f"{detections}-{shard}"
    raise ValueError(
        f"detections = {detections}: postprocess shards need an ipc:// detections endpoint "
        "(set shards = 1 for tcp://)"
    )


__all__ = ["AUTO", "MAX_SHARDS", "assign", "count", "endpoint", "name", "route"]
