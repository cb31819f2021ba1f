"""Forward every result to your own code: here, a function that runs on its own thread, so a
slow handler (a database, an HTTP call) never holds the loop that takes results.

    python examples/forward_results.py clip.mp4 out.jsonl

Each frame becomes one JSON line with its boxes, labels, scores and track ids.
"""

import json
import queue
import sys
import threading

import streamseg


def handler(lines: "queue.Queue[dict | None]", path: str) -> None:
    """Your code: takes one record at a time until None."""
    with open(path, "w") as out:
        while (record := lines.get()) is not None:
            out.write(json.dumps(record) + "\n")


def main(video: str, path: str) -> int:
    lines: queue.Queue[dict | None] = queue.Queue(maxsize=100)  # bounded: it slows the run
    worker = threading.Thread(target=handler, args=(lines, path))
    worker.start()
    try:
        with streamseg.Pipeline(video) as pipeline:
            for result in pipeline:
                lines.put(
                    {
                        "stream": result.stream,
                        "frame": result.frame,
                        "objects": [
                            {
                                "label": i.label_name,
                                "score": round(i.score, 3),
                                "box": [round(v, 1) for v in i.box],
                                "track": i.track_id,
                            }
                            for i in result.instances
                        ],
                    }
                )
    finally:
        lines.put(None)
        worker.join()
    print(f"forwarded {pipeline.received} frames to {path}")
    return pipeline.report.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
