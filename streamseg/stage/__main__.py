"""Entry point of a stage process: `python -m streamseg.stage STAGE JSON_KWARGS`.

The runner starts each stage this way. Arguments travel as JSON (never pickle), so a stage can
also be started by hand, or on another host, with the same command line.
"""

from __future__ import annotations

import json
import sys

from streamseg.config import ConfigError, WeightsError
from streamseg.source.spec import SourceError

STAGES = ("source", "inference", "postprocess", "dispatcher", "worker")


def run_stage(stage: str, kwargs: dict) -> int:
    if stage == "source":
        from streamseg.source.main import main
    elif stage == "inference":
        from streamseg.inference.main import main
    elif stage == "postprocess":
        from streamseg.postprocess.main import main
    elif stage == "dispatcher":
        from streamseg.inference.dispatcher import main
    elif stage == "worker":
        from streamseg.inference.worker import main
    else:
        raise SystemExit(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    try:
        return main(**kwargs)
    except (ConfigError, WeightsError, SourceError, OSError) as e:
        print(f"streamseg {stage}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m streamseg.stage STAGE JSON_KWARGS", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(argv[1])
    except ValueError:
        print("streamseg stage: error: JSON_KWARGS is not valid JSON", file=sys.stderr)
        return 2
    try:
        return run_stage(argv[0], kwargs)
    except KeyboardInterrupt:  # stopped (SIGTERM/Ctrl-C) before or after its loop: no traceback
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
