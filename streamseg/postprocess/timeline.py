"""The time of each frame in a live stream's annotated video: true speed. Pure.

A live source's pts run smoothly while it is connected, but a reconnect joins the new
connection one frame after the last one (`source.link.PtsMapper`): the minutes a camera was
down would vanish from the video. The capture time (`wall_time`) keeps them, but carries the
jitter of the network and the decoder. So a video keeps the pts' spacing while it agrees with
the capture clock, and jumps to the capture clock when the two part by more than `resync_s`
(an outage, a stall, a clock that runs off): a 71-second watch gives a 71-second video, whatever
was dropped or missing in between.
"""

from __future__ import annotations


class LiveTimeline:
    def __init__(self, resync_s: float = 0.5) -> None:
        self.resync_s = resync_s
        self.offset: float | None = None
        """wall_time - pts at the last resync."""

    def __call__(self, pts: float, wall_time: float) -> float:
        """The frame's video time, seconds (on the capture clock, in the pts' steps)."""
        if self.offset is None or abs(wall_time - pts - self.offset) > self.resync_s:
            self.offset = wall_time - pts
        return pts + self.offset
