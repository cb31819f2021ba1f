"""The results sink: each stream's results as a .jsonl file, one line per frame."""

from __future__ import annotations

from streamseg.outputs import output_path
from streamseg.postprocess.sinks.base import FrameOut, SinkCounts, each
from streamseg.postprocess.sinks.files import ResultsSink
from streamseg.wire.messages import StreamStart


class ResultsFiles:
    """One results file per stream (`sinks.files.ResultsSink`: whole lines, flushed about every
    second), named by `output_path(template, stream, n_streams)`.

    A file is created on its stream's first line, so a stage that writes nothing (a restarted
    one that dies again, a stream adopted and ended at once) leaves no empty file; a stream
    that started and ended in this life with no frame gets its (empty) file at its end.
    """

    name = "results"

    def __init__(self, template: str, *, n_streams: int) -> None:
        self.template = template
        self.n_streams = n_streams
        self._files: dict[str, ResultsSink] = {}
        self._started: set[str] = set()
        self._closed_lines = 0  # lines of the files already closed

    def open(self, info: StreamStart) -> None:
        self._started.add(info.stream)

    def write(self, frame: FrameOut) -> None:
        out = self._files.get(frame.stream) or self._file(frame.stream)
        out.write(frame.result.to_json())

    def end(self, stream: str) -> None:
        out = self._files.pop(stream, None)
        if out is None and stream in self._started:
            out = ResultsSink(output_path(self.template, stream, self.n_streams))
        self._started.discard(stream)
        if out is not None:
            out.close()
            self._closed_lines += out.lines

    def tick(self, now: float) -> None:
        for out in self._files.values():
            out.tick()  # lines reach the disk within a second, also while no frame comes

    def close(self) -> None:
        files, self._files = list(self._files.values()), {}
        try:
            each(files, lambda out: out.close())
        finally:
            self._closed_lines += sum(out.lines for out in files)

    def counts(self) -> SinkCounts:
        pending = sum(out.pending for out in self._files.values())
        lines = self._closed_lines + sum(out.lines for out in self._files.values())
        return SinkCounts(delivered=lines - pending, pending=pending)

    def _file(self, stream: str) -> ResultsSink:
        out = self._files[stream] = ResultsSink(output_path(self.template, stream, self.n_streams))
        return out
