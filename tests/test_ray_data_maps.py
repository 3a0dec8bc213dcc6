"""How the stages' per-slide Ray Data maps are run (``jobs.preprocess.run_map``) and what a warmed worker does
once (``jobs.warmup``): the task cap, the DataContext left as found, results in input order, the collector after
the imports."""

from __future__ import annotations

import gc
import weakref

import pytest

from jobs import preprocess, warmup


@pytest.mark.parametrize(("cpus", "concurrency", "num_cpus", "rows", "size"), [
    (2.0, 2, 1.0, 8, 8),    # concurrency = the slots: every row submitted, Ray's scheduler runs two at a time
    (2.0, 4, 1.0, 8, 8),    # above the slots: the same
    (8.0, 2, 1.0, 8, 2),    # the user's limit below the slots stays the cap
    (4.0, 2, 2.0, 6, 6),    # 2-CPU tasks on 4 CPUs: 2 slots
    (2.0, 2, 1.0, 1, 1),    # one row
    (2.0, 3, 0.0, 5, 3),    # zero-CPU tasks: no slot limit from Ray, the cap stays
])
def test_the_map_cap_is_lifted_only_where_ray_already_limits_the_tasks(monkeypatch, cpus, concurrency, num_cpus,
                                                                       rows, size):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus})
    assert preprocess._pool_size(concurrency, num_cpus, rows) == size


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
        out = preprocess.run_map(rows, dict, concurrency=2, num_cpus=1.0, progress=False)  # a copy of each row
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
