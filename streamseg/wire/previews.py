"""Previews: one stream's annotated frame as a JPEG, postprocess -> supervisor, for the live view
of `streamseg --serve`. Sent as [topic, header, jpeg], with the envelope's header rules
(wire.codec) and its own three parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamseg.wire.codec import as_buffer, as_frames, check_version, parse_header
from streamseg.wire.fields import (
    MAX_AUTH,
    ProtocolError,
    check_name,
    exact_keys,
    fail,
    finite,
    integer,
    text,
)
from streamseg.wire.messages import PROTOCOL_VERSION

MAX_PREVIEW_BYTES = 16 << 20
"""Largest JPEG a preview may carry."""


@dataclass(frozen=True)
class Preview:
    """One stream's annotated frame as a JPEG, for the live view (`streamseg --serve`).

    Sent as [topic, header, jpeg]: the topic is the stream id and a NUL byte (preview_topic), so
    a subscription to one stream never matches another whose id starts the same way."""

    stream: str
    frame: int
    wall_time: float
    """Capture time (Unix seconds) of the frame."""
    jpeg: bytes


def preview_topic(stream: str) -> bytes:
    return stream.encode() + b"\0"


def encode_preview(p: Preview, *, auth: str = "") -> list[bytes]:
    header = {"v": PROTOCOL_VERSION, "type": "preview", "stream": p.stream, "frame": p.frame}
    header.update(wall_time=p.wall_time, **({"auth": auth} if auth else {}))
    return [preview_topic(p.stream), json.dumps(header).encode(), bytes(p.jpeg)]


def decode_preview(parts: Sequence[Any]) -> tuple[Preview, str]:
    """(preview, the sender's auth) from [topic, header, jpeg]; ProtocolError for anything else."""
    frames = as_frames(parts)
    if len(frames) != 3:
        raise ProtocolError(f"a preview has 3 parts, not {len(frames)}")
    topic, head, jpeg = (as_buffer(f) for f in frames)
    header = parse_header(head)
    check_version(header, "v")
    if header.get("type") != "preview":
        fail("type", '"preview"', header.get("type"))
    keys = {"type", "stream", "frame", "wall_time"} | ({"auth"} & header.keys())
    exact_keys(header, frozenset(keys), "header")
    stream = check_name(header.get("stream"), "stream")
    if bytes(topic) != preview_topic(stream):
        fail("topic", "the stream id and a NUL byte", bytes(topic)[:64])
    if not 2 < len(jpeg) <= MAX_PREVIEW_BYTES or bytes(jpeg[:2]) != b"\xff\xd8":
        fail("jpeg", f"a JPEG of at most {MAX_PREVIEW_BYTES} bytes", bytes(jpeg[:8]))
    auth = text(header.get("auth", ""), "auth", max_len=MAX_AUTH)
    preview = Preview(
        stream,
        integer(header.get("frame"), "frame"),
        finite(header.get("wall_time"), "wall_time", lo=0.0),
        bytes(jpeg),
    )
    return preview, auth
