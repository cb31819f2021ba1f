"""Postprocess stage process: paste masks, threshold, COCO RLE, render, and hand results to sinks.

A thin shell around two pure cores: `streams.StreamBook` (which streams are open, what a frame
or end-of-stream means for them) and `results.make_result` (compact model output -> instances).
Per stream it opens the sinks on StreamStart, writes every frame's results (and its annotated
image when a video is asked for), and closes them on EndOfStream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamseg.accounting import (
    BATCH_BOUNDS,
    INFERENCE_BOUNDS_S,
    LATENCY_BOUNDS_S,
    Counters,
    Histogram,
)
from streamseg.postprocess.instances import duplicates, join_boxes, join_masks, select
from streamseg.postprocess.masks import LocalMasks
from streamseg.postprocess.preview import Previewer
from streamseg.postprocess.render import draw_instances
from streamseg.postprocess.reorder import OrderedInput
from streamseg.postprocess.results import (
    make_result,
    select_instances,
    with_joined,
    with_track_ids,
)
from streamseg.postprocess.sinks import ResultsSink, VideoSink, output_path
from streamseg.postprocess.streams import StreamBook
from streamseg.postprocess.timeline import LiveTimeline
from streamseg.postprocess.tracking import NO_TRACK, Tracker
from streamseg.stage.args import PostprocessArgs
from streamseg.stage.shell import (
    BusyTimer,
    StatsReporter,
    run_stage_loop,
    setup_process,
    uninterrupted,
)
from streamseg.stage.trust import Tokens, from_inference
from streamseg.wire import curve, transport
from streamseg.wire.curve import link_security
from streamseg.wire.protocol import Detections, EndOfStream, Result, StreamStart

log = logging.getLogger(__name__)

_encoder_threads = 0  # libx264 threads of this process's videos (0: its default); see main


class _Sinks:
    """The open output files of one stream.

    The video keeps the source's timestamps (1/90000 s, as MPEG-TS; variable frame rates stay
    variable) and is fragmented about every second, so a killed stage leaves a playable file.
    """

    def __init__(self, info: StreamStart, *, video: str | None, results: str | None, n: int):
        self.video = (
            VideoSink(
                output_path(video, info.stream, n),
                info.width,
                info.height,
                info.fps,
                time_base=Fraction(1, 90000),
                fragment_s=1.0,
                threads=_encoder_threads,
            )
            if video
            else None
        )
        self.results = ResultsSink(output_path(results, info.stream, n)) if results else None
        self.timeline = LiveTimeline() if info.live else None

    def video_time(self, pts: float, wall_time: float) -> float:
        """A frame's time in the video: its pts (files), or true speed (live: see timeline)."""
        return pts if self.timeline is None else self.timeline(pts, wall_time)

    def tick(self) -> None:
        """Write results lines that waited a second (call when idle)."""
        if self.results is not None:
            self.results.tick()

    def close(self) -> None:
        """Close every sink, even when one fails (its error is raised after)."""
        sinks, self.video, self.results = (self.video, self.results), None, None
        error: BaseException | None = None
        for sink in sinks:
            if sink is not None:
                try:
                    sink.close()
                except BaseException as e:  # noqa: BLE001 - re-raised once all are closed
                    error = error or e
        if error is not None:
            raise error


def _part(template: str | None, part: int) -> str | None:
    """out.mp4 -> out.part2.mp4 (a restarted postprocess's outputs)."""
    if template is None:
        return None
    path = Path(template)
    return str(path.with_name(f"{path.stem}.part{part}{path.suffix}"))


class _Frame:
    """One frame's instances on their way to results: the Result records and, in the same
    order, their masks and the arrays the tracker and the renderer use."""

    def __init__(self, det: Detections, result: Result, local: LocalMasks) -> None:
        self.result, self.local = result, local
        self.boxes, self.labels, self.scores = det.boxes, det.labels, det.scores
        n = len(det.scores)
        self.colors = det.colors if det.colors is not None else np.full((n, 3), np.nan)

    def keep(self, index: np.ndarray) -> None:
        """Only the instances in ``index``, in that order."""
        self.result = select_instances(self.result, index)
        self.local = select(self.local, index)
        self.boxes, self.labels = self.boxes[index], self.labels[index]
        self.scores, self.colors = self.scores[index], self.colors[index]

    def drop_duplicates(
        self, min_iou: float, cross_label_iou: float = 0.0, counted_from: float = 0.0
    ) -> int:
        """Drop duplicates (instances.duplicates); how many of them scored >= counted_from
        (the score bar of results: a copy below it would not have been a result anyway)."""
        if (min_iou <= 0.0 and cross_label_iou <= 0.0) or len(self.local) < 2:
            return 0
        dup = duplicates(self.local, self.labels, self.scores, min_iou, cross_label_iou)
        if dup.any():
            counted = int((dup & (self.scores >= counted_from)).sum())
            self.keep(np.flatnonzero(~dup))
            return counted
        return 0

    def drop_low(self, score_threshold: float, ids: list[int | None]) -> list[int | None]:
        """Drop instances scoring below ``score_threshold``, except those that continue a
        track (``ids``, one per instance: its track id, None for none); the ids of those kept."""
        low = self.scores < score_threshold
        low &= np.array([i is None for i in ids], bool).reshape(-1)
        if not low.any():
            return ids
        keep = np.flatnonzero(~low)
        self.keep(keep)
        return [ids[i] for i in keep.tolist()]

    def join(self, joins: np.ndarray) -> int:
        """Join fragments to the instances they are pieces of (Tracker.joins); how many."""
        fragment = joins >= 0
        if not fragment.any():
            return 0
        self.local = join_masks(self.local, joins)
        self.boxes = join_boxes(self.boxes, joins).astype(np.float32)
        self.result = with_joined(self.result, self.local, self.boxes, joins)
        self.keep(np.flatnonzero(~fragment))
        return int(fragment.sum())


