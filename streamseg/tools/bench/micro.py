"""Two CPU micro figures: postprocess's core on one 1080p frame, and one ZeroMQ hop of frames."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from streamseg.tools.bench.figures import BenchError
from streamseg.tools.bench.fixtures import synthetic_detections

MICRO_SIZE = (1920, 1080)  # (width, height) of the micro benchmarks' frames


def paste_rle_ms(
    instances: int,
    *,
    size: tuple[int, int] = MICRO_SIZE,
    repeats: int = 20,
    threads: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median ms of `make_result` (paste + threshold + RLE) for one frame of `size` (width,
    height) with `instances` synthetic blobs, on the CPU with `threads` torch threads (the
    postprocess stage runs with 1), after one untimed call. `clock`: seconds, monotonic."""
    import torch  # here: the CLI imports this package for every command

    from streamseg.postprocess.results import make_result

    det = synthetic_detections(instances, size)
    names = ["__background__", "a", "b", "c"]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        make_result(det, mask_threshold=0.5, label_names=names)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = clock()
            make_result(det, mask_threshold=0.5, label_names=names)
            times.append(clock() - t0)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times) * 1000.0


def zmq_fps(
    *,
    size: tuple[int, int] = MICRO_SIZE,
    frames: int = 100,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Raw uint8[H, W, 3] frames of `size` (width, height) per second through one PUSH/PULL hop
    over ipc://: the streamseg.wire.sockets send (zero-copy) and Receiver (decode wraps the
    buffer), as stages use them, with the pipeline's high-water marks; the sender is a thread
    (pyzmq drops the GIL). `clock`: seconds, monotonic, read once before the timed frames and
    once after. BenchError when a frame is late (10 s) or arrives damaged."""
    from streamseg.wire import sockets  # here: only the wire layer imports zmq
    from streamseg.wire.messages import Frame
    from streamseg.wire.receiver import Receiver

    width, height = size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="streamseg-zmq-") as d:
        endpoint = f"ipc://{d}/frames"
        pull = sockets.pull(endpoint, bind=True, hwm=16)
        push = sockets.push(endpoint, bind=False, hwm=8)
        receiver = Receiver(pull, name="bench")

        def send_all() -> None:
            for i in range(frames + 1):  # +1: the first one only opens the connection
                sockets.send(push, Frame("bench", i, 0.0, time.time(), image))

        sender = threading.Thread(target=send_all, daemon=True)
        try:
            sender.start()
            if receiver.recv(10_000) is None:
                raise BenchError("ZeroMQ micro benchmark: no frame arrived within 10 s")
            t0 = clock()
            for _ in range(frames):
                msg = receiver.recv(10_000)
                if not isinstance(msg, Frame) or msg.image.shape != image.shape:
                    raise BenchError("ZeroMQ micro benchmark: a frame did not arrive intact")
            seconds = clock() - t0
            sender.join(timeout=10.0)
        finally:
            push.close(linger=0)
            pull.close(linger=0)
    return frames / seconds
