"""The MQTT sink (`--sink mqtt://HOST`): each frame's results as one message on its stream's
topic (paho-mqtt; the `streamseg[mqtt]` extra).

One MQTT connection per stream, so each stream has its own last will: its retained status
topic (`status_topic`, default TOPIC/status) says "online" while the stream runs and
"offline" when it ends, when the run stops, and (the broker publishing the will) when the
process dies or its connection is lost. QoS 0 or 1; with QoS 1 a result counts as delivered
once the broker acknowledged it. Results of a stream go out in order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from streamseg.postprocess.sinks.base import FrameOut
from streamseg.postprocess.sinks.brokers import BrokerSink, Outage, message
from streamseg.postprocess.sinks.threaded import Dropped
from streamseg.sink_urls import SinkUrl
from streamseg.wire.messages import StreamStart

log = logging.getLogger(__name__)

_POLL_S = 0.05
"""How often a wait for the broker looks whether the sink is closing."""


def topic_word(stream: str) -> str:
    """A stream id as a topic level: MQTT's wildcards + and # (allowed in stream ids, not in a
    topic one publishes to) become _."""
    return stream.replace("+", "_").replace("#", "_")


class Mqtt(BrokerSink):
    """Results to an MQTT broker (see the module docstring); `spec` from sink_urls.parse."""

    def __init__(self, spec: SinkUrl, *, drain_s: float) -> None:
        super().__init__(spec.name, max_pending=spec.max_pending, max_batch=64, drain_s=drain_s)
        self.spec = spec
        self.qos = int(spec.option("qos", "0") or 0)
        self.topic = spec.option("topic", "streamseg/{stream}") or ""
        self.status_topic = spec.option("status_topic") or self.topic + "/status"
        self.outage = Outage(spec)
        self.clients: dict[str, paho.Client] = {}

    # -- the sink's thread ---------------------------------------------------------------------

    def on_open(self, info: StreamStart) -> None:
        self._client(info.stream)

    def deliver(self, frames: Sequence[FrameOut]) -> None:
        sent: list[paho.MQTTMessageInfo] = []
        for frame in frames:
            client = self._client(frame.stream)
            topic = self.topic.replace("{stream}", topic_word(frame.stream))
            payload = message(frame, self.spec)
            while True:
                self._wait_connected(client)
                info = client.publish(topic, payload, qos=self.qos)
                if info.rc == paho.MQTT_ERR_SUCCESS:
                    sent.append(info)
                    break
                # not connected after all (lost just now): paho keeps no QoS 0 message then
                self._pause()
        for info in sent:  # QoS 1: acknowledged (paho resends unacknowledged after a reconnect)
            while not info.is_published():
                info.wait_for_publish(_POLL_S)  # returns at the acknowledgement, or in _POLL_S
                self._pause(0.0)

    def on_end(self, stream: str) -> None:
        client = self.clients.pop(stream, None)
        if client is not None:
            self._goodbye(client, stream)

    def on_close(self) -> None:
        for stream, client in list(self.clients.items()):
            self._goodbye(client, stream)
        self.clients.clear()

    # -- connections ---------------------------------------------------------------------------

    def _client(self, stream: str) -> paho.Client:
        client = self.clients.get(stream)
        if client is not None:
            return client
        spec = self.spec
        prefix = spec.option("client_id") or "streamseg"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{prefix}-{self.name}-{stream}-{os.getpid()}",  # unique per broker
            protocol=paho.MQTTv311,
        )
        if spec.username is not None:
            client.username_pw_set(spec.username, spec.secret("password"))
        if spec.tls:
            client.tls_set(ca_certs=spec.option("ca"))
        status = self.status_topic.replace("{stream}", topic_word(stream))
        client.will_set(status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect(status)
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.connect_async(spec.host, spec.port, keepalive=30)
        client.loop_start()  # its own network thread: connects, and reconnects with backoff
        self.clients[stream] = client
        return client

    def _on_connect(self, status: str) -> Any:
        def on_connect(client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                self.outage.lost(reason)
                return
            client.publish(status, "online", qos=1, retain=True)
            self.outage.up()

        return on_connect

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure or reason.value != 0:
            self.outage.lost(reason)

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        self.outage.lost("connection refused or timed out")

    def _wait_connected(self, client: paho.Client) -> None:
        while not client.is_connected():
            self._pause()

    def _pause(self, seconds: float = _POLL_S) -> None:
        """Wait a moment for the broker; Dropped("closed") once the sink is closing."""
        if self._stop:  # close(): the drain time is over
            raise Dropped("closed")
        time.sleep(seconds)

    def _goodbye(self, client: paho.Client, stream: str) -> None:
        """The stream's status "offline" (retained), then disconnect; at most a second."""
        try:
            if client.is_connected():
                status = self.status_topic.replace("{stream}", topic_word(stream))
                client.publish(status, "offline", qos=1, retain=True).wait_for_publish(1.0)
            client.disconnect()
        except (RuntimeError, ValueError) as e:  # not connected any more: the will says it
            log.debug("%s: %s: goodbye: %s", self.spec.shown, stream, e)
        finally:
            client.loop_stop()
