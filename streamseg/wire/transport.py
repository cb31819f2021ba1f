"""The transport, as one import (temporary): its parts now live by concern.

wire.sockets    the sockets, sending, publishing, previews' sockets, close_all
wire.security   the endpoint policy and CURVE / ZAP (Security)
wire.receiver   Receiver: decode, check, count what is refused
wire.curve      CURVE key files
"""

from streamseg.wire.receiver import REJECT_LOG_INTERVAL_S, Accept, Receiver
from streamseg.wire.security import (
    KEYS_HINT,
    InsecureEndpointError,
    Security,
    check_bind,
    curve_keypair,
    curve_public_key,
    needs_keys,
    publish_endpoint,
)
from streamseg.wire.sockets import (
    DEFAULT_MAX_MSG_BYTES,
    PREVIEW_HWM,
    HandshakeError,
    Handshakes,
    close_all,
    dealer,
    offer,
    preview_publisher,
    preview_subscriber,
    publish,
    publisher,
    pull,
    push,
    readable,
    recv_raw,
    router,
    send,
    send_to,
    set_subscribed,
    stats_push,
    subscriber,
    subscription_changes,
    watched_subscriber,
)

__all__ = [
    "DEFAULT_MAX_MSG_BYTES",
    "KEYS_HINT",
    "PREVIEW_HWM",
    "REJECT_LOG_INTERVAL_S",
    "Accept",
    "HandshakeError",
    "Handshakes",
    "InsecureEndpointError",
    "Receiver",
    "Security",
    "check_bind",
    "close_all",
    "curve_keypair",
    "curve_public_key",
    "dealer",
    "needs_keys",
    "offer",
    "preview_publisher",
    "preview_subscriber",
    "publish",
    "publish_endpoint",
    "publisher",
    "pull",
    "push",
    "readable",
    "recv_raw",
    "router",
    "send",
    "send_to",
    "set_subscribed",
    "stats_push",
    "subscriber",
    "subscription_changes",
    "watched_subscriber",
]
