"""Postprocess's cost per frame, step by step: one 1920x1080 frame with 20 large instances (boxes
300-700 px a side), 1 torch thread as the stage runs. Not a test: run it by hand,

    .venv/bin/python tests/postprocess_measure.py [REPEATS]

It prints the median CPU time of this process (all its threads: x264's too) per step, which a
busy shared machine inflates far less than wall time (docs/benchmarks.md, "Postprocess's cost").
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import numpy as np
import torch

from streamseg.postprocess.frame import Rules, survivors
from streamseg.postprocess.render import draw_instances
from streamseg.postprocess.results import paste, to_result
from streamseg.postprocess.sinks.files import VideoSink
from streamseg.postprocess.tracking import Tracker
from streamseg.tools.bench.fixtures import synthetic_detections

WIDTH, HEIGHT, INSTANCES = 1920, 1080, 20
NAMES = ["__background__", "a", "b", "c"]


def median_ms(step: Callable[[int], object], repeats: int) -> float:
    """Median CPU ms of `step(i)` for i in 1..repeats, after one untimed call (i = 0)."""
    step(0)
    times = []
    for i in range(1, repeats + 1):
        t0 = time.process_time()
        step(i)
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1000.0


def main(repeats: int) -> None:
    torch.set_num_threads(1)  # as postprocess.main
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    bw, bh = rng.uniform(300, 700, INSTANCES), rng.uniform(300, 700, INSTANCES)
    x0, y0 = rng.uniform(0, WIDTH - bw), rng.uniform(0, HEIGHT - bh)
    det = replace(
        synthetic_detections(INSTANCES, (WIDTH, HEIGHT)),
        boxes=np.stack([x0, y0, x0 + bw, y0 + bh], 1).astype(np.float32),
        scores=np.linspace(0.99, 0.6, INSTANCES).astype(np.float32),
        image=image,
    )
    rules = Rules(mask_threshold=0.5)
    tracker = Tracker(max_missed=60)
    figures = {
        "paste (28x28 -> frame masks)": median_ms(
            lambda i: paste(det, mask_threshold=0.5), repeats
        ),
        "paste + dedupe + tracking": median_ms(
            lambda i: survivors(replace(det, frame=i), rules, tracker), repeats
        ),
    }
    inst, _ = survivors(det, rules, Tracker(max_missed=60))
    figures["RLE + results record"] = median_ms(
        lambda i: to_result(det, inst, label_names=NAMES, seq=i), repeats
    )

    def draw(i: int) -> np.ndarray:
        return draw_instances(
            image, inst.masks, inst.boxes, inst.labels, inst.scores, NAMES,
            track_ids=inst.track_id_list(),
        )  # fmt: skip

    figures["render (masks, boxes, labels)"] = median_ms(draw, repeats)
    frame = draw(0)
    for threads in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            video = VideoSink(f"{d}/a.mp4", WIDTH, HEIGHT, 30.0, time_base=Fraction(1, 90000),
                              fragment_s=1.0, threads=threads)  # fmt: skip
            figures[f"x264 veryfast, {threads} thread(s)"] = median_ms(
                lambda i, v=video: v.write(frame, pts=i / 30.0), 2 * repeats
            )
            video.close()
    for name, ms in figures.items():
        print(f"{name:32s} {ms:7.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
