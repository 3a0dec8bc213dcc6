"""One seed, one model: training runs under torch's deterministic algorithms, in-process and in the platform's loop.

With two or more torch threads the backward of the neighbour gathers accumulates in thread order on CPU; a 1e-8
difference at the first step grew into other embeddings over 200 epochs (two CLI runs of a six-slide HER2ST
cohort, docs/BENCHMARKS.md). The difference shows in some runs only, so these tests check the setting itself, and
that the caller's setting is left as it was.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData
from scipy.spatial import cKDTree

from senca_core.model import SencaConfig, fit

TINY = dict(epochs=3, hidden=16, embed_dim=8, n_heads=2, n_prototypes=4)


def _slide(n_side: int = 8) -> AnnData:
    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xy = np.c_[xx.ravel(), yy.ravel()].astype(float)
    a = AnnData(np.zeros((len(xy), 1), dtype=np.float32))
    a.obsm["spatial"] = xy
    a.obsm["X_pca"] = rng.normal(size=(len(xy), 6)).astype(np.float32)
    a.obsm["X_hist"] = rng.normal(size=(len(xy), 4)).astype(np.float32)
    a.obsm["spatial_neighbors"] = cKDTree(xy).query(xy, k=9)[1].astype(np.int64)
    a.uns["senca"] = {"slide_id": "toy", "grid": "square"}
    return a


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
