"""The sink interface: what the postprocess frame loop hands every output, and how it counts.

See the package docstring (`streamseg.postprocess.sinks`) for the contract a sink keeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from streamseg.postprocess.instances import Instances
from streamseg.wire.messages import StreamStart
from streamseg.wire.results import Result

T = TypeVar("T")


class Rendered:
    """A frame's annotated image, drawn on the first call and then shared (by every sink, on
    any thread): frames no sink needs pixels of are never drawn."""

    def __init__(self, draw: Callable[[], np.ndarray]) -> None:
        self._draw: Callable[[], np.ndarray] | None = draw
        self._image: np.ndarray | None = None
        self._lock = threading.Lock()

    def __call__(self) -> np.ndarray:
        """uint8[H, W, 3] RGB: the frame with its instances drawn (postprocess.render)."""
        with self._lock:
            if self._image is None:
                assert self._draw is not None
                self._image, self._draw = self._draw(), None  # the frame's pixels go with it
            return self._image


@dataclass(frozen=True, eq=False)
class FrameOut:
    """One frame's outputs, as every sink gets them (never modify them: they are shared).

    info: its stream's start (for a stream a restarted stage adopted: a stand-in, live).
    result: the results record, built once (`result.seq`: its publish number in the stream).
    instances: the same instances as arrays (masks, boxes, labels, scores, colours, track ids).
    annotated: the frame with its instances drawn, rendered on the first call; None when
    inference forwarded no pixels (a pipeline that renders nothing).
    """

    info: StreamStart
    result: Result
    instances: Instances
    annotated: Rendered | None = None

    @property
    def stream(self) -> str:
        return self.info.stream


@dataclass(frozen=True)
class SinkCounts:
    """A sink's messages since the stage started: each is delivered, dropped (by reason) or
    pending (accepted, not yet delivered); together they are every frame it was given."""

    delivered: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    pending: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "dropped": dict(self.dropped), "pending": self.pending}


class Sink(Protocol):
    """One output of the postprocess stage (see the package docstring)."""

    name: str
    """Its key in the stage's reported counters ("results", "video", "publish", ...)."""

    def open(self, info: StreamStart) -> None:
        """A stream started in this life of the stage."""

    def write(self, frame: FrameOut) -> None:
        """One frame's outputs; frames of a stream come in order."""

    def end(self, stream: str) -> None:
        """The stream ended (its source said so): finish its output."""

    def tick(self, now: float) -> None:
        """Called on every turn of the stage's loop (at least every quarter second), also
        while no frame comes; `now`: time.monotonic() seconds."""

    def close(self) -> None:
        """The stage stops: finish every stream's output. Safe to call twice."""

    def counts(self) -> SinkCounts:
        """Delivered, dropped by reason, pending: for the run report."""


class Outputs:
    """The stage's sinks, in order: the frame loop calls each event here, once."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sinks: two sinks share a name ({', '.join(names)})")
        self.sinks = tuple(sinks)

    def open(self, info: StreamStart) -> None:
        for sink in self.sinks:
            sink.open(info)

    def write(self, frame: FrameOut) -> None:
        """An error of a sink (OutputError: a full disk) is the stage's error: it propagates."""
        for sink in self.sinks:
            sink.write(frame)

    def end(self, stream: str) -> None:
        self._each(lambda sink: sink.end(stream))

    def tick(self, now: float) -> None:
        for sink in self.sinks:
            sink.tick(now)

    def close(self) -> None:
        self._each(lambda sink: sink.close())

    def counts(self) -> dict[str, dict[str, Any]]:
        """{sink name: SinkCounts.to_json()}, for the stage's reported counters."""
        return {sink.name: sink.counts().to_json() for sink in self.sinks}

    def _each(self, act: Callable[[Sink], None]) -> None:
        each(self.sinks, act)


def each(items: Iterable[T], act: Callable[[T], object]) -> None:
    """`act` on every item, even when one fails (the first error is raised after): every sink
    closes, every file of a sink closes, whatever one of them does."""
    error: BaseException | None = None
    for item in items:
        try:
            act(item)
        except BaseException as e:  # noqa: BLE001 - re-raised once every item had its turn
            error = error or e
    if error is not None:
        raise error
