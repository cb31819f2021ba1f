"""streamseg.wire.transport: publish endpoints, which binds need keys, MAXMSGSIZE.

Real sockets (ipc:// in a temporary folder), no mocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamseg.wire import transport
from streamseg.wire.protocol import Frame


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
    assert transport.publish_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["", "tcp://", "tcp://*:", "tcp://*:*", "0", "70000", "cam:x"])
def test_publish_endpoint_without_a_port_is_one_clear_error(text):
    with pytest.raises(ValueError, match="port number 1-65535") as e:
        transport.publish_endpoint(text)
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
    assert transport.needs_keys(endpoint) is needs


def test_check_bind_refuses_network_without_keys_unless_insecure():
    with pytest.raises(transport.InsecureEndpointError, match="streamseg keys"):
        transport.check_bind("tcp://*:5555", None)
    transport.check_bind("tcp://*:5555", None, insecure=True)
    transport.check_bind("tcp://127.0.0.1:5555", None)
    public, secret = transport.curve_keypair()
    security = transport.Security(public, secret, allowed_keys=frozenset({public}))
    transport.check_bind("tcp://*:5555", security)


def test_security_repr_hides_the_secret_key():
    public, secret = transport.curve_keypair()
    text = repr(transport.Security(public, secret))
    assert public in text and secret not in text
    assert transport.curve_public_key(secret) == public
    with pytest.raises(ValueError, match="CURVE secret key"):
        transport.curve_public_key("too short")


def frame(nbytes: int, index: int = 0) -> Frame:
    return Frame("cam1", index, 0.0, 0.0, np.zeros((1, nbytes // 3, 3), np.uint8))


@pytest.fixture
def endpoint(tmp_path) -> str:
    return f"ipc://{tmp_path}/sock"


def test_maxmsgsize_drops_a_larger_message_and_keeps_the_connection_usable(endpoint):
    pull = transport.pull(endpoint, max_msg_bytes=30_000)
    push = transport.push(endpoint)
    receiver = transport.Receiver(pull)
    try:
        transport.send(push, frame(3_000, 0))
        got = receiver.recv(5000)
        assert isinstance(got, Frame) and got.frame == 0
        transport.send(push, frame(60_000, 1))  # libzmq disconnects this peer: never delivered
        assert receiver.recv(300) is None
        transport.send(push, frame(3_000, 2))  # the peer reconnected
        got = receiver.recv(5000)
        assert isinstance(got, Frame) and got.frame == 2
        assert receiver.rejected == 0  # dropped by ZeroMQ, never seen here
    finally:
        push.close(0)
        pull.close(0)


def test_receivers_default_to_a_bounded_size_that_takes_a_4k_frame():
    assert 3840 * 2160 * 3 < transport.DEFAULT_MAX_MSG_BYTES <= 256 << 20
