"""Count the objects that cross a line, with supervision's LineZone and streamseg's track ids.

    pip install 'streamseg[supervision]'
    python examples/line_crossing.py clip.mp4

The line is vertical, through the middle of the frame; each tracked object that crosses it is
counted once per direction.
"""

import sys

import supervision as sv

import streamseg
from streamseg.client import to_supervision


def main(path: str) -> int:
    line = None
    with streamseg.Pipeline(path) as pipeline:
        for result in pipeline:
            if line is None:
                x = result.width // 2
                line = sv.LineZone(start=sv.Point(x, 0), end=sv.Point(x, result.height))
            detections = to_supervision(result)
            line.trigger(detections[detections.tracker_id >= 0])  # tracked objects only
    if line is None:
        print("no frames")
        return 1
    print(f"crossed left to right: {line.in_count}, right to left: {line.out_count}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
