"""Independent pieces of work side by side on the CPUs this process may use: the clustering's mixtures
(``tl``) and the histology's batches of patches (``hist``). scikit-learn and NumPy release the GIL in their
linear algebra and array loops, so threads overlap where a loop would leave a core idle."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_inside = threading.local()


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by ``OMP_NUM_THREADS`` where set (Ray sets it to a task's
    CPUs in its workers, so a one-CPU task stays on one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        cpus = min(cpus, int(os.environ.get("OMP_NUM_THREADS", "") or cpus))
    except ValueError:
        pass
    return max(1, cpus)


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, in that order, on up to :func:`usable_cpus` threads. Each call must be
    independent of the others (its own inputs and outputs). A call made from inside one of these threads runs its
    items in a plain loop (no threads within threads); so does a single item or a single CPU. The first exception
    raised is raised here."""
    items = list(items)
    workers = min(len(items), usable_cpus())
    if workers <= 1 or getattr(_inside, "active", False):
        return [fn(x) for x in items]

    def run(x: T) -> R:
        _inside.active = True
        try:
            return fn(x)
        finally:
            _inside.active = False

    from threadpoolctl import threadpool_limits

    # One BLAS thread per call while the threads run, set and restored here, in the calling thread: the threads
    # share the CPUs already. It also keeps the process's BLAS setting as it was: scikit-learn's k-means limits
    # BLAS to one thread and restores what it found, and two of those overlapping in threads once left this
    # process's BLAS at one thread for good (measured: every later PCA of the process changed in the 14th digit).
    with threadpool_limits(limits=1, user_api="blas"), \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="senca-fit") as pool:
        return list(pool.map(run, items))
