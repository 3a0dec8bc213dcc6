"""One seed, one model: training runs under torch's deterministic algorithms, in-process and in the platform's loop.

With two or more torch threads the backward of the neighbour gathers accumulates in thread order on CPU; a 1e-8
difference at the first step grew into other embeddings over 200 epochs (two CLI runs of a six-slide HER2ST
cohort, docs/BENCHMARKS.md). The difference shows in some runs only, so these tests check the setting itself, and
that the caller's setting is left as it was.
"""

from __future__ import annotations

import torch
from anndata import AnnData

from senca_core.model import SencaConfig, fit

from _toy_slide import TINY, toy_slide


def _slide(n_side: int = 8) -> AnnData:
    return toy_slide(n_side)


def test_fit_trains_under_deterministic_algorithms_and_restores_the_setting():
    seen = []
    assert not torch.are_deterministic_algorithms_enabled()
    fit(_slide(), SencaConfig(**TINY), callback=lambda epoch, parts: seen.append(
        torch.are_deterministic_algorithms_enabled()))
    assert seen == [True] * TINY["epochs"]
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_callers_warn_only_setting_is_restored():
    from senca_core.model import deterministic

    torch.use_deterministic_algorithms(True)  # strict, as a caller may have set it
    try:
        with deterministic():
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_training_skips_the_nan_fill_of_new_buffers_and_restores_it():
    from senca_core.model import deterministic

    assert torch.utils.deterministic.fill_uninitialized_memory  # torch's default in deterministic mode
    with deterministic():
        assert not torch.utils.deterministic.fill_uninitialized_memory
    assert torch.utils.deterministic.fill_uninitialized_memory


def test_the_neighbourhood_target_is_the_mean_over_each_spots_neighbours_computed_once():
    from senca_core.model import make_batch

    batch = make_batch(_slide(), SencaConfig(**TINY))
    first = batch.neighbourhood_mean("expr")
    assert torch.equal(first, batch.expr[batch.neighbors].mean(dim=1))
    assert batch.neighbourhood_mean("expr") is first


def test_the_platform_loop_trains_under_deterministic_algorithms(tmp_path):
    from jobs.train_loop import read_checkpoint, run_loop
    from jobs.train_sessions import SoloSession

    path = tmp_path / "toy.h5ad"
    _slide().write_h5ad(path)

    class Spy(SoloSession):
        seen: list = []

        def report(self, metrics, checkpoint_dir):
            self.seen.append(torch.are_deterministic_algorithms_enabled())
            super().report(metrics, checkpoint_dir)

    session = Spy(tmp_path / "run")
    cfg = {"model": SencaConfig(**TINY).to_dict(), "slide_paths": [str(path)], "n_expr": 6, "n_hist": 4,
           "eval": {}, "threads": 2, "checkpoint": {"every_epochs": 1, "min_interval_s": 0}}
    run_loop(cfg, session)
    assert Spy.seen and all(Spy.seen), Spy.seen
    assert not torch.are_deterministic_algorithms_enabled()
    _, history = read_checkpoint(session.checkpoints()[-1])
    assert [h["epoch"] for h in history] == list(range(TINY["epochs"]))


_HEAP_PROBE = r"""
import json, resource, sys
import numpy as np
import torch
from anndata import AnnData
from scipy.spatial import cKDTree
from senca_core.model import SencaConfig, make_batch, retained_heap, seed_everything, build_model, \
    make_optimizer, train_step, deterministic

torch.set_num_threads(1)
rng = np.random.default_rng(0)
xx, yy = np.meshgrid(np.arange(60), np.arange(60))
xy = np.c_[xx.ravel(), yy.ravel()].astype(float)
a = AnnData(np.zeros((len(xy), 1), dtype=np.float32))
a.obsm["spatial"], a.obsm["X_pca"] = xy, rng.normal(size=(len(xy), 30)).astype(np.float32)
a.obsm["X_hist"] = rng.normal(size=(len(xy), 20)).astype(np.float32)
a.obsm["spatial_neighbors"] = cKDTree(xy).query(xy, k=7)[1].astype(np.int64)
a.uns["senca"] = {"slide_id": "toy", "grid": "hex"}

def train(inside):
    config = SencaConfig(seed=0)
    generator = seed_everything(0)
    batch = make_batch(a, config)
    model = build_model(config, [batch])
    optimizer = make_optimizer(model, config)
    with deterministic(), (retained_heap() if inside else _nothing()):
        for _ in range(2):  # the heap grows to the step's peak, not counted
            train_step(model, batch, optimizer, generator=generator)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            train_step(model, batch, optimizer, generator=generator)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return faults, [p.detach().clone() for p in model.parameters()]

import contextlib, ctypes
_nothing = contextlib.nullcontext
# glibc's default thresholds (128 KiB), fixed: the first measurement then does not hang on how far the dynamic
# thresholds happened to rise while the interpreter started (once they had: 3 faults outside, a failed comparison)
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 128 * 1024)
libc.mallopt(-1, 128 * 1024)
outside, p_out = train(False)
inside, p_in = train(True)
print(json.dumps({"outside": outside, "inside": inside,
                  "same": all(torch.equal(x, y) for x, y in zip(p_out, p_in))}))
"""


def test_training_keeps_its_heap_between_steps_and_computes_the_same():
    """glibc gives freed training memory back and faults it in again every epoch (22,000-25,000 page faults per
    DLPFC epoch, ``senca_core._heap``): inside ``retained_heap`` a step reuses it, and the weights are
    bit-identical. A fresh interpreter, so that no earlier test has moved the allocator's thresholds."""
    import json
    import subprocess
    import sys

    import pytest

    from senca_core._heap import _libc

    if _libc() is None:
        pytest.skip("not glibc: the allocator's thresholds are not set")
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["same"], seen
    assert seen["inside"] * 5 < seen["outside"], seen


def test_the_retained_heap_nests_and_lets_go_at_the_outermost_exit(monkeypatch):
    from senca_core import _heap

    calls = []

    class Libc:
        def mallopt(self, option, value):
            calls.append(("mallopt", option, value))

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(_heap, "_libc", Libc)
    with _heap.retained_heap():
        with _heap.retained_heap():
            pass
        assert ("trim", 0) not in calls
    assert calls == [("mallopt", -3, _heap.MMAP_THRESHOLD), ("mallopt", -1, _heap.TRIM_WHILE_TRAINING),
                     ("mallopt", -1, _heap.TRIM_AFTER), ("trim", 0)]
