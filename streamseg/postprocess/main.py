"""Postprocess stage: paste masks, threshold, COCO RLE, render, and hand results to the sinks.

Per stream it opens the sinks on StreamStart, writes every frame's results (and its annotated
image when a video is asked for) in frame order, and closes them on EndOfStream, checking that
every frame the source sent came through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from streamseg.accounting import Counters, LatencyWindow
from streamseg.postprocess.masks import LocalMasks, paste_masks, rle_encode
from streamseg.postprocess.render import draw_instances
from streamseg.postprocess.sinks import ResultsSink, VideoSink, output_path
from streamseg.stage.shell import StatsReporter, setup_process
from streamseg.wire import transport
from streamseg.wire.protocol import Detections, EndOfStream, Result, StreamStart

log = logging.getLogger(__name__)


def make_result(
    det: Detections, *, mask_threshold: float, label_names: Sequence[str]
) -> tuple[Result, LocalMasks]:
    """The frame's final instances (see Result) and its binary masks as crops."""
    local = paste_masks(
        torch.from_numpy(np.asarray(det.masks, dtype=np.float32))[:, None],
        torch.from_numpy(np.asarray(det.boxes, dtype=np.float32)),
        (det.height, det.width),
        threshold=mask_threshold,
    )
    rles = rle_encode(local)
    instances = []
    for i, rle in enumerate(rles):
        label = int(det.labels[i])
        instances.append(
            {
                "label": label,
                "label_name": label_names[label] if label < len(label_names) else str(label),
                "score": round(float(det.scores[i]), 5),
                "box": [round(float(v), 2) for v in det.boxes[i]],
                "rle": rle,
            }
        )
    result = Result(det.stream, det.frame, det.pts, det.wall_time, det.width, det.height, instances)
    return result, local


@dataclass
class _StreamSinks:
    info: StreamStart
    video: VideoSink | None = None
    results: ResultsSink | None = None
    last_frame: int = -1
    published: int = 0  # the next result's publish sequence number
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    eos: EndOfStream | None = None


def serve(
    *,
    detections_endpoint: str,
    stats_endpoint: str | None,
    streams: int,
    mask_threshold: float,
    label_names: Sequence[str],
    video: str | None,
    results: str | None,
    publish: str | None,
    n_outputs: int,
) -> int:
    counters = Counters()
    reporter = StatsReporter(stats_endpoint, "postprocess", counters)
    receiver = transport.Receiver(transport.pull(detections_endpoint, hwm=4), name="postprocess")
    pub = transport.publisher(publish) if publish else None
    state: dict[str, _StreamSinks] = {}
    ended = 0
    lost_any = False
    interrupted = False
    reporter.ready()

    def report_latency() -> None:
        for name, s in state.items():
            p50, p99 = s.latency.percentiles(50, 99)
            counters[name].extra.update(latency_p50_ms=p50, latency_p99_ms=p99)

    try:
        while streams == 0 or ended < streams:
            msg = receiver.recv(250)
            if msg is None:
                report_latency()
                reporter.tick()
                continue
            if isinstance(msg, StreamStart):
                s = state.get(msg.stream)
                if s is None:
                    s = state[msg.stream] = _StreamSinks(msg)
                    if video:
                        path = output_path(video, msg.stream, n_outputs)
                        s.video = VideoSink(path, msg.width, msg.height, msg.fps)
                    if results:
                        s.results = ResultsSink(output_path(results, msg.stream, n_outputs))
                counters[msg.stream].extra["reconnects"] = msg.reconnects
                counters[msg.stream].extra["expected"] = msg.frames
            elif isinstance(msg, Detections):
                t0 = time.perf_counter()
                counters.count_in(msg.stream)
                s = state.get(msg.stream) or state.setdefault(
                    msg.stream,
                    _StreamSinks(StreamStart(msg.stream, msg.width, msg.height, 30.0)),
                )
                if msg.frame <= s.last_frame:
                    log.warning("%s: frame %d after %d", msg.stream, msg.frame, s.last_frame)
                s.last_frame = msg.frame
                result, local = make_result(
                    msg, mask_threshold=mask_threshold, label_names=label_names
                )
                if s.results:
                    s.results.write(result.to_json())
                if pub is not None:
                    transport.publish(pub, replace(result, seq=s.published))
                    s.published += 1
                if s.video:
                    if msg.image is None:
                        raise RuntimeError("video output needs frames forwarded by inference")
                    s.video.write(
                        draw_instances(
                            msg.image, local, msg.boxes, msg.labels, msg.scores, label_names
                        )
                    )
                s.latency.add(time.time() - msg.wall_time)
                counters.count_out(msg.stream)
                reporter.busy_s += time.perf_counter() - t0
            elif isinstance(msg, EndOfStream):
                ended += 1
                s = state.get(msg.stream)
                done = counters[msg.stream].frames_out
                live = s is not None and s.info.live  # live streams drop frames by design
                lost = msg.lost or (done != msg.frames and not live)
                lost_any |= lost
                counters[msg.stream].extra.update(
                    sent=msg.frames, error=msg.error, lost=lost, ended=True
                )
                if s is not None:
                    _close(s)
            report_latency()
            reporter.extra["rejected"] = receiver.rejected
            reporter.tick()
    except KeyboardInterrupt:
        interrupted = True
        return 130
    finally:
        for s in state.values():
            _close(s)
        report_latency()
        reporter.extra["rejected"] = receiver.rejected
        reporter.final()
        transport.close_all(abort=interrupted)
    return 3 if lost_any else 0


def _close(s: _StreamSinks) -> None:
    if s.video is not None:
        s.video.close()
        s.video = None
    if s.results is not None:
        s.results.close()
        s.results = None


def main(
    *,
    detections_endpoint: str,
    stats_endpoint: str | None = None,
    streams: int = 1,
    mask_threshold: float = 0.5,
    label_names: list[str] | None = None,
    video: str | None = None,
    results: str | None = None,
    publish: str | None = None,
    n_outputs: int = 1,
    verbose: bool = False,
    **_: Any,
) -> int:
    setup_process("postprocess", verbose=verbose)
    torch.set_num_threads(1)  # the model stage needs the cores; paste work here is small
    return serve(
        detections_endpoint=detections_endpoint,
        stats_endpoint=stats_endpoint,
        streams=streams,
        mask_threshold=mask_threshold,
        label_names=label_names or [],
        video=video,
        results=results,
        publish=publish,
        n_outputs=n_outputs,
    )
