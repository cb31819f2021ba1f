"""stage.trust: tokens through the environment and each receiver's accept policy."""

from __future__ import annotations

import numpy as np

from streamseg.stage.trust import (
    ENV,
    Tokens,
    from_inference,
    from_sources,
    from_stages,
    new_token,
    source_name,
)
from streamseg.wire.messages import Detections, EndOfStream, Frame, Stats, StreamStart

IMAGE = np.zeros((4, 4, 3), np.uint8)


def dets(stream: str = "a") -> Detections:
    z = np.zeros
    return Detections(
        stream, 0, 0.0, 0.0, 4, 4, z((0, 4), np.float32), z(0, np.float32), z(0, np.int64),
        z((0, 28, 28), np.float32),
    )  # fmt: skip


def test_tokens_travel_through_the_environment():
    t = Tokens("me", {"source[a]": "x"})
    assert Tokens.from_env({ENV: t.to_env()}) == t
    assert Tokens.from_env({}) == Tokens()
    assert new_token() != new_token() and len(new_token()) >= 32


def test_inference_takes_each_stream_only_from_its_source():
    accept = from_sources({source_name("a"): "ta", source_name("b"): "tb"})
    assert accept(Frame("a", 0, 0.0, 0.0, IMAGE), "ta") is None
    assert accept(EndOfStream("a", 3), "ta") is None
    assert accept(StreamStart("b", 4, 4, 30.0), "tb") is None
    assert accept(EndOfStream("a", 3), "tb") == "forged"  # b's source cannot end a
    assert accept(EndOfStream("a", 3), "") == "forged"
    assert accept(Frame("c", 0, 0.0, 0.0, IMAGE), "ta") == "unknown_stream"
    assert accept(dets(), "ta") == "unexpected_type"


def test_postprocess_takes_only_inference():
    accept = from_inference({"inference": "ti"})
    assert accept(dets(), "ti") is None
    assert accept(EndOfStream("a", 1), "ti") is None
    assert accept(dets(), "ta") == "forged"
    assert accept(Frame("a", 0, 0.0, 0.0, IMAGE), "ti") == "unexpected_type"


def test_supervisor_takes_each_report_only_from_its_stage():
    accept = from_stages({"inference": "ti", "source[a]": "ta"})
    assert accept(Stats("inference", {}, name="inference"), "ti") is None
    assert accept(Stats("source", {}, name="source[a]"), "ta") is None
    assert accept(Stats("inference", {}), "ta") == "forged"  # no name: the stage's
    assert accept(Stats("postprocess", {}, name="source[a]"), "ta") == "unknown_stage"
    assert accept(Stats("source", {}, name="source[zz]"), "ta") == "unknown_stage"
    assert accept(EndOfStream("a", 1), "ta") == "unexpected_type"


def test_without_tokens_nothing_is_checked():
    assert from_sources({}) is None
    assert from_inference({}) is None
    assert from_stages({}) is None
