"""The push sink: each frame's results record to one reader program (`streamseg.Pipeline`).

The reader binds a ZeroMQ ROUTER socket; this sink connects a DEALER to it and sends every
record in the format subscribers get (wire.codec.encode_published, docs/protocol.md). The
reader says how many more records it can take (credit): a flow control that counts records,
not bytes, so no socket or kernel buffer hides a slow reader. The link (postprocess.sinks.push
and streamseg.api are its two ends):

    sink -> reader   [b"hello"]              a new sink (a new life of the stage): grant credit
                     [topic, header]         one results record (wire.codec.encode_published)
                     [b"end"]                no more records: acknowledge when you have them all
    reader -> sink   [b"credit", b"N"]       N records may come (the reply to "hello")
                     [b"took", b"N"]         N more records were taken: N more may come
                     [b"end"]                every record before the sink's "end" was taken
    (N: 1..10000)

A file run waits for credit: a slow reader slows the run and nothing is lost (the stage's
heartbeat goes on meanwhile); at the end the sink waits for the reader's "end". A stop the stage
was asked for (`should_stop`) ends either wait; a record given up on then is counted "stopped".
A live run keeps real time: a record that finds no credit is dropped and counted
"consumer_slow". delivered: records the reader took (credit came back for them); pending: sent,
not yet known to be taken.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from streamseg.postprocess.sinks.base import FrameOut, SinkCounts
from streamseg.wire import sockets
from streamseg.wire.codec import encode_published
from streamseg.wire.messages import StreamStart

_WAIT_MS = 100
"""While a file run waits for its reader, how often it looks whether it was asked to stop."""

_LIVE_END_S = 2.0
"""At the end of a live run, how long the reader may take to say it has every record."""

_MAX_CREDIT = 10_000


class Push:
    """Results to the reader bound at `endpoint` (see the module docstring)."""

    name = "push"

    def __init__(
        self,
        endpoint: str,
        *,
        live: bool,
        buffer: int = 16,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.sock = sockets.dealer(endpoint, hwm=max(1, buffer) + 2)
        self.live = live
        self.should_stop = should_stop
        self.clock = clock or time.monotonic
        self.credit = 0
        self.sent = 0
        self.taken = 0
        self.dropped: Counter[str] = Counter()
        self.ended = False
        self.closed = False
        self.sock.send_multipart([b"hello"])

    def _hear(self, timeout_ms: int) -> None:
        """Take what the reader said (waiting up to `timeout_ms` for the first message)."""
        while self.sock.poll(timeout_ms):
            timeout_ms = 0
            parts = self.sock.recv_multipart()
            if len(parts) == 2 and parts[0] in (b"credit", b"took") and parts[1].isdigit():
                n = int(parts[1][:6])
                if 1 <= n <= _MAX_CREDIT:
                    self.credit = min(self.credit + n, _MAX_CREDIT)
                    if parts[0] == b"took":
                        self.taken = min(self.sent, self.taken + n)
            elif parts == [b"end"]:
                self.ended = True
            # anything else: not from a streamseg reader; ignored

    def open(self, info: StreamStart) -> None:
        """Nothing: every record names its stream."""

    def write(self, frame: FrameOut) -> None:
        self._hear(0)
        if self.live and self.credit <= 0:
            self.dropped["consumer_slow"] += 1
            return
        while self.credit <= 0:
            if self.should_stop():
                self.dropped["stopped"] += 1
                return
            self._hear(_WAIT_MS)
        self.sock.send_multipart(encode_published(frame.result))
        self.credit -= 1
        self.sent += 1

    def end(self, stream: str) -> None:
        """Nothing: the stream's last record is its last message."""

    def tick(self, now: float) -> None:
        self._hear(0)

    def close(self) -> None:
        """Say "end" and wait for the reader to have every record (a file run: until it does,
        or a stop; a live run: _LIVE_END_S at most)."""
        if self.closed:
            return
        self.closed = True
        self._hear(0)
        if not self.should_stop():
            self.sock.send_multipart([b"end"])
            deadline = self.clock() + _LIVE_END_S
            while not self.ended and not self.should_stop():
                if self.live and self.clock() >= deadline:
                    break
                self._hear(_WAIT_MS)
        if self.ended:
            self.taken = self.sent
        self.sock.close(linger=0)

    def counts(self) -> SinkCounts:
        return SinkCounts(
            delivered=self.taken, dropped=dict(self.dropped), pending=self.sent - self.taken
        )
