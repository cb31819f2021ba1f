"""Inference stage: dynamic batches of frames from all streams through one Mask R-CNN.

A receiver thread drains the frames socket into the Batcher all the time (so, live, the freshest
frames win even while the model runs); the main thread runs the model on each batch and sends
compact Detections (boxes, scores, labels, 28x28 masks), plus the frame's pixels only when a
downstream stage renders.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import torch

from streamseg.accounting import Counters
from streamseg.config import ModelConfig
from streamseg.inference.batches import BatchRunner, Submitted, start_executor
from streamseg.inference.batching import Batch, Batcher
from streamseg.inference.routes import DetectionsOut
from streamseg.stage.args import InferenceArgs
from streamseg.stage.links import Links
from streamseg.stage.shell import BusyTimer, run_stage_loop, setup_process
from streamseg.stage.trust import from_sources
from streamseg.threads import model_threads
from streamseg.wire import sockets
from streamseg.wire.messages import Detections, EndOfStream, Frame, StreamStart
from streamseg.wire.receiver import Receiver

log = logging.getLogger(__name__)


def _receive_loop(
    receiver: Receiver,
    batcher: Batcher,
    cond: threading.Condition,
    counters: Counters,
    stop: threading.Event,
    failed: list[BaseException],
) -> None:
    """The receiver thread: drains the frames socket into `batcher` until `stop`. Whatever it
    raises is logged in one line and put in `failed`, which ends the stage's main loop (exit 1):
    a dead receiver must not leave the stage waiting for frames that never come."""
    try:
        _receive(receiver, batcher, cond, counters, stop)
    except BaseException as e:
        log.error("frames receiver failed (%s: %s); stopping", type(e).__name__, e)
        log.debug("frames receiver failed", exc_info=e)  # the traceback, with --verbose
        with cond:
            failed.append(e)
            cond.notify_all()


def _receive(
    receiver: Receiver,
    batcher: Batcher,
    cond: threading.Condition,
    counters: Counters,
    stop: threading.Event,
) -> None:
    while not stop.is_set():
        with cond:
            while batcher.full() and not stop.is_set():
                cond.wait(0.1)
        msg = receiver.recv(100)
        if msg is None:
            continue
        with cond:
            if isinstance(msg, Frame):
                counters.count_in(msg.stream)
                for old in batcher.put(msg.stream, msg, is_frame=True):
                    counters.drop(old.stream, "stale")
            elif isinstance(msg, StreamStart | EndOfStream):
                batcher.put(msg.stream, msg, is_frame=False)
            cond.notify_all()


def serve(
    cfg: ModelConfig,
    *,
    frames_endpoint: str,
    detections_endpoint: str,
    stats_endpoint: str | None,
    streams: int,
    live: bool,
    depth: int,
    forward_images: bool,
    link_keys: str | None = None,
    weights: dict[str, float] | None = None,
    shard_endpoints: Sequence[str] = (),
    shard_of: Mapping[str, int] | None = None,
) -> int:
    """Run until `streams` end-of-streams have passed (0: until interrupted). weights: each
    stream's share when streams offer more than the model can do (default 1.0).
    shard_endpoints, shard_of: several postprocess processes (routes.DetectionsOut)."""
    counters = Counters()
    links = Links.from_env("inference", link_keys=link_keys, stats_endpoint=stats_endpoint)
    reporter = links.reporter(counters)
    reporter.start_heartbeat()  # alive while the model loads, however long that takes
    executor = start_executor(cfg)
    # Queues hold about one batch in flight and one waiting: deeper ones only add latency. Not
    # below 4: with a receive HWM of 2, libzmq 4.3.5 lost the last messages of a sender that
    # closed while this side was not reading (reproduced: 9 of 11 arrived, LINGER -1).
    hwm = max(4, cfg.max_batch)
    pull = sockets.pull(
        frames_endpoint, bind=True, hwm=hwm, security=links.security(frames_endpoint, bind=True)
    )
    out = DetectionsOut(
        links, detections_endpoint, hwm=hwm, shard_endpoints=shard_endpoints, shard_of=shard_of
    )
    receiver = Receiver(pull, name="inference", accept=from_sources(links.peers))
    clock = time.monotonic
    batcher = Batcher(
        max_batch=cfg.max_batch,
        max_wait_s=cfg.max_wait_ms / 1000.0,
        depth=depth if live else None,
        capacity=max(16, 2 * cfg.max_batch),
        weights=weights,
        clock=clock,
    )
    cond = threading.Condition()
    stop = threading.Event()
    failed: list[BaseException] = []  # the receiver thread's error, if it died
    thread = threading.Thread(
        target=_receive_loop, args=(receiver, batcher, cond, counters, stop, failed), daemon=True
    )
    thread.start()
    ended = 0

    def send(det: Detections) -> None:
        with BusyTimer(reporter, what="wait_out"):  # postprocess behind
            out.send(det)

    runner = BatchRunner(
        executor,
        reporter,
        counters,
        send,
        mask_threshold=cfg.mask_threshold,
        forward_images=forward_images,
        max_batch=cfg.max_batch,
    )
    reporter.extra["device"] = str(executor.device)
    reporter.extra["threads"] = torch.get_num_threads()
    reporter.ready()

    def take() -> Batch | None:
        """The next batch; None when none is due now and one is held (it runs first), else
        waits for one."""
        while True:
            with cond:
                batch = batcher.next_batch()
                if isinstance(batch, Batch):
                    cond.notify_all()  # room freed for the receiver
                    return batch
                if held is not None or failed:
                    return None
                with BusyTimer(reporter, what="wait_in"):
                    cond.wait(min(batch, 0.1))
            reporter.tick()  # idle too: the last batch's counts reach the runner
            if failed:
                return None

    # On CUDA the next batch is submitted (staged, its upload started) before the one held is
    # finished, so its upload overlaps the held batch's compute; its controls (stream starts
    # and ends) go after the held batch's detections, as they came after its frames.
    held: Submitted | None = None

    def loop() -> int:
        nonlocal ended, held
        while streams == 0 or ended < streams or held is not None:
            if failed:
                return 1
            batch = take() if streams == 0 or ended < streams else None
            if failed:
                return 1
            submitted = runner.submit(batch.frames) if batch and batch.frames else None
            if held is not None:
                runner.finish(held)
                held = None
            for ctl in batch.controls if batch else []:
                out.send(ctl)
                ended += isinstance(ctl, EndOfStream)
            if submitted is not None:
                if runner.overlaps:
                    held = submitted
                else:
                    runner.finish(submitted)
            reporter.extra.update(runner.figures(), rejected=receiver.rejected)
            reporter.tick()
        return 0

    def cleanup() -> None:
        stop.set()
        thread.join(timeout=1.0)

    return run_stage_loop(loop, reporter, cleanup=cleanup)


def main(args: InferenceArgs) -> int:
    """`args.model`: the ModelConfig as the runner resolved it. `args.restarted`: a new life
    after the last one died (frames it held are lost, and counted)."""
    setup_process("inference", verbose=args.verbose)
    if args.restarted:
        logging.getLogger(__name__).info("restarted")
    cfg = args.model
    torch.set_grad_enabled(False)
    threads = model_threads(cfg.threads, device=cfg.device)
    if threads > 0:
        torch.set_num_threads(threads)
    return serve(
        cfg,
        frames_endpoint=args.frames_endpoint,
        detections_endpoint=args.detections_endpoint,
        stats_endpoint=args.stats_endpoint,
        streams=args.streams,
        live=args.live,
        depth=args.depth,
        forward_images=args.forward_images,
        link_keys=args.link_keys,
        weights=args.weights,
        shard_endpoints=args.shard_endpoints,
        shard_of=args.shard_of,
    )
