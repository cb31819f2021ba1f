"""Postprocess stage process: results in each stream's order, computed on arrays, handed to sinks.

A thin shell around pure cores: `reorder.OrderedInput` (each stream's frames back in order),
`streams.StreamBook` (which streams are open, what a frame or end-of-stream means for them) and
`frame.survivors` (a frame's instances: paste, deduplicate, track, join, drop low scores). Each
frame's results record is built once (`results.to_result`) and handed, with the arrays and a
lazily drawn annotated image, to the stage's sinks in one place (`sinks.Outputs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from streamseg.accounting import (
    BATCH_BOUNDS,
    INFERENCE_BOUNDS_S,
    LATENCY_BOUNDS_S,
    Counters,
    Histogram,
)
from streamseg.outputs import part_path
from streamseg.postprocess.frame import Rules, survivors
from streamseg.postprocess.preview import Previewer
from streamseg.postprocess.render import draw_instances
from streamseg.postprocess.reorder import OrderedInput
from streamseg.postprocess.results import to_result
from streamseg.postprocess.sinks import FrameOut, Outputs, Rendered, Sink
from streamseg.postprocess.sinks.brokers import build as build_broker
from streamseg.postprocess.sinks.preview import Preview
from streamseg.postprocess.sinks.publish import Publish
from streamseg.postprocess.sinks.push import Push
from streamseg.postprocess.sinks.results import ResultsFiles
from streamseg.postprocess.sinks.rtsp_out import RtspOut
from streamseg.postprocess.sinks.video import VideoFiles
from streamseg.postprocess.streams import StreamBook
from streamseg.postprocess.tracking import Tracker
from streamseg.sink_urls import parse_all
from streamseg.stage.args import PostprocessArgs
from streamseg.stage.links import Links
from streamseg.stage.shell import (
    BusyTimer,
    run_stage_loop,
    setup_process,
    stop_held,
    uninterrupted,
)
from streamseg.stage.trust import from_inference
from streamseg.wire import curve, sockets
from streamseg.wire.messages import Detections, EndOfStream, StreamStart
from streamseg.wire.receiver import Receiver
from streamseg.wire.security import Security

log = logging.getLogger(__name__)


def build_outputs(
    *,
    results: str | None,
    video: str | None,
    publish: str | None,
    publish_security: Security | None,
    previewer: Previewer | None,
    n_outputs: int,
    encoder_threads: int,
    push: str | None = None,
    push_buffer: int = 16,
    live: bool = False,
    brokers: Sequence[str] = (),
    rtsp_out: str | None = None,
) -> Outputs:
    """The stage's sinks, in the order each frame reaches them (a new output: one line here).
    Templates name one file per stream (outputs.output_path). `brokers`: broker sinks' URLs
    (--sink: streamseg.sink_urls; checked before the run)."""
    sinks: list[Sink] = []
    if results:
        sinks.append(ResultsFiles(results, n_streams=n_outputs))
    if publish:
        sinks.append(Publish(publish, security=publish_security))
    if video:
        sinks.append(VideoFiles(video, n_streams=n_outputs, encoder_threads=encoder_threads))
    if previewer is not None:
        sinks.append(Preview(previewer))
    for spec in parse_all(brokers):  # MQTT, Redis, webhooks: off the frame path (Threaded)
        sinks.append(build_broker(spec, live=live))
    if rtsp_out:  # annotated streams over RTSP, drawn only while someone plays them
        sinks.append(RtspOut(rtsp_out))
    if push:  # last: in a file run it waits for its reader, after the files have the frame
        sinks.append(Push(push, live=live, buffer=push_buffer, should_stop=stop_held))
    return Outputs(sinks)


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
    publish_security: Security | None,
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
    encoder_threads: int = 0,
    push: str | None = None,
    push_buffer: int = 16,
    sinks: Sequence[str] = (),
    rtsp_out: str | None = None,
    name: str = "postprocess",
) -> int:
    """name: how it reports ("postprocess[I]": shard I of several, streamseg.shards).
    track: the Tracker's settings (None: no track ids). mask_nms, mask_nms_cross_label,
    score_threshold: see frame.Rules (track_score_threshold in the model config lets inference
    send instances below score_threshold; they stay only where they continue a track followed
    the frame before). preview_endpoint: where to offer annotated JPEGs of the streams someone
    watches (streamseg --serve; None: nowhere). reorder_capacity: results held per stream while
    an earlier one is at another worker. encoder_threads: libx264's for the videos (0: its
    default)."""
    counters = Counters()
    book = StreamBook(counters, streams=streams, adopt=bool(restarted))
    rules = Rules(mask_threshold, mask_nms, mask_nms_cross_label, score_threshold)
    links = Links.from_env(name, link_keys=link_keys, stats_endpoint=stats_endpoint)
    reporter = links.reporter(counters)
    reporter.start_heartbeat()
    if restarted:  # a new life: never overwrite what the last one wrote
        video = part_path(video, restarted) if video else None
        results = part_path(results, restarted) if results else None
    receiver = Receiver(
        sockets.pull(
            detections_endpoint, hwm=4, security=links.security(detections_endpoint, bind=True)
        ),
        name=name,
        accept=from_inference(links.peers),
    )
    outputs = build_outputs(
        results=results,
        video=video,
        publish=publish,
        publish_security=publish_security,
        previewer=(
            Previewer(
                preview_endpoint,
                security=links.security(preview_endpoint, bind=True),
                auth=links.auth,
            )
            if preview_endpoint
            else None
        ),
        n_outputs=n_outputs,
        encoder_threads=encoder_threads,
        push=push,
        push_buffer=push_buffer,
        live=live,
        brokers=sinks,
        rtsp_out=rtsp_out,
    )
    trackers: dict[str, Tracker] = {}  # per stream, made on its first frame
    # several inference workers: results back in each stream's order (postprocess.reorder)
    ordered = OrderedInput(
        counters, live=live, capacity=reorder_capacity, adopt=bool(restarted), clock=time.monotonic
    )
    hists: dict[str, dict[str, Histogram]] = {}  # per stream: latency, batch size, model time
    reporter.ready()

    def tracker_of(stream: str) -> Tracker | None:
        if track is None:
            return None
        tracker = trackers.get(stream)
        if tracker is None:
            tracker = trackers[stream] = Tracker(**track, new_track_score=score_threshold)
        return tracker

    def on_frame(det: Detections) -> None:
        state = book.take(det)
        if state is None:
            log.warning("%s: frame %d of a stream that is not open: dropped", det.stream, det.frame)
            return
        inst, counted = survivors(det, rules, tracker_of(det.stream))
        extra = counters[det.stream].extra
        for key, n in counted.items():
            extra[key] = extra.get(key, 0) + n
        result = to_result(det, inst, label_names=label_names, seq=state.published)
        annotated = None
        if det.image is not None:  # drawn only if a sink asks (a video, a watched preview)
            annotated = Rendered(
                partial(
                    draw_instances,
                    det.image,
                    inst.masks,
                    inst.boxes,
                    inst.labels,
                    inst.scores,
                    label_names,
                    track_ids=inst.track_id_list(),
                )
            )
        outputs.write(FrameOut(state.info, result, inst, annotated))
        latency = time.time() - det.wall_time
        _observe(hists, det, latency)
        book.done(state, latency)

    def report() -> None:
        for stream, h in hists.items():
            counters[stream].extra["hist"] = {k: v.to_json() for k, v in h.items()}
        reporter.extra["sinks"] = outputs.counts()

    def loop() -> int:
        while not book.finished():
            with BusyTimer(reporter, what="wait_in"):
                msg = receiver.recv(250)
            if isinstance(msg, StreamStart):
                if book.start(msg):
                    outputs.open(msg)
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
                        outputs.end(item.stream)
                    trackers.pop(item.stream, None)
            outputs.tick(time.monotonic())  # results reach the disk within a second; previews
            book.report_latency()
            report()
            reporter.extra.update(rejected=receiver.rejected, rejected_by=receiver.rejected_by)
            reporter.tick()
        return 3 if book.lost_any else 0

    def cleanup() -> None:
        outputs.close()
        book.report_latency()
        report()
        reporter.extra["rejected"] = receiver.rejected

    return run_stage_loop(loop, reporter, cleanup=cleanup)


def main(args: PostprocessArgs) -> int:
    """`args.publish_keys`: {"keys": DIR/NAME, "allow": DIR}, the CURVE key files of the
    publisher (paths, never keys, travel on the command line). `args.restarted`: a new life
    after the last one died; it takes over the streams already running and writes its outputs
    to NAME.partN.EXT (N = `part`), next to the last life's. `args.encoder_threads`: libx264's,
    from the run's thread budget (streamseg.threads; 0: libx264's default)."""
    setup_process(args.name, verbose=args.verbose)
    torch.set_num_threads(1)  # the model stage needs the cores; paste work here is small
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
        push=args.push,
        push_buffer=args.push_buffer,
        sinks=args.sinks,
        rtsp_out=args.rtsp_out,
        n_outputs=args.n_outputs,
        track={"max_missed": args.track_max_missed} if args.track else None,
        restarted=args.part if args.restarted else 0,
        link_keys=args.link_keys,
        preview_endpoint=args.preview_endpoint,
        live=args.live,
        reorder_capacity=args.reorder_capacity,
        encoder_threads=args.encoder_threads,
        name=args.name,
    )
