"""The live view's source: each watched stream's annotated frames as JPEG on a ZeroMQ XPUB.

The supervisor (`streamseg.serve.views`) subscribes to a stream while a browser watches it;
XPUB tells this stage so, and frames are rendered and encoded only for streams someone
watches. Sending never blocks: a reader that falls behind loses previews, never frames.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from streamseg.wire import security, sockets
from streamseg.wire.previews import Preview, encode_preview, preview_topic

log = logging.getLogger(__name__)


class Previewer:
    """quality: JPEG quality 1-100; auth: this stage's token (the supervisor checks it)."""

    def __init__(
        self,
        endpoint: str,
        *,
        security: security.Security | None = None,
        auth: str = "",
        quality: int = 80,
    ) -> None:
        self.sock = sockets.preview_publisher(endpoint, security=security)
        self.auth = auth
        self.quality = quality
        self.watched: set[bytes] = set()
        self.sent = self.dropped = 0

    def poll(self) -> None:
        """Take in subscribe/unsubscribe messages (never blocks; call once per loop)."""
        for topic, on in sockets.subscription_changes(self.sock):
            (self.watched.add if on else self.watched.discard)(topic)
            log.debug("preview of %r %s", topic, "watched" if on else "no longer watched")

    def wanted(self, stream: str) -> bool:
        return preview_topic(stream) in self.watched

    def offer(self, stream: str, frame: int, wall_time: float, image: np.ndarray) -> None:
        """image: uint8[H, W, 3] RGB, the annotated frame."""
        ok, jpeg = cv2.imencode(
            ".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(self.quality)]
        )
        if not ok:  # (OpenCV fails only on impossible images)
            return
        msg = Preview(stream, frame, wall_time, jpeg.tobytes())
        if sockets.offer(self.sock, encode_preview(msg, auth=self.auth)):
            self.sent += 1
        else:
            self.dropped += 1
