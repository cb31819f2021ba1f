"""Entry point of a stage process: `python -m streamseg.stage STAGE JSON_KWARGS`.

The runner starts each stage this way. Arguments travel as JSON (never pickle), so a stage can
also be started by hand, or on another host, with the same command line.
"""

from __future__ import annotations

import json
import logging
import sys

from streamseg.config import ConfigError, WeightsError
from streamseg.source.spec import SourceError

STAGES = ("source", "inference", "postprocess")


def run_stage(stage: str, kwargs: dict) -> int:
    if stage == "source":
        from streamseg.source.main import main
    elif stage == "inference":
        from streamseg.inference.main import main
    elif stage == "postprocess":
        from streamseg.postprocess.main import main
    else:
        raise SystemExit(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    try:
        return main(**kwargs)
    except (ConfigError, WeightsError, SourceError, OSError) as e:
        logging.getLogger(stage).error("%s", e)
        print(f"streamseg {stage}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m streamseg.stage STAGE JSON_KWARGS")
    sys.exit(run_stage(sys.argv[1], json.loads(sys.argv[2])))
