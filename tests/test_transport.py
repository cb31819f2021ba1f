"""wire.sockets, wire.security and wire.receiver: publish endpoints, which binds need keys,
MAXMSGSIZE, the accept hook.

Real sockets (ipc:// in a temporary folder), no mocks.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from streamseg.wire import security, sockets
from streamseg.wire.messages import EndOfStream, Frame, Message
from streamseg.wire.receiver import Receiver


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("5555", "tcp://127.0.0.1:5555"),
        (":5555", "tcp://127.0.0.1:5555"),
        ("tcp://:5555", "tcp://127.0.0.1:5555"),
        (" tcp://:5555 ", "tcp://127.0.0.1:5555"),
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        ("localhost:5555", "tcp://localhost:5555"),
        ("tcp://*:5555", "tcp://*:5555"),
        ("*:5555", "tcp://*:5555"),
        ("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5555"),
        ("tcp://[::1]:5555", "tcp://[::1]:5555"),
        ("tcp://10.0.0.7:5555", "tcp://10.0.0.7:5555"),
        ("ipc:///tmp/streamseg/results", "ipc:///tmp/streamseg/results"),
    ],
)
def test_publish_endpoint_binds_loopback_unless_an_address_is_given(text, endpoint):
    assert security.publish_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["", "tcp://", "tcp://*:", "tcp://*:*", "0", "70000", "cam:x"])
def test_publish_endpoint_without_a_port_is_one_clear_error(text):
    with pytest.raises(ValueError, match="port number 1-65535") as e:
        security.publish_endpoint(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("endpoint", "needs"),
    [
        ("ipc:///tmp/x", False),
        ("inproc://x", False),
        ("tcp://127.0.0.1:5555", False),
        ("tcp://127.0.0.2:5555", False),
        ("tcp://localhost:5555", False),
        ("tcp://[::1]:5555", False),
        ("tcp://*:5555", True),
        ("tcp://0.0.0.0:5555", True),
        ("tcp://[::]:5555", True),
        ("tcp://10.0.0.7:5555", True),
        ("tcp://eth0:5555", True),
        ("ws://127.0.0.1:5555", True),
    ],
)
def test_needs_keys_for_every_bind_other_hosts_can_reach(endpoint, needs):
    assert security.needs_keys(endpoint) is needs


def test_check_bind_refuses_network_without_keys_unless_insecure():
    with pytest.raises(security.InsecureEndpointError, match="streamseg keys"):
        security.check_bind("tcp://*:5555", None)
    security.check_bind("tcp://*:5555", None, insecure=True)
    security.check_bind("tcp://127.0.0.1:5555", None)
    public, secret = security.curve_keypair()
    keys = security.Security(public, secret, allowed_keys=frozenset({public}))
    security.check_bind("tcp://*:5555", keys)


def test_security_repr_hides_the_secret_key():
    public, secret = security.curve_keypair()
    text = repr(security.Security(public, secret))
    assert public in text and secret not in text
    assert security.curve_public_key(secret) == public
    with pytest.raises(ValueError, match="CURVE secret key"):
        security.curve_public_key("too short")


def frame(nbytes: int, index: int = 0) -> Frame:
    return Frame("cam1", index, 0.0, 0.0, np.zeros((1, nbytes // 3, 3), np.uint8))


@pytest.fixture
def endpoint(tmp_path) -> str:
    return f"ipc://{tmp_path}/sock"


def test_maxmsgsize_drops_a_larger_message_and_keeps_the_connection_usable(endpoint):
    pull = sockets.pull(endpoint, max_msg_bytes=30_000)
    push = sockets.push(endpoint)
    receiver = Receiver(pull)
    try:
        sockets.send(push, frame(3_000, 0))
        got = receiver.recv(5000)
        assert isinstance(got, Frame) and got.frame == 0
        sockets.send(push, frame(60_000, 1))  # libzmq disconnects this peer: never delivered
        assert receiver.recv(300) is None
        sockets.send(push, frame(3_000, 2))  # the peer reconnected
        got = receiver.recv(5000)
        assert isinstance(got, Frame) and got.frame == 2
        assert receiver.rejected == 0  # dropped by ZeroMQ, never seen here
    finally:
        push.close(0)
        pull.close(0)


def test_receivers_default_to_a_bounded_size_that_takes_a_4k_frame():
    assert 3840 * 2160 * 3 < sockets.DEFAULT_MAX_MSG_BYTES <= 256 << 20


def owner_check(msg: Message, auth: str) -> str | None:
    """Only the source of a stream may end it."""
    if isinstance(msg, EndOfStream) and auth != f"source:{msg.stream}":
        return "not the stream's source"
    return None


def test_receiver_accept_hook_counts_rejections_by_reason(endpoint):
    pull = sockets.pull(endpoint)
    push = sockets.push(endpoint)
    receiver = Receiver(pull, name="postprocess", accept=owner_check)
    try:
        assert receiver.recv(50) is None  # nothing sent: nothing received, nothing counted
        assert (receiver.rejected, receiver.rejected_by) == (0, {})
        sockets.send(push, EndOfStream("cam1", 3), auth="source:cam2")
        push.send_multipart([b"not json"])
        sockets.send(push, EndOfStream("cam1", 3))
        sockets.send(push, frame(3, 7), auth="source:cam1")
        sockets.send(push, EndOfStream("cam1", 8), auth="source:cam1")
        got = [receiver.recv(5000), receiver.recv(5000)]
        assert [type(m).__name__ for m in got] == ["Frame", "EndOfStream"]
        assert got[1] == EndOfStream("cam1", 8)
        assert receiver.recv(100) is None
        assert receiver.rejected_by == {"not the stream's source": 2, "malformed": 1}
        assert receiver.rejected == 3
    finally:
        push.close(0)
        pull.close(0)


def test_rejections_are_logged_once_per_reason_per_10_s(endpoint, caplog):
    now = [100.0]
    pull = sockets.pull(endpoint)
    push = sockets.push(endpoint)
    receiver = Receiver(pull, name="inference", accept=owner_check, clock=lambda: now[0])

    def reject(n: int, malformed: bool = False) -> None:
        """Send `n` messages that are rejected; return once the receiver has seen them all."""
        target = receiver.rejected + n
        for _ in range(n):
            if malformed:
                push.send_multipart([b"{}"])
            else:
                sockets.send(push, EndOfStream("cam1", 1), auth="intruder")
        deadline = time.monotonic() + 5
        while receiver.rejected < target:
            assert receiver.recv(100) is None and time.monotonic() < deadline

    try:
        with caplog.at_level(logging.WARNING, logger="streamseg.wire.receiver"):
            reject(50)
            reject(5, malformed=True)
            now[0] += 9.9
            reject(5)
            now[0] += 0.2
            reject(1)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3, lines
        assert "inference: rejected a message: not the stream's source" in lines[0]
        assert "EndOfStream of 'cam1'" in lines[0] and "intruder" not in "".join(lines)
        assert "malformed" in lines[1]
        assert "56 so far" in lines[2]
        assert receiver.rejected_by == {"not the stream's source": 56, "malformed": 5}
    finally:
        push.close(0)
        pull.close(0)
