"""The publish sink: each frame's results record to ZeroMQ subscribers (`streamseg.client`)."""

from __future__ import annotations

from streamseg.postprocess.sinks.base import FrameOut, SinkCounts
from streamseg.wire import security, sockets
from streamseg.wire.messages import StreamStart


class Publish:
    """Results on a PUB socket bound at `endpoint`, under each stream's topic, numbered per
    stream (`Result.seq`: a subscriber sees a gap where it missed some). Sending never
    blocks: PUB drops for a subscriber that falls behind (in libzmq, uncounted here)."""

    name = "publish"

    def __init__(self, endpoint: str, *, security: security.Security | None = None) -> None:
        self.sock = sockets.publisher(endpoint, security=security)
        self.sent = 0

    def open(self, info: StreamStart) -> None:
        """Nothing: subscribers filter by topic."""

    def write(self, frame: FrameOut) -> None:
        sockets.publish(self.sock, frame.result)
        self.sent += 1

    def end(self, stream: str) -> None:
        """Nothing: the stream's last result is its last message."""

    def tick(self, now: float) -> None:
        """Nothing to do while idle."""

    def close(self) -> None:
        self.sock.close()  # linger 0 (sockets.publisher): never waits for a subscriber

    def counts(self) -> SinkCounts:
        return SinkCounts(delivered=self.sent)
