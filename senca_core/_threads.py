"""Independent pieces of work side by side on the CPUs this process may use: the clustering's mixtures
(``tl``) and the histology's batches of patches (``hist``). scikit-learn and NumPy release the GIL in their
linear algebra and array loops, so threads overlap where a loop would leave a core idle.

And one BLAS thread for small matrices (:func:`one_blas_thread`): the clustering's mixtures work on (spots, 15)
matrices, where OpenBLAS's threads cost more than they give."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_inside = threading.local()
_blas_lock = threading.Lock()
_blas_holder: dict | None = None  # the thread that set the limit, its limiter and its nesting depth


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


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS at one thread inside (held by the main thread); the process's setting restored when it leaves.

    The main thread sets the limit and holds it: its nested calls and calls from other threads while it holds
    (the fits of :func:`thread_map`) run under it and change nothing, and its outermost call restores the setting.
    A call from another thread while the main thread does not hold changes nothing either: measured with the
    OpenBLAS of our NumPy, a thread other than the main one can lower the process's BLAS thread count but not
    raise it back, so its restore would leave the process at one BLAS thread for good. (scikit-learn's k-means
    limits and restores inside its fit; in threads, that once left this process at one BLAS thread, and every
    later PCA changed in the 14th digit.)

    Measured on a 2-core machine: a full-covariance mixture of 6 components on DLPFC 151673's readout (3,639 x 15,
    ``n_init`` 3) takes 3.3-3.7 s with OpenBLAS's two threads and 0.5 s with one."""
    global _blas_holder
    from threadpoolctl import threadpool_limits

    me = threading.get_ident()
    with _blas_lock:
        if _blas_holder is None and threading.current_thread() is threading.main_thread():
            _blas_holder = {"thread": me, "limiter": threadpool_limits(limits=1, user_api="blas"), "depth": 0}
        own = _blas_holder is not None and _blas_holder["thread"] == me
        if own:
            _blas_holder["depth"] += 1
    try:
        yield
    finally:
        if own:
            with _blas_lock:
                _blas_holder["depth"] -= 1
                if _blas_holder["depth"] == 0:
                    _blas_holder["limiter"].restore_original_limits()
                    _blas_holder = None


def small_matrices(fn: Callable[..., R]) -> Callable[..., R]:
    """Decorator: ``fn`` runs under :func:`one_blas_thread` (its linear algebra is on small matrices)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)
    return wrapped


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

    # One BLAS thread per call while the threads run (the threads share the CPUs already), when called from the
    # main thread; from another thread the fits run at the process's BLAS setting (see one_blas_thread)
    with one_blas_thread(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="senca-fit") as pool:
        return list(pool.map(run, items))
