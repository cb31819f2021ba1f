"""What each broker sink costs per frame (docs/sinks.md): N frames of 640x480 with 8 instances
(masks as in a real run: box-local crops, RLE in the record) through each sink's write path,
against real servers on loopback (mosquitto, redis-server, an http.server receiver).

    python tests/sinks_measure.py [--frames 500]

Per sink and payload it prints: the frame loop's cost per frame (`write`: only a queue
append), the sink thread's CPU per frame (building the payload, the client library, the
socket; this process's CPU time over the run divided by frames), and the wall time until
every frame was delivered.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from brokerfixture import Receiver, mosquitto, redis_server  # noqa: E402

from streamseg.postprocess.instances import Instances  # noqa: E402
from streamseg.postprocess.masks import rle_encode  # noqa: E402
from streamseg.postprocess.sinks import FrameOut  # noqa: E402
from streamseg.postprocess.sinks.brokers import build  # noqa: E402
from streamseg.postprocess.tracking import local_masks  # noqa: E402
from streamseg.sink_urls import parse  # noqa: E402
from streamseg.wire.messages import StreamStart  # noqa: E402
from streamseg.wire.results import Result  # noqa: E402

W, H, N_INST = 640, 480, 8


def frames(n: int) -> list[FrameOut]:
    """`n` frames, each with N_INST elliptic instances (their RLE and crops precomputed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    full = np.zeros((N_INST, H, W), bool)
    boxes = np.zeros((N_INST, 4), np.float32)
    for i in range(N_INST):
        cx, cy = rng.uniform(60, W - 60), rng.uniform(60, H - 60)
        a, b = rng.uniform(20, 60), rng.uniform(20, 60)
        full[i] = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        boxes[i] = (cx - a, cy - b, cx + a, cy + b)
    masks = local_masks(full)
    rles = rle_encode(masks)
    inst = Instances(masks, boxes, np.ones(N_INST, np.int64), np.full(N_INST, 0.9, np.float32),
                     np.zeros((N_INST, 3)), np.arange(1, N_INST + 1))  # fmt: skip
    records = [
        {"label": 1, "label_name": "circle", "score": 0.9, "box": [float(v) for v in boxes[i]],
         "rle": rles[i], "track_id": i + 1}
        for i in range(N_INST)
    ]  # fmt: skip
    info = StreamStart("cam", W, H, 25.0)
    return [
        FrameOut(info, Result("cam", k, k / 25, 0.0, W, H, records, seq=k), inst) for k in range(n)
    ]


def measure(url: str, batch: list[FrameOut]) -> tuple[float, float, float, int]:
    """(write µs/frame, CPU ms/frame, wall s, bytes of one payload)."""
    from streamseg.postprocess.sinks.brokers import message

    spec = parse(url)
    sink = build(spec, live=False)
    sink.open(batch[0].info)
    cpu0, t0 = time.process_time(), time.perf_counter()
    write_s = 0.0
    for f in batch:
        w0 = time.perf_counter()
        sink.write(f)
        write_s += time.perf_counter() - w0
    while sink.counts().delivered < len(batch):
        time.sleep(0.001)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    sink.close()
    c = sink.counts()
    assert c.delivered == len(batch) and not c.dropped, c
    return write_s / len(batch) * 1e6, cpu / len(batch) * 1e3, wall, len(message(batch[0], spec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=500)
    args = ap.parse_args()
    batch = frames(args.frames)
    tmp = Path(tempfile.mkdtemp())
    mq, rd, hook = mosquitto(tmp), redis_server(tmp), Receiver()
    try:
        for name, base in [
            ("mqtt qos 0", f"mqtt://127.0.0.1:{mq.port}?qos=0"),
            ("mqtt qos 1", f"mqtt://127.0.0.1:{mq.port}?qos=1"),
            ("redis", f"redis://127.0.0.1:{rd.port}"),
            ("webhook batch 10", f"http://127.0.0.1:{hook.port}/?batch=10"),
        ]:
            for payload in ("full", "slim", "slim&polygons=1"):
                sep = "&" if "?" in base else "?"
                w, cpu, wall, size = measure(
                    f"{base}{sep}payload={payload}&max_pending=100000", batch
                )
                print(f"{name:18} {payload:16} write {w:6.1f} us/frame  sink CPU "
                      f"{cpu:6.3f} ms/frame  {args.frames / wall:7.0f} frames/s  "
                      f"payload {size} B")  # fmt: skip
    finally:
        mq.stop()
        rd.stop()
        hook.close()


if __name__ == "__main__":
    main()
