"""Where inference sends each stream's Detections, StreamStart and EndOfStream: to the
postprocess process that owns the stream (streamseg.shards), over one PUSH socket per process.

With one postprocess (the default) this is the one PUSH to the detections endpoint, as before.
Every message of a stream goes over the same socket, so postprocess sees them in the order
they were sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamseg.shards import route
from streamseg.stage.links import Links
from streamseg.wire import sockets
from streamseg.wire.messages import Detections, EndOfStream, StreamStart


class DetectionsOut:
    """The PUSH sockets towards postprocess, one per shard, and which stream goes where."""

    def __init__(
        self,
        links: Links,
        detections_endpoint: str,
        *,
        hwm: int,
        shard_endpoints: Sequence[str] = (),
        shard_of: Mapping[str, int] | None = None,
    ) -> None:
        """Connects to `shard_endpoints` (shard I's at I), or to `detections_endpoint` alone
        when there are none; `shard_of`: each stream's shard (shards.assign)."""
        endpoints = list(shard_endpoints) or [detections_endpoint]
        self.links = links
        self.table = dict(shard_of or {})
        self.socks: list[Any] = [
            sockets.push(ep, bind=False, hwm=hwm, security=links.security(ep, bind=False))
            for ep in endpoints
        ]

    def send(self, msg: Detections | StreamStart | EndOfStream) -> bool:
        """Send `msg` to its stream's postprocess (blocks while that one is behind)."""
        sock = self.socks[route(msg.stream, self.table, len(self.socks))]
        return self.links.send(sock, msg)


__all__ = ["DetectionsOut"]
