"""Memory of a task: peak resident memory (:func:`peak_rss_mb`, :class:`PeakSampler`), the current one
(:func:`current_rss_mb`), and :func:`release_memory` after a slide."""

from __future__ import annotations

import os
import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class PeakSampler:
    """Peak resident memory of THIS task (not the worker's lifetime): RSS sampled every ``interval`` s in a thread.

    Worker processes are reused across tasks, so ``ru_maxrss`` is the worker's peak over every task it ran; the
    sampled peak is what one slide needs (plus whatever earlier tasks left behind: a leak would show as growth).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0.0
        self._stop = None
        self._thread = None

    def __enter__(self) -> "PeakSampler":
        import threading

        self._stop = threading.Event()
        self.peak = current_rss_mb()

        def loop():
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, current_rss_mb())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def release_memory() -> None:
    """After a slide's task: collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``),
    so that a reused worker's resident memory does not creep up with every slide it has processed."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except OSError:  # pragma: no cover
        return float("nan")
