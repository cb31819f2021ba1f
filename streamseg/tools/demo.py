"""`streamseg demo`: the whole system on a fresh offline machine, in one command.

Generates a moving-shapes clip the model never saw, runs it through the full stage pipeline
(decode → ZeroMQ → batched Mask R-CNN → ZeroMQ → paste/RLE/render → video + results) with the
shipped shapes model, and scores the results against the clip's exact ground truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamseg.config import load_config
from streamseg.pipeline.report import summary
from streamseg.pipeline.spec import load_pipeline
from streamseg.pipeline.supervisor import run
from streamseg.source.spec import parse_sources
from streamseg.tools import evaluate, synth


def main(
    *,
    out: str,
    config: str,
    pipeline: str,
    frames: int = 300,
    seed: int = 2024,
    size: tuple[int, int] = (640, 480),
    device: str | None = None,
    quiet: bool = False,
) -> int:
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    clip, gt = folder / "clip.mp4", folder / "clip_gt.json"
    video, results = folder / "annotated.mp4", folder / "results.jsonl"
    print(f"streamseg demo: output folder {folder}")
    print(f"generating {frames} frames {size[0]}x{size[1]} of moving shapes (seed {seed}) ...")
    synth.write_clip(clip, gt, seed=seed, frames=frames, size=size, fps=30)
    model = load_config(config, device=device)
    print(f"annotating with {Path(config).name} ({model.arch}) through the stage pipeline ...")
    report = run(
        load_pipeline(pipeline),
        parse_sources([f"demo={clip}"]),
        model,
        video=str(video),
        results=str(results),
        quiet=quiet,
    )
    print(summary(report), file=sys.stderr)
    if report.exit_code != 0:
        return report.exit_code
    scores = evaluate.evaluate(evaluate.load_results(results), gt)
    done = report.frames_done()
    print(
        f"\nframes: {done}   wall time: {report.elapsed_s:.1f} s ({done / report.elapsed_s:.1f} fps"
        f" incl. start-up; {report.processing_fps():.1f} fps once running)"
    )
    print(evaluate.table(scores))
    print(f"\nannotated video: {video}\nresults:         {results}\nground truth:    {gt}")
    return 0
