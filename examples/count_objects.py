"""Count the objects in every frame of a video file.

    python examples/count_objects.py clip.mp4

Prints one line per frame (`frame 12: 2 circle, 1 square`) and the run's figures at the end.
Every frame comes, in order: a file run waits for this loop, so nothing is lost.
"""

import sys

import streamseg


def main(path: str) -> int:
    with streamseg.Pipeline(path) as pipeline:
        for result in pipeline:
            counts = ", ".join(f"{n} {name}" for name, n in sorted(result.counts().items()))
            print(f"frame {result.frame}: {counts or 'nothing'}")
    report = pipeline.report
    print(f"{report.frames} frames in {report.elapsed_s:.1f} s, exit code {report.exit_code}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
