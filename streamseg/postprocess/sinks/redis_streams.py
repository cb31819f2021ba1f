"""The Redis Streams sink (`--sink redis://HOST`): each frame's results appended to its
stream's Redis Stream (redis-py; the `streamseg[redis]` extra).

One Redis Stream per video stream (key template `key`, default streamseg:{stream}); each
entry has one field, "result": the frame's payload as JSON. `XADD ... MAXLEN ~ maxlen` keeps
Redis' memory bounded (approximate: Redis trims whole nodes, so a stream holds at least
`maxlen` entries, a little more at times). Results go in batches of what is queued, one
round trip per batch; entries of a stream are in frame order. A batch whose connection broke
half way is sent again after the reconnect, so a consumer may see an entry twice (at least
once; the record's "frame" tells them apart).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamseg.postprocess.sinks.base import FrameOut
from streamseg.postprocess.sinks.brokers import Backoff, BrokerSink, Outage, message
from streamseg.postprocess.sinks.threaded import Dropped
from streamseg.sink_urls import SinkUrl, number

_POLL_S = 0.05


class RedisStreams(BrokerSink):
    """Results to Redis Streams (see the module docstring); `spec` from sink_urls.parse."""

    def __init__(self, spec: SinkUrl, *, drain_s: float) -> None:
        super().__init__(spec.name, max_pending=spec.max_pending, max_batch=64, drain_s=drain_s)
        self.spec = spec
        self.key = spec.option("key", "streamseg:{stream}") or ""
        self.maxlen = int(number(spec, "maxlen", 10000))
        self.outage = Outage(spec)
        self.backoff = Backoff()
        db = spec.path.strip("/")
        self.client = redis.Redis(
            host=spec.host,
            port=spec.port,
            db=int(db) if db else 0,
            username=spec.username,
            password=spec.secret("password"),
            ssl=spec.tls,
            ssl_ca_certs=spec.option("ca"),
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),  # this sink retries, with its own backoff and count
        )

    def deliver(self, frames: Sequence[FrameOut]) -> None:
        entries = [(self.key.replace("{stream}", f.stream), message(f, self.spec)) for f in frames]
        while True:
            try:
                pipe = self.client.pipeline(transaction=False)
                for key, payload in entries:
                    pipe.xadd(key, {"result": payload}, maxlen=self.maxlen, approximate=True)
                pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError) as e:
                self.outage.lost(e)
                self._pause(self.backoff.take())
                continue
            self.backoff.reset()
            self.outage.up()
            return

    def on_close(self) -> None:
        self.client.close()

    def _pause(self, seconds: float) -> None:
        """Wait `seconds` before the next try; Dropped("closed") once the sink is closing."""
        end = time.monotonic() + seconds
        while True:
            if self._stop:  # close(): the drain time is over
                raise Dropped("closed")
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _POLL_S))