def _track(
    trackers: dict[str, Tracker], det: Detections, frame: _Frame, settings: dict[str, Any]
) -> list[int | None]:
    """The frame's track ids, from its stream's tracker (frames of a stream come in order);
    fragments the tracker recognises are joined to their objects' instances in ``frame``.
    The instances' colours, measured by inference, help tell objects of one label apart."""
    tracker = trackers.get(det.stream)
    if tracker is None:
        tracker = trackers[det.stream] = Tracker(**settings)
    try:
        ids = tracker.update(
            det.frame, frame.local, frame.boxes, frame.labels, frame.scores, frame.colors
        )
    except ValueError as e:  # a frame out of order: its instances go untracked, once said
        log.warning("%s: frame %d not tracked (%s)", det.stream, det.frame, e)
        return [None] * len(frame.scores)
    joins = tracker.joins
    ids = ids[joins < 0]
    frame.join(joins)
    return [None if t == NO_TRACK else int(t) for t in ids]


def _observe(hists: dict[str, dict[str, Histogram]], det: Detections, latency_s: float) -> None:
    """Add a finished frame to its stream's histograms (reported with its counters)."""
    h = hists.get(det.stream)
    if h is None:
        h = hists[det.stream] = {
            "latency_s": Histogram(LATENCY_BOUNDS_S),
            "batch_size": Histogram(BATCH_BOUNDS),
            "inference_s": Histogram(INFERENCE_BOUNDS_S),
        }
    h["latency_s"].observe(latency_s)
    h["batch_size"].observe(det.batch)
    h["inference_s"].observe(det.infer_ms / 1000.0)


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
    publish_security: transport.Security | None,
    n_outputs: int,
    track: dict[str, Any] | None = None,
    restarted: int = 0,
    link_keys: str | None = None,
    preview_endpoint: str | None = None,
    live: bool = False,
    reorder_capacity: int = 128,
    mask_nms: float = 0.0,
    mask_nms_cross_label: float = 0.0,
    score_threshold: float = 0.0,
) -> int:
    """track: the Tracker's settings (None: no track ids). mask_nms: drop an instance whose
    mask overlaps a higher-scored one of its label by this IoU or more (0: never; see
    postprocess.instances); mask_nms_cross_label: the same for one of another label.
    score_threshold: the least score of a result; an instance below it (the model config's
    track_score_threshold lets inference send them) is kept only where it continues a track
    (the tracker's new_track_score: one followed the frame before), never with tracking off.
    preview_endpoint: where to offer annotated JPEGs of the streams someone watches
    (streamseg --serve; None: nowhere). reorder_capacity: results held per stream while an
    earlier one is at another worker."""
    counters = Counters()
    book = StreamBook(counters, streams=streams, adopt=bool(restarted))
    tokens = Tokens.from_env()
    reporter = StatsReporter(
        stats_endpoint,
        "postprocess",
        counters,
        auth=tokens.own,
        security=link_security(link_keys, stats_endpoint, bind=False),
    )
    reporter.start_heartbeat()
    if restarted:  # a new life: never overwrite what the last one wrote
        video = _part(video, restarted)
        results = _part(results, restarted)
    receiver = transport.Receiver(
        transport.pull(
            detections_endpoint,
            hwm=4,
            security=link_security(link_keys, detections_endpoint, bind=True),
        ),
        name="postprocess",
        accept=from_inference(tokens.peers),
    )
    pub = transport.publisher(publish, security=publish_security) if publish else None
    sinks: dict[str, _Sinks] = {}
    trackers: dict[str, Tracker] = {}  # per stream, made on its first frame
    # several inference workers: results back in each stream's order (postprocess.reorder)
    ordered = OrderedInput(
        counters, live=live, capacity=reorder_capacity, adopt=bool(restarted), clock=time.monotonic
    )
    hists: dict[str, dict[str, Histogram]] = {}  # per stream: latency, batch size, model time
    previewer = (
        Previewer(
            preview_endpoint,
            security=link_security(link_keys, preview_endpoint, bind=True),
            auth=tokens.own,
        )
        if preview_endpoint
        else None
    )
    reporter.ready()

    def on_frame(det: Detections) -> None:
        state = book.take(det)
        if state is None:
            log.warning("%s: frame %d of a stream that is not open: dropped", det.stream, det.frame)
            return
        result, local = make_result(det, mask_threshold=mask_threshold, label_names=label_names)
        frame = _Frame(det, result, local)
        extra = counters[det.stream].extra
        if dropped := frame.drop_duplicates(mask_nms, mask_nms_cross_label, score_threshold):
            extra["duplicates"] = extra.get("duplicates", 0) + dropped
        ids: list[int | None] | None = None
        if track is None:
            frame.drop_low(score_threshold, [None] * len(frame.scores))
        else:
            n = len(frame.scores)
            tracked = _track(trackers, det, frame, {**track, "new_track_score": score_threshold})
            if joined := n - len(frame.scores):
                extra["fragments_joined"] = extra.get("fragments_joined", 0) + joined
            ids = frame.drop_low(score_threshold, tracked)
            frame.result = with_track_ids(frame.result, ids)
        result, local = frame.result, frame.local
        if det.stream not in sinks:  # adopted: a stream that started before this life
            sinks[det.stream] = _Sinks(state.info, video=video, results=results, n=n_outputs)
        out = sinks[det.stream]
        if out.results:
            out.results.write(result.to_json())
        if pub is not None:
            transport.publish(pub, replace(result, seq=state.published))
        watched = previewer is not None and det.image is not None and previewer.wanted(det.stream)
        if out.video or watched:
            if det.image is None:
                raise RuntimeError("video output needs frames forwarded by inference")
            annotated = draw_instances(
                det.image,
                local,
                frame.boxes,
                frame.labels,
                frame.scores,
                label_names,
                track_ids=ids,
            )
            if out.video:
                out.video.write(annotated, pts=out.video_time(det.pts, det.wall_time))
            if watched:
                previewer.offer(det.stream, det.frame, det.wall_time, annotated)
        latency = time.time() - det.wall_time
        _observe(hists, det, latency)
        book.done(state, latency)

    def report_histograms() -> None:
        for stream, h in hists.items():
            counters[stream].extra["hist"] = {k: v.to_json() for k, v in h.items()}

    def loop() -> int:
        while not book.finished():
            if previewer is not None:
                previewer.poll()
            with BusyTimer(reporter, what="wait_in"):
                msg = receiver.recv(250)
            if isinstance(msg, StreamStart):
                if book.start(msg):
                    sinks[msg.stream] = _Sinks(msg, video=video, results=results, n=n_outputs)
                    trackers.pop(msg.stream, None)
                ordered.start(msg.stream)  # its results that overtook the start pass now
            elif isinstance(msg, Detections | EndOfStream):
                ordered.put(msg)
            for item in ordered.take():
                if isinstance(item, Detections):
                    with BusyTimer(reporter), uninterrupted():  # all its outputs, or none
                        on_frame(item)
                else:
                    if book.end(item) is not None:
                        sinks[item.stream].close()
                    trackers.pop(item.stream, None)
            for out in sinks.values():
                out.tick()  # results lines reach the disk within a second, also when idle
            book.report_latency()
            report_histograms()
            reporter.extra.update(rejected=receiver.rejected, rejected_by=receiver.rejected_by)
            reporter.tick()
        return 3 if book.lost_any else 0

    def cleanup() -> None:
        for out in sinks.values():
            out.close()
        book.report_latency()
        report_histograms()
        reporter.extra["rejected"] = receiver.rejected

    return run_stage_loop(loop, reporter, cleanup=cleanup)


