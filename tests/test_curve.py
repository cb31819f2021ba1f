"""CURVE on tcp endpoints: `streamseg keys`, authenticated PUSH/PULL and PUB/SUB, refusals.

Real sockets on loopback with keys made by the real command; no mocks.
"""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth
from rtspfixture import free_port

from streamseg.client import Subscriber
from streamseg.commands import keys as keys_command
from streamseg.wire import curve, security, sockets
from streamseg.wire.messages import EndOfStream
from streamseg.wire.receiver import Receiver
from streamseg.wire.results import Result

NOTHING_S = 0.5
"""How long a refused peer is watched for a message that must never come."""


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """server, client (allowed) and stranger (not allowed) keypairs, and allowed/client.key."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("server", "client"):  # the command as a user runs it
        cmd = [sys.executable, "-m", "streamseg.commands.keys", str(d), "--name", name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert f"public key {curve.read_public_key(d / f'{name}.key')}" in out
        assert str(d / f"{name}.key_secret") in out
    parser = argparse.ArgumentParser()
    keys_command.register(parser.add_subparsers())
    args = parser.parse_args(["keys", str(d), "--name", "stranger"])  # as `streamseg keys` does
    assert args.func(args) == 0
    (d / "allowed").mkdir()
    shutil.copy(d / "client.key", d / "allowed")
    yield d
    sockets.close_all(abort=True)  # also stops this process's ZAP handler


def make_result(frame: int = 0, seq: int = 0) -> Result:
    return Result("cam1", frame, 0.0, time.time(), 8, 6, [], seq=seq)


def server(keys: Path) -> security.Security:
    return curve.server_security(keys / "server", keys / "allowed")


def client(keys: Path, name: str = "client") -> security.Security:
    return curve.client_security(keys / name, keys / "server.key")


def test_keys_command_writes_a_zeromq_certificate_pair(keys, capsys):
    mode = stat.S_IMODE((keys / "client.key_secret").stat().st_mode)
    assert mode == 0o600
    public, secret = zmq.auth.load_certificate(keys / "client.key_secret")  # czmq/pyzmq format
    assert zmq.auth.load_certificate(keys / "client.key") == (public, None)
    assert curve.read_keypair(keys / "client") == (public.decode(), secret.decode())
    assert curve.read_keypair(keys / "client.key") == curve.read_keypair(keys / "client")
    assert curve.read_allowed_keys(keys / "allowed") == {public.decode()}
    assert keys_command.main([str(keys), "--name", "client"]) == 2  # never overwrites a key
    assert "client.key exists" in capsys.readouterr().err
    assert zmq.auth.load_certificate(keys / "client.key_secret") == (public, secret)


def test_unusable_key_files_are_one_clear_error(keys, tmp_path):
    (tmp_path / "bad.key").write_text('public-key = "short"\n')
    with pytest.raises(curve.KeyFileError, match="bad.key: a key is not 40 Z85"):
        curve.read_public_key(tmp_path / "bad.key")
    with pytest.raises(curve.KeyFileError, match="cannot read key file .*missing.key_secret"):
        curve.read_keypair(tmp_path / "missing")
    shutil.copy(keys / "client.key", tmp_path / "public.key_secret")
    with pytest.raises(curve.KeyFileError, match="has no secret key"):
        curve.read_keypair(tmp_path / "public")
    (tmp_path / "allowed").mkdir()
    with pytest.raises(curve.KeyFileError, match="no \\*.key files"):
        curve.read_allowed_keys(tmp_path / "allowed")
    with pytest.raises(curve.KeyFileError, match="is not a folder"):
        curve.read_allowed_keys(tmp_path / "missing")


def test_binding_every_interface_without_keys_is_refused(keys):
    port = free_port()
    for make in (sockets.publisher, sockets.pull):
        with pytest.raises(security.InsecureEndpointError) as e:
            make(f"tcp://0.0.0.0:{port}")
        assert "streamseg keys" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(security.InsecureEndpointError):
        sockets.publisher(security.publish_endpoint(f"tcp://*:{port}"))
    pub = sockets.publisher(security.publish_endpoint(str(port)))  # loopback: no keys needed
    pub.close(0)
    with pytest.raises(ValueError, match="no allowed client keys"):
        sockets.pull(f"tcp://127.0.0.1:{port}", security=client(keys))


def test_curve_push_pull_admits_only_allowed_keys(keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pull = sockets.pull(endpoint, security=server(keys))
    receiver = Receiver(pull, name="test")
    good = sockets.push(endpoint, security=client(keys))
    plain = sockets.push(endpoint)
    stranger = sockets.push(endpoint, security=client(keys, "stranger"))
    try:
        sockets.send(good, EndOfStream("good", 1))
        assert receiver.recv(5000) == EndOfStream("good", 1)
        # Not blocking: libzmq drops a refused peer's queue for good (nothing to block on).
        sockets.send(plain, EndOfStream("plain", 1), block=False)
        sockets.send(stranger, EndOfStream("stranger", 1), block=False)
        assert receiver.recv(NOTHING_S * 1000) is None
        sockets.send(good, EndOfStream("good", 2))
        assert receiver.recv(5000) == EndOfStream("good", 2)
        assert receiver.recv(100) is None and receiver.rejected == 0
    finally:
        for sock in (good, plain, stranger, pull):
            sock.close(0)


def test_curve_pub_sub_delivers_only_to_allowed_subscribers(keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.publisher(endpoint, security=server(keys))
    plain = sockets.subscriber(endpoint)
    stranger = sockets.subscriber(endpoint, security=client(keys, "stranger"))
    with Subscriber(endpoint, security=client(keys)) as sub:
        deadline = time.monotonic() + 10
        while (got := sub.recv(0.05)) is None:  # until subscribed
            assert time.monotonic() < deadline, "the allowed subscriber never got a result"
            sockets.publish(pub, make_result(seq=0))
        assert got.stream == "cam1"
        t_end = time.monotonic() + NOTHING_S
        seq = 1
        while time.monotonic() < t_end:
            sockets.publish(pub, make_result(frame=seq, seq=seq))
            seq += 1
            time.sleep(0.01)
        for foreign in (plain, stranger):
            assert sockets.recv_raw(foreign, 0) is None
        assert sub.recv(1.0) is not None
    for sock in (plain, stranger, pub):
        sock.close(0)


@pytest.mark.parametrize(
    ("who", "error"),
    [("stranger", "refused this CURVE key"), ("plain", "one side uses CURVE keys")],
)
def test_a_refused_subscriber_is_told_why(keys, who, error):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.publisher(endpoint, security=server(keys))
    keypair = client(keys, who) if who != "plain" else None
    with Subscriber(endpoint, security=keypair) as sub:
        with pytest.raises(sockets.HandshakeError, match=error):
            sub.recv(5.0)
    pub.close(0)


def test_subscribe_command_with_keys(keys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.publisher(endpoint, security=server(keys))
    cmd = [sys.executable, "-m", "streamseg.cli", "subscribe", endpoint, "--count", "2"]
    cmd += ["--server-key", str(keys / "server.key"), "--keys", str(keys / "client")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seq = 0
        while proc.poll() is None and seq < 1000:
            sockets.publish(pub, make_result(frame=seq, seq=seq))
            seq += 1
            time.sleep(0.01)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        pub.close(0)
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 2 and "received 2 results" in err


def test_subscribe_needs_both_key_options(keys, capsys):
    from streamseg.cli import main

    assert main(["subscribe", "tcp://127.0.0.1:1", "--server-key", str(keys / "server.key")]) == 2
    err = capsys.readouterr().err
    assert "--keys DIR/NAME" in err and len(err.strip().splitlines()) == 1
