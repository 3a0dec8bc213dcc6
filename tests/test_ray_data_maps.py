"""How the stages' per-slide Ray Data maps are run (``jobs.preprocess.run_map``) and what a warmed worker does
once (``jobs.warmup``): the task cap, the DataContext left as found, results in input order, the collector after
the imports, and what the stages then import (never scanpy, scikit-learn or scipy.stats)."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

from jobs import preprocess, warmup


@pytest.mark.parametrize(("concurrency", "rows", "size"), [
    (None, 8, 8),  # unset: every row submitted, Ray's scheduler runs as many as the CPUs hold
    (None, 1, 1),
    (2, 8, 2),     # the user's limit is the cap
    (4, 3, 3),
])
def test_the_map_cap_is_the_users_limit_or_every_row(concurrency, rows, size):
    assert preprocess._pool_size(concurrency, rows) == size


@pytest.mark.parametrize(("cpus", "slides", "concurrency", "warm"), [
    (2, 4, None, 2),  # the CPUs bound the first map: as many workers warmed
    (8, 3, None, 3),  # one per slide
    (4, 6, 1, 1),     # the user's preprocess.concurrency (memory): no idle warm worker beside the one that runs
    (4, 6, 3, 3),
    (2, 0, None, 1),
])
def test_the_warm_workers_are_those_the_first_map_runs_at_once(cpus, slides, concurrency, warm):
    assert warmup.workers_to_warm(cpus, slides, concurrency) == warm
    if slides:
        assert warm == min(cpus, preprocess._pool_size(concurrency, slides))


@pytest.mark.parametrize(("cpus", "slides", "row"), [(2, 1, 2), (2, 4, 1), (8, 3, 6), (1, 1, 1)])
def test_the_warm_up_row_waits_for_a_warm_worker(cpus, slides, row):
    """The one-row map holds every CPU the import tasks leave free and one more: it can only start once an import
    task has finished, in that task's warm worker, never in a process of its own."""
    tasks = warmup.workers_to_warm(cpus, slides, None)
    assert warmup.row_cpus(cpus, tasks) == row
    assert cpus - tasks < row <= cpus


def test_run_map_keeps_input_order_and_leaves_the_data_context_as_found():
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        ctx = ray.data.DataContext.get_current()
        before = ctx.max_errored_blocks, ctx.op_resource_reservation_enabled
        rows = [{"slide_id": f"s{i}", "x": i} for i in range(5)]
        out = preprocess.run_map(rows, dict, concurrency=None, num_cpus=1.0, progress=False)  # a copy of each row
        assert [(r["slide_id"], r["x"]) for r in out] == [(f"s{i}", i) for i in range(5)]
        assert all(r["task_peak_rss_mb"] > 0 for r in out)
        assert (ctx.max_errored_blocks, ctx.op_resource_reservation_enabled) == before
    finally:
        if started:
            ray.shutdown()


def test_frozen_imports_still_let_the_collector_free_new_cycles():
    class Node:
        pass

    try:
        warmup.freeze_imports()
        assert gc.get_freeze_count() > 0
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze: the per-task gc.collect() must still free it
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()  # this is the test process, not a worker


def test_a_worker_running_the_default_stages_never_imports_scanpy_or_scikit_learn():
    """The warm-up's imports, then what a worker's stages do to a slide: its histology features and expression
    chain (``jobs.preprocess.prepare_slide``) and its summary's scores and tables; scanpy, scikit-learn and
    scipy.stats stay out (the driver's pooled clustering imports scikit-learn, ``jobs.warmup.import_driver``)."""
    probe = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import numpy as np\n"
        "from jobs.warmup import import_stack\n"
        "import_stack()\n"
        "import senca_core as sc\n"
        "from jobs.preprocess import prepare_slide\n"
        "a = sc.datasets.synthetic_slide(n_spots=300, seed=0)\n"
        "prepare_slide(a, {})\n"
        "a.obs['region'] = a.obs['true_region'].astype(str)\n"
        "a.obs['label'] = a.obs['true_region'].astype(str)\n"
        "a.obsm['X_senca'] = np.random.default_rng(0).normal(size=(a.n_obs, 8))\n"
        "scores = sc.metrics.ari(a), sc.metrics.nmi(a), sc.metrics.silhouette(a)\n"
        "sc.tl.marker_genes(a, 'region')\n"
        "tumour = sc.tl.tumour_like_regions(a, 'region')\n"
        "sc.tl.heterogeneity(a, 'region', tumour_regions=tumour)\n"
        "sc.tl.microenvironment(a, 'region', tumour_regions=tumour)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('scanpy', 'sklearn')}"
        " | {m for m in sys.modules if m == 'scipy.stats'}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
