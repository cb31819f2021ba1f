"""The wire protocol, as one import (temporary): its parts now live by concern.

wire.messages     message dataclasses and PROTOCOL_VERSION
wire.results      the results format (Instance, Result)
wire.codec        encode / decode of the envelope
wire.validation   the content checks of each message type
wire.fields       ProtocolError and single-field checks
wire.previews     the live view's JPEG messages
"""

from streamseg.wire.codec import (
    decode,
    decode_envelope,
    decode_published,
    encode,
    encode_published,
)
from streamseg.wire.fields import ProtocolError, check_int, check_name, check_number
from streamseg.wire.messages import (
    PROTOCOL_VERSION,
    Assign,
    Credit,
    Detections,
    EndOfStream,
    Frame,
    Message,
    Stats,
    StreamStart,
)
from streamseg.wire.previews import (
    MAX_PREVIEW_BYTES,
    Preview,
    decode_preview,
    encode_preview,
    preview_topic,
)
from streamseg.wire.results import Instance, Result

__all__ = [
    "MAX_PREVIEW_BYTES",
    "PROTOCOL_VERSION",
    "Assign",
    "Credit",
    "Detections",
    "EndOfStream",
    "Frame",
    "Instance",
    "Message",
    "Preview",
    "ProtocolError",
    "Result",
    "Stats",
    "StreamStart",
    "check_int",
    "check_name",
    "check_number",
    "decode",
    "decode_envelope",
    "decode_preview",
    "decode_published",
    "encode",
    "encode_preview",
    "encode_published",
    "preview_topic",
]
