"""Fault injection for the tests (off by default).

:func:`fault_point` does nothing unless the environment variable ``SENCA_FAULT_PIDDIR`` is set in the worker
processes (the tests set it before starting their embedded Ray). When set, the process writes its pid to
``$SENCA_FAULT_PIDDIR/<point>.<pid>.<n>.pid`` and sleeps ``SENCA_FAULT_SLOW_S`` seconds (default 0), so that a
test can ``SIGKILL`` it at a known point (``tests/test_faults_workers.py``). The points: ``prepare.<slide>`` (a
slide's prepared h5ad written to its temp file, not yet renamed; ``jobs.preprocess.read_and_prepare``) and
``train.rank<r>.epoch<e>`` (the epoch's optimiser steps done, its metrics not yet gathered nor checkpointed;
``jobs.train.train_loop_per_worker``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ._files import atomic_write_text

FAULT_PIDDIR_ENV = "SENCA_FAULT_PIDDIR"
FAULT_SLOW_ENV = "SENCA_FAULT_SLOW_S"


def fault_point(name: str) -> None:
    """Fault-injection hook for the fault tests; a no-op unless ``SENCA_FAULT_PIDDIR`` is set (see the module doc).

    When set: writes this process's pid to ``$SENCA_FAULT_PIDDIR/<name>.<pid>.<n>.pid`` (atomically; ``n`` orders
    the files), then sleeps ``SENCA_FAULT_SLOW_S`` seconds, the window in which the test kills the process.
    """
    piddir = os.environ.get(FAULT_PIDDIR_ENV)
    if not piddir:
        return
    import time

    pid = os.getpid()
    atomic_write_text(Path(piddir) / f"{name}.{pid}.{time.time_ns()}.pid", f"{pid}\n")
    slow = float(os.environ.get(FAULT_SLOW_ENV) or 0.0)
    if slow > 0:
        time.sleep(slow)
