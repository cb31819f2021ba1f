"""Stage processes: their entry point (`python -m streamseg.stage`), shell and trust tokens.

This package's own module imports nothing but the standard library: `die_with_parent` runs as a
stage's first instruction, before torch (2-5 s of imports) or anything of the pipeline.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

SUPERVISOR_ENV = "STREAMSEG_SUPERVISOR_PID"
"""The environment variable in which a supervisor tells its stages its pid."""

PARENT_ENV = "STREAMSEG_PARENT_PID"
"""The environment variable in which a program tells the run it started (streamseg.api) its
pid: the run's supervisor dies with that program as the stages die with their supervisor."""

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected: str | None = None, *, sig: int = signal.SIGTERM) -> None:
    """Make this process receive `sig` when its parent dies (Linux), and exit at once if the
    parent is already gone.

    `expected`: the pid of the process that started this one (the supervisor's, from
    SUPERVISOR_ENV; default: read from there). The death signal only follows the parent of the
    moment it is set: a supervisor killed before that left the stage re-parented to init (or a
    subreaper), where it ran on for ever. Checking getppid() right after setting it closes that
    gap. Without `expected` (a stage started by hand), only the signal is set.
    SIGTERM, not SIGKILL: once a stage handles it (shell.setup_process), it closes its files whole.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: nothing more can be done here
        return
    want = os.environ.get(SUPERVISOR_ENV) if expected is None else expected
    if want is None or not want.isdigit():
        return
    if os.getppid() != int(want):
        # the supervisor died before the signal was set: it will never come
        print(
            f"streamseg stage: supervisor (pid {want}) is gone before this stage started; exiting",
            file=sys.stderr,
        )
        os._exit(1)