def main(args: PostprocessArgs) -> int:
    """`args.publish_keys`: {"keys": DIR/NAME, "allow": DIR}, the CURVE key files of the
    publisher (paths, never keys, travel on the command line). `args.restarted`: a new life
    after the last one died; it takes over the streams already running and writes its outputs
    to NAME.partN.EXT (N = `part`), next to the last life's. `args.encoder_threads`: libx264's,
    from the run's thread budget (streamseg.threads; 0: libx264's default)."""
    global _encoder_threads
    setup_process("postprocess", verbose=args.verbose)
    torch.set_num_threads(1)  # the model stage needs the cores; paste work here is small
    _encoder_threads = args.encoder_threads
    keys = args.publish_keys
    return serve(
        detections_endpoint=args.detections_endpoint,
        stats_endpoint=args.stats_endpoint,
        streams=args.streams,
        mask_threshold=args.mask_threshold,
        mask_nms=args.mask_nms,
        mask_nms_cross_label=args.mask_nms_cross_label,
        score_threshold=args.score_threshold,
        label_names=list(args.label_names),
        video=args.video,
        results=args.results,
        publish=args.publish,
        publish_security=curve.server_security(keys["keys"], keys["allow"]) if keys else None,
        n_outputs=args.n_outputs,
        track={"max_missed": args.track_max_missed} if args.track else None,
        restarted=args.part if args.restarted else 0,
        link_keys=args.link_keys,
        preview_endpoint=args.preview_endpoint,
        live=args.live,
        reorder_capacity=args.reorder_capacity,
    )
