"""One inference worker behind the dispatcher (streamseg.inference.dispatcher).

It connects to the work endpoint, asks for a batch (Credit), runs the model on the batch it is
handed (Assign, then its Frames), sends each frame's Detections straight to postprocess (with
the frame's `prev`, for postprocess's order restore), and asks again. A heartbeat thread says it
is alive on a socket of its own while the model runs, so the dispatcher tells a long batch from
a dead or frozen worker. It exits when the dispatcher says there is no more work, or when it is
stopped while it holds none (nothing is lost: exit 0).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import torch

from streamseg.accounting import Counters
from streamseg.config import ModelConfig
from streamseg.inference.batches import BatchRunner, start_executor
from streamseg.inference.routes import DetectionsOut
from streamseg.stage.args import WorkerArgs
from streamseg.stage.links import Links
from streamseg.stage.shell import run_stage_loop, setup_process
from streamseg.stage.trust import from_dispatcher
from streamseg.threads import model_threads
from streamseg.wire import sockets
from streamseg.wire.messages import Assign, Credit, Frame
from streamseg.wire.receiver import Receiver

log = logging.getLogger(__name__)

FRAME_WAIT_MS = 30_000.0
"""The longest wait for a batch's next frame once its Assign came (they are sent together)."""
RECREDIT_S = 1.0
"""An idle worker repeats its credit this often, so that a restarted dispatcher learns of it."""


def _beat(
    endpoint: str, name: str, links: Links, stop: threading.Event, every_s: float = 0.25
) -> None:
    sock = sockets.dealer(endpoint, security=links.security(endpoint, bind=False))
    try:
        while not stop.wait(every_s):
            links.send(sock, Credit(name, 0), block=False)
    finally:
        sock.close(0)


def serve(
    cfg: ModelConfig,
    *,
    name: str,
    work_endpoint: str,
    detections_endpoint: str,
    stats_endpoint: str | None,
    forward_images: bool,
    link_keys: str | None = None,
    shard_endpoints: Sequence[str] = (),
    shard_of: Mapping[str, int] | None = None,
) -> int:
    """shard_endpoints, shard_of: several postprocess processes (routes.DetectionsOut)."""
    counters = Counters()
    links = Links.from_env(name, link_keys=link_keys, stats_endpoint=stats_endpoint)
    reporter = links.reporter(counters)
    reporter.start_heartbeat()
    executor = start_executor(cfg)
    work = sockets.dealer(work_endpoint, security=links.security(work_endpoint, bind=False))
    out = DetectionsOut(
        links,
        detections_endpoint,
        hwm=max(4, cfg.max_batch),
        shard_endpoints=shard_endpoints,
        shard_of=shard_of,
    )
    receiver = Receiver(work, name=name, accept=from_dispatcher(links.peers))
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(work_endpoint, name, links, stop), daemon=True)
    beat.start()
    runner = BatchRunner(
        executor,
        reporter,
        counters,
        out.send,
        mask_threshold=cfg.mask_threshold,
        forward_images=forward_images,
        max_batch=cfg.max_batch,
    )
    reporter.extra["device"] = str(executor.device)
    reporter.ready()

    def loop() -> int:
        done = 0  # the last batch finished
        credited = time.monotonic()
        links.send(work, Credit(name, cfg.max_batch, done))
        while True:
            try:
                msg = receiver.recv(250)
                reporter.tick()
                if not isinstance(msg, Assign):
                    if time.monotonic() - credited >= RECREDIT_S:
                        credited = time.monotonic()
                        links.send(work, Credit(name, cfg.max_batch, done))
                    continue
            except KeyboardInterrupt:  # stopped while holding no frame: nothing is lost
                return 0
            if msg.frames == 0:
                return 0
            frames: list[Frame] = []
            while len(frames) < msg.frames:
                f = receiver.recv(FRAME_WAIT_MS)
                if f is None:
                    log.error("the dispatcher sent %d of %d frames", len(frames), msg.frames)
                    return 1
                if isinstance(f, Frame):
                    counters.count_in(f.stream)
                    frames.append(f)
            runner.run(frames)
            reporter.extra.update(runner.figures(), rejected=receiver.rejected)
            done, credited = msg.batch, time.monotonic()
            links.send(work, Credit(name, cfg.max_batch, done))

    def cleanup() -> None:
        stop.set()
        beat.join(timeout=1.0)

    return run_stage_loop(loop, reporter, cleanup=cleanup)


def main(args: WorkerArgs) -> int:
    """`args.model`: its device: this worker's; its threads: this worker's share, from the
    supervisor's budget. `args.share_cpu`: workers sharing this host's CPU, for a "auto" thread
    count resolved here (a worker started by hand)."""
    setup_process(args.name, verbose=args.verbose)
    if args.restarted:
        log.info("restarted")
    cfg = args.model
    torch.set_grad_enabled(False)
    threads = model_threads(cfg.threads, device=cfg.device, workers=max(1, args.share_cpu))
    if threads > 0:
        torch.set_num_threads(threads)
    return serve(
        cfg,
        name=args.name,
        work_endpoint=args.work_endpoint,
        detections_endpoint=args.detections_endpoint,
        stats_endpoint=args.stats_endpoint,
        forward_images=args.forward_images,
        link_keys=args.link_keys,
        shard_endpoints=args.shard_endpoints,
        shard_of=args.shard_of,
    )
