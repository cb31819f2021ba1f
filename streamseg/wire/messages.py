"""The messages that cross a ZeroMQ socket, as frozen dataclasses, and the protocol version.

Arrays are numpy arrays (shapes and dtypes in each docstring); everything else is a JSON value.
`wire.codec` encodes and decodes them, `wire.validation` says which contents are valid, and
docs/protocol.md documents them for readers in other languages. `Result` (a frame's final
instances) is the results format, in `wire.results`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamseg.wire.results import Result

PROTOCOL_VERSION = 2
"""2: instances carry "track_id" (docs/protocol.md says what readers of version 1 see)."""


@dataclass(frozen=True)
class StreamStart:
    """A source opened a stream (again, after a reconnect: `reconnects` > 0)."""

    stream: str
    width: int
    height: int
    fps: float
    """Nominal frame rate of the source (frames per second)."""
    frames: int | None = None
    """Number of frames, when the container says (files)."""
    source: str = ""
    live: bool = False
    reconnects: int = 0


@dataclass(frozen=True)
class Frame:
    """A decoded frame.

    image: uint8[H, W, 3], RGB.
    """

    stream: str
    frame: int
    """0-based index in decode order (in live streams: counted since the stream first started)."""
    pts: float
    """Presentation time, seconds."""
    wall_time: float
    """Capture time (time.time() when the source had decoded it), seconds since the epoch."""
    image: np.ndarray
    prev: int = -1
    """The frame of the same stream that the dispatcher handed out just before this one (-1:
    none, or not from a dispatcher). Postprocess restores order by it (postprocess.reorder).
    Optional on the wire: absent means -1."""


@dataclass(frozen=True)
class Detections:
    """A frame's compact model output (what inference sends to postprocess).

    boxes:  float32[N, 4], xyxy, frame pixels.
    scores: float32[N], in [0, 1], descending.
    labels: int64[N], label ids (0 is background, never present).
    masks:  float32[N, M, M], the mask head's probabilities (M = 28 for torchvision).
    image:  uint8[H, W, 3] RGB, only when a downstream stage renders; else None.
    colors: float32[N, 3], each instance's colour (inference.colors; NaN: unknown), for the
            tracker; None: not measured.
    """

    stream: str
    frame: int
    pts: float
    wall_time: float
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    image: np.ndarray | None = None
    infer_ms: float = 0.0
    """Model time of the batch this frame was in, milliseconds."""
    batch: int = 1
    prev: int = -1
    """The frame's `Frame.prev` (optional on the wire: absent means -1)."""
    colors: np.ndarray | None = None


@dataclass(frozen=True)
class EndOfStream:
    """No more frames from `stream`: `frames` were sent in all; `error` says why it ended early."""

    stream: str
    frames: int
    error: str = ""
    lost: bool = False
    """True when the source knows frames were lost (truncated file, stream gone for good)."""
    prev: int = -1
    """The last frame of the stream that the dispatcher handed out to a worker (-1: none, or
    not from a dispatcher): postprocess passes the end on once that frame's result is out, as
    it does a result once its `Frame.prev` is. Optional on the wire: absent means -1."""


@dataclass(frozen=True)
class Stats:
    """A stage's counters, sent to the runner every few seconds and when the stage ends.

    counters: {stream: {"in": n, "out": n, "dropped": {reason: n}, ...}}; busy_s: seconds of work.
    The control fields the runner acts on (name, ready, ended, heartbeat) are typed fields;
    `extra` holds the stage's other figures (device, batches, startup_s, ...).
    """

    stage: str
    counters: dict[str, Any]
    busy_s: float = 0.0
    final: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    """The reporting process ("source[cam1]", "inference[0]"); "": the stage itself."""
    ready: bool = False
    """The stage is bound and loaded: sources may start sending."""
    ended: bool = False
    """A source sent its end-of-stream (it then waits to be stopped)."""
    heartbeat: bool = False
    """Only a sign of life, no counters: tells a busy stage (a long model call) from a dead one."""
    busy: bool = False
    """A heartbeat's: the stage is working on frames now (a drain waits while it is)."""

    @property
    def sender(self) -> str:
        """The reporting process's name: `name`, or else the stage."""
        return self.name or self.stage

    def figures(self) -> dict[str, Any]:
        """`extra` with the control fields a run report shows: the name, and ready and ended
        when set."""
        return {
            "name": self.sender,
            **({"ready": True} if self.ready else {}),
            **self.extra,
            **({"ended": True} if self.ended else {}),
        }


@dataclass(frozen=True)
class Credit:
    """An inference worker to the dispatcher: ready for a batch of up to `frames` frames (the
    results of its last batch are sent); 0: a heartbeat, it is alive and busy."""

    worker: str
    frames: int
    done: int = 0
    """The last batch it finished (Assign.batch; 0: none yet): a credit sent again while an
    Assign was on its way (an idle worker repeats its credit, for a restarted dispatcher) is
    told from one that says the batch is done."""


@dataclass(frozen=True)
class Assign:
    """The dispatcher to an inference worker: the next `frames` messages are the Frames of its
    next batch, `batch` its id; frames 0: there is no more work, exit."""

    frames: int
    batch: int = 0


Message = StreamStart | Frame | Detections | EndOfStream | Result | Stats | Credit | Assign
