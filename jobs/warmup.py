"""Start-up paid once per run, while the driver does other start-up work (opening the MLflow run).

A fresh Ray worker spends ~3 s importing anndata, torch and the stages' modules before its first slide (never
scanpy, scikit-learn or scipy.stats: no worker stage of the default spec uses them), and Ray Data's first dataset
~2.5 s setting itself up in the driver; paid inside a stage, that start-up is billed to the stage, once per worker
process. :func:`start` submits one import task per worker the first stage will use (each holds a CPU while it
imports, so each lands in its own worker process, which Ray then reuses for the stages' tasks) and runs a one-row
Ray Data map in a background thread; :meth:`Warmup.wait` joins both. Nothing here changes a result.
"""

from __future__ import annotations

import threading
import time
from typing import Any


def import_stack() -> None:
    """In a worker: import what every stage's task imports, Ray Data's map task included (its first map in a
    worker that had not run one imported ~270 modules of ``ray.data``: 0.5 s more for the run's first stage)."""
    import anndata  # noqa: F401
    import ray.data  # noqa: F401
    import torch  # noqa: F401

    try:  # where Ray Data's map tasks run (Ray 2.60); another Ray: imported by its first map, as before
        from ray.data._internal.execution.operators import map_operator  # noqa: F401
    except ImportError:
        pass

    from senca_core import hist, io, metrics, model, pl, pp, tl  # noqa: F401 - the verbs the stages call
    from . import infer, preprocess, train_loop  # noqa: F401

    freeze_imports()


def freeze_imports() -> None:
    """Move every object alive now (the imported stack: ~350,000 objects) out of the cyclic garbage collector's
    reach. A full collection then scans only what the stages create: 0.13 s -> under 1 ms for the
    ``gc.collect()`` after each slide's task (``_memory.release_memory``) and for every automatic full collection
    inside a task. Refcounting frees objects as before; only a reference cycle among these import-time objects
    would outlive its use, and modules live as long as the worker anyway. Workers only: a driver (a test session,
    a notebook) keeps its collector as it is."""
    import gc

    gc.collect()
    gc.freeze()


def import_driver() -> None:
    """In the driver: the imports of its own stage work (shared basis, pooled regions: scikit-learn's mixtures,
    which ``senca_core.tl`` imports only where it fits them), off the critical path."""
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.mixture  # noqa: F401

    from . import infer, preprocess  # noqa: F401
    from senca_core import pp, tl  # noqa: F401


def _one_row(row: dict[str, Any]) -> dict[str, Any]:
    return row


class Warmup:
    def __init__(self, n_workers: int, num_cpus: int = 1) -> None:
        import ray

        self.started = time.perf_counter()
        task = ray.remote(import_stack).options(num_cpus=1, max_retries=0)
        self.refs = [task.remote() for _ in range(max(1, int(n_workers)))]
        self.row_cpus = row_cpus(num_cpus, len(self.refs))
        self.thread = threading.Thread(target=self._data, name="senca-warmup-data", daemon=True)
        self.thread.start()

    def _data(self) -> None:
        try:
            import ray.data

            ctx = ray.data.DataContext.get_current()
            saved = ctx.enable_progress_bars, ctx.print_on_execution_start
            ctx.enable_progress_bars = ctx.print_on_execution_start = False
            try:
                ray.data.from_items([{"i": 0}]).map(_one_row, num_cpus=self.row_cpus).take_all()
            finally:
                ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        except Exception:  # noqa: BLE001 - a warm-up failure costs time later, never the run
            pass

    def wait(self, timeout: float = 120.0) -> float:
        """Join the Ray Data warm-up and the import tasks; returns the seconds since :func:`start`."""
        import ray

        self.thread.join(timeout)
        try:
            ray.get(self.refs, timeout=timeout)
        except Exception:  # noqa: BLE001 - as above: the stages import what a failed warm-up did not
            pass
        return time.perf_counter() - self.started


def row_cpus(num_cpus: int, n_import_tasks: int) -> int:
    """The CPUs the warm-up's one-row map holds: those the import tasks leave free, plus one, so that the row waits
    for the first import task and runs in its warm process. With no CPU the row started a process of its own beside
    the imports (1.1-1.4 CPU-s on a 2-core machine: warm-up 0.6-1.5 s longer in four alternating pairs), and with
    one CPU where the imports leave one free (a one-slide cohort on 2 cores) it did too (1.0 CPU-s: the warm-up
    0.45 s and HER2ST A1 end to end 0.8 s longer on the mean of four alternating pairs; docs/BENCHMARKS.md)."""
    return max(1, int(num_cpus) - int(n_import_tasks) + 1)


def workers_to_warm(num_cpus: int, n_slides: int, concurrency: int | None) -> int:
    """How many workers the first stage's map will run at once, so as many to warm: one per slide, at most the
    CPUs and the spec's ``preprocess.concurrency`` (a user who caps it for memory gets no idle warm worker holding
    its imports, ~600 MB each): the map's own task cap (``preprocess._pool_size``), at most the CPUs."""
    from .preprocess import _pool_size

    return max(1, min(int(num_cpus), _pool_size(concurrency, int(n_slides))))


def start(num_cpus: int, n_slides: int, concurrency: int | None) -> Warmup:
    """Warm :func:`workers_to_warm` workers and Ray Data (in the background; :meth:`Warmup.wait` joins)."""
    return Warmup(workers_to_warm(num_cpus, n_slides, concurrency), num_cpus)
