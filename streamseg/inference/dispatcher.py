"""The inference stage with several workers: a light dispatcher (no torch) in front of them.

It binds the frames endpoint (fan-in from every source) and queues frames per stream in the fair
Batcher (live: freshest frame per stream; file runs: lossless, with backpressure to the
sources). Workers (streamseg.inference.worker) connect to the work endpoint and ask for a batch
when they are free (credit); each batch goes to the worker idle longest. Each frame is stamped
with `prev`, the frame of its stream handed out before it, by which postprocess restores order.
Stream starts and ends go straight to postprocess, an end after its stream's last frame was
handed out, stamped with that frame (`prev`: postprocess waits for its result). A worker that
goes silent (`lost_s`: dead or frozen) is lost: its frames are sent again to another worker
(file runs) or counted dropped as `worker_lost` (live runs).

It reports as the inference stage ("inference"): in = frames from sources, out = frames whose
results a worker sent, dropped by reason.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from streamseg.accounting import Counters
from streamseg.inference.batching import Batch, Batcher
from streamseg.inference.dispatch import Workers
from streamseg.inference.routes import DetectionsOut
from streamseg.stage.args import DispatcherArgs
from streamseg.stage.links import Links
from streamseg.stage.shell import run_stage_loop, setup_process
from streamseg.stage.trust import from_sources, from_workers
from streamseg.wire import sockets
from streamseg.wire.messages import Assign, Credit, EndOfStream, Frame, StreamStart
from streamseg.wire.receiver import Receiver

log = logging.getLogger(__name__)


def serve(
    *,
    frames_endpoint: str,
    work_endpoint: str,
    detections_endpoint: str,
    stats_endpoint: str | None,
    streams: int,
    live: bool,
    depth: int,
    max_batch: int,
    max_wait_ms: float,
    weights: dict[str, float] | None = None,
    lost_s: float = 2.0,
    link_keys: str | None = None,
    shard_endpoints: Sequence[str] = (),
    shard_of: Mapping[str, int] | None = None,
) -> int:
    """Run until `streams` end-of-streams were passed on and every frame is done (0: until
    interrupted). shard_endpoints, shard_of: several postprocess processes, each stream's
    starts and ends go to its own (routes.DetectionsOut, as the workers send its results)."""
    counters = Counters()
    links = Links.from_env("inference", link_keys=link_keys, stats_endpoint=stats_endpoint)
    reporter = links.reporter(counters)
    reporter.start_heartbeat()
    hwm = max(4, max_batch)
    pull = sockets.pull(
        frames_endpoint, bind=True, hwm=hwm, security=links.security(frames_endpoint, bind=True)
    )
    work = sockets.router(work_endpoint, security=links.security(work_endpoint, bind=True))
    push = DetectionsOut(
        links, detections_endpoint, hwm=hwm, shard_endpoints=shard_endpoints, shard_of=shard_of
    )
    frames_in = Receiver(pull, name="dispatcher", accept=from_sources(links.peers))
    work_in = Receiver(work, name="dispatcher", accept=from_workers(links.peers))
    clock = time.monotonic
    batcher = Batcher(
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000.0,
        depth=depth if live else None,
        capacity=max(16, 4 * max_batch),
        weights=weights,
        clock=clock,
    )
    pool = Workers(lost_s=lost_s, clock=clock)
    last: dict[str, int] = {}  # per stream, the newest frame handed out
    # batch ids: from the clock, so a restarted dispatcher never reuses one a worker remembers
    batch_ids = itertools.count(int(time.time() * 1000))
    ended = 0
    stats = {"batches": 0, "resent": 0, "workers_lost": 0}
    batched = 0  # frames handed out in those batches (resent ones again)
    reporter.ready()

    def take_back(frames: list[Frame], why: str) -> None:
        """Frames a lost worker held: out again first (file runs), or counted (live)."""
        if live:
            for f in frames:
                counters.drop(f.stream, "worker_lost")
            return
        by_stream: dict[str, list[Frame]] = {}
        for f in frames:
            by_stream.setdefault(f.stream, []).append(f)
        for stream, fs in by_stream.items():
            batcher.requeue(stream, fs)
        stats["resent"] += len(frames)
        if frames:
            log.warning("%d frames of a lost worker (%s) go to another one", len(frames), why)

    def pass_on(controls: list[Any]) -> None:
        nonlocal ended
        for ctl in controls:
            if isinstance(ctl, EndOfStream):
                # its stream's results come from workers, on other connections, and may still
                # be running (a clip shorter than a batch: all of them): postprocess passes
                # the end on once the last frame handed out is out
                ctl = replace(ctl, prev=last.get(ctl.stream, -1))
                ended += 1
            push.send(ctl)

    def stamp(f: Frame) -> Frame:
        """The frame with its stream's previous frame (a frame sent again keeps its own)."""
        newest = last.get(f.stream, -1)
        if f.frame <= newest:
            return f
        last[f.stream] = f.frame
        return replace(f, prev=newest)

    def dispatch() -> float:
        """Hand batches to free workers; the seconds until a batch may form (inf: none)."""
        nonlocal batched
        while True:
            free = pool.idle()
            if free is None:
                pass_on(batcher.controls())
                return float("inf")
            name, peer, want = free
            batch = batcher.next_batch()
            if not isinstance(batch, Batch):
                return batch
            pass_on(batch.controls)
            if not batch.frames:
                continue
            frames = [stamp(f) for f in batch.frames[:want]]
            if len(batch.frames) > want:  # (workers ask for max_batch: never in practice)
                for f in reversed(batch.frames[want:]):
                    batcher.requeue(f.stream, [f])
            batch_id = next(batch_ids)
            sent = links.send_to(work, peer, Assign(len(frames), batch_id))
            for f in frames:
                sent = sent and links.send_to(work, peer, f)
            pool.assign(name, frames, batch_id)
            stats["batches"] += 1
            batched += len(frames)
            if not sent:
                log.warning("%s is gone (a send to it failed)", name)
                stats["workers_lost"] += 1
                take_back(pool.forget(name), name)

    def receive() -> None:
        for _ in range(256):  # bounded: the work link is served between bursts of frames
            if batcher.full():
                return
            msg = frames_in.recv(0)
            if msg is None:
                return
            if isinstance(msg, Frame):
                counters.count_in(msg.stream)
                for old in batcher.put(msg.stream, msg, is_frame=True):
                    counters.drop(old.stream, "stale")
            elif isinstance(msg, StreamStart | EndOfStream):
                batcher.put(msg.stream, msg, is_frame=False)

    def hear_workers() -> None:
        while (got := work_in.recv_from(0)) is not None:
            peer, msg = got
            if not isinstance(msg, Credit):
                continue
            known = msg.worker in pool.names()
            done, lost = pool.credit(msg.worker, peer, msg.frames, msg.done)
            for f in done:
                counters.count_out(f.stream)
            if lost:
                stats["workers_lost"] += 1
                take_back(lost, f"{msg.worker} restarted")
            if msg.frames > 0 and not known:
                log.debug("%s is ready", msg.worker)

    def finished() -> bool:
        return 0 < streams <= ended and pool.busy_frames() == 0 and len(batcher) == 0

    def loop() -> int:
        wait_s = 0.0
        while not finished():
            socks = [work] if batcher.full() else [pull, work]
            sockets.readable(socks, 1000.0 * min(max(wait_s, 0.0), 0.05))
            receive()
            hear_workers()
            for name, frames in pool.lost():
                log.warning("%s lost: no word for %.1f s", name, lost_s)
                stats["workers_lost"] += 1
                take_back(frames, name)
            wait_s = dispatch()
            reporter.extra.update(
                stats,
                workers=len(pool.names()),
                mean_batch=batched / max(1, stats["batches"]),
                in_flight=pool.busy_frames(),
                rejected=frames_in.rejected + work_in.rejected,
            )
            reporter.tick()
        for peer in pool.peers():  # no more work: the workers may go
            links.send_to(work, peer, Assign(0))
        return 0

    return run_stage_loop(loop, reporter)


def main(args: DispatcherArgs) -> int:
    setup_process("dispatcher", verbose=args.verbose)
    if args.restarted:
        log.info("restarted")
    return serve(
        frames_endpoint=args.frames_endpoint,
        work_endpoint=args.work_endpoint,
        detections_endpoint=args.detections_endpoint,
        stats_endpoint=args.stats_endpoint,
        streams=args.streams,
        live=args.live,
        depth=args.depth,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        weights=args.weights,
        lost_s=args.lost_s,
        link_keys=args.link_keys,
        shard_endpoints=args.shard_endpoints,
        shard_of=args.shard_of,
    )
