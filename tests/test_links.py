"""stage.links: a stage's tokens, CURVE keys and reporter, built once; real sockets on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from rtspfixture import free_port

from streamseg.accounting import Counters
from streamseg.stage.links import Links
from streamseg.stage.trust import ENV, Tokens, from_sources, from_stages
from streamseg.wire import sockets
from streamseg.wire.curve import KeyFileError, write_keypair
from streamseg.wire.messages import EndOfStream, Stats
from streamseg.wire.receiver import Receiver

WAIT_MS = 10_000


@pytest.fixture
def keypair(tmp_path) -> Path:
    write_keypair(tmp_path, "pipeline")
    return tmp_path / "pipeline"


def test_security_only_for_tcp_links_of_a_pipeline_with_keys(keypair):
    links = Links("inference", keys=keypair)
    assert links.security("ipc:///tmp/x", bind=True) is None
    assert links.security(None, bind=False) is None
    server = links.security("tcp://127.0.0.1:5000", bind=True)
    client = links.security("tcp://127.0.0.1:5000", bind=False)
    assert server is not None and client is not None
    assert server.allowed_keys == {server.public_key} and server.server_key == ""
    assert client.server_key == client.public_key == server.public_key
    assert Links("inference").security("tcp://127.0.0.1:5000", bind=True) is None
    # The keypair is read once: a file gone later changes nothing for this process.
    for f in keypair.parent.iterdir():
        f.unlink()
    assert links.security("tcp://127.0.0.1:5001", bind=False) == client
    with pytest.raises(KeyFileError, match="cannot read key file"):
        Links("postprocess", keys=keypair).security("tcp://127.0.0.1:5000", bind=True)


def test_from_env_reads_the_tokens_the_supervisor_gave():
    env = {ENV: Tokens("own", {"source[a]": "ta"}).to_env()}
    links = Links.from_env("inference[1]", stats_endpoint="ipc:///tmp/s", environ=env)
    assert (links.stage, links.auth, links.peers) == ("inference", "own", {"source[a]": "ta"})
    alone = Links.from_env("postprocess", environ={})  # a stage started by hand: no tokens
    assert (alone.stage, alone.auth, alone.peers) == ("postprocess", "", {})


def test_reports_and_messages_are_signed_and_secured_over_curve(keypair):
    """A source's reporter and frames link, from its Links, reach a supervisor and an inference
    that check its token, over tcp with the pipeline's keys."""
    stats_ep, frames_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    runner = Links("supervisor", keys=keypair)
    env = {ENV: Tokens("ta", {}).to_env()}
    source = Links.from_env("source[a]", link_keys=keypair, stats_endpoint=stats_ep, environ=env)
    inference = Links("inference", Tokens("ti", {"source[a]": "ta"}), keys=keypair)
    try:
        stats = Receiver(
            sockets.pull(stats_ep, security=runner.security(stats_ep, bind=True)),
            accept=from_stages({"source[a]": "ta"}),
        )
        frames = Receiver(
            sockets.pull(frames_ep, security=inference.security(frames_ep, bind=True)),
            accept=from_sources(inference.peers),
        )
        counters = Counters()
        counters.count_in("a", 3)
        reporter = source.reporter(counters)
        reporter.ended = True
        reporter.final()
        push = sockets.push(frames_ep, security=source.security(frames_ep, bind=False))
        assert source.send(push, EndOfStream("a", 3))
        got = stats.recv(WAIT_MS)
        assert isinstance(got, Stats) and (got.stage, got.sender, got.final) == (
            "source",
            "source[a]",
            True,
        )
        assert got.ended and got.counters["a"]["in"] == 3
        assert frames.recv(WAIT_MS) == EndOfStream("a", 3)
        assert stats.rejected == frames.rejected == 0
    finally:
        sockets.close_all(abort=True)
