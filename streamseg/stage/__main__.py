"""Entry point of a stage process: `python -m streamseg.stage STAGE JSON_ARGS`.

The runner starts each stage this way. Arguments travel as JSON (never pickle): the stage's
record (streamseg.stage.args), checked field by field, so a stage can also be started by hand,
or on another host, with the same command line.
"""

from __future__ import annotations

import logging
import os
import sys

if __name__ == "__main__":  # first, before any import that takes time (torch: 2-5 s)
    from streamseg.stage import die_with_parent

    die_with_parent()

from streamseg.config import ConfigError, WeightsError
from streamseg.source.spec import SourceError
from streamseg.stage.args import STAGES, StageArgs, from_json, stage_of


def run_stage(args: StageArgs) -> int:
    """Run the stage `args` are for, in this process; its exit code."""
    stage = stage_of(args)
    if stage == "source":
        from streamseg.source.main import main
    elif stage == "inference":
        from streamseg.inference.main import main
    elif stage == "postprocess":
        from streamseg.postprocess.main import main
    elif stage == "dispatcher":
        from streamseg.inference.dispatcher import main
    else:
        from streamseg.inference.worker import main
    try:
        return main(args)
    except (ConfigError, WeightsError, SourceError, OSError) as e:
        print(f"streamseg {stage}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m streamseg.stage STAGE JSON_ARGS", file=sys.stderr)
        return 2
    if argv[0] not in STAGES:  # a bug of whoever started it, not bad input: exit 1
        raise SystemExit(f"unknown stage {argv[0]!r}; one of {', '.join(STAGES)}")
    try:
        args = from_json(argv[0], argv[1])
    except ConfigError as e:
        print(f"streamseg stage: error: {e}", file=sys.stderr)
        return 2
    try:
        return run_stage(args)
    except KeyboardInterrupt:  # stopped (SIGTERM/Ctrl-C) before or after its loop: no traceback
        return 130


def exit_now(code: int) -> None:
    """End the stage process without the interpreter's teardown.

    When a stage's main returns, run_stage_loop has closed its files and delivered (or dropped)
    what its sockets held; only Python's own teardown is left, and with torch imported that
    takes about 1 s of CPU (measured on 2 cores: 1.0-1.1 s, against 0.05 s this way), in each
    such stage, at the end of every run. An exception still ends the process the usual way.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    logging.shutdown()
    os._exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
