"""The clustering's independent fits side by side (``senca_core._threads``): same regions as one after the other."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from senca_core import tl
from senca_core import _threads

from _state_slides import CENTRES


def test_thread_map_keeps_the_order_and_runs_nested_calls_inline(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 2)
    seen = []

    def inner(x):
        seen.append(threading.current_thread().name)
        return x * 10

    def outer(x):
        return [x, _threads.thread_map(inner, [x, x + 1])]

    got = _threads.thread_map(outer, range(5))
    assert got == [[x, [10 * x, 10 * (x + 1)]] for x in range(5)]
    assert all(name.startswith("senca-fit") for name in seen)  # the outer threads ran the inner items themselves

    def boom(x):
        raise ValueError(f"item {x}")

    with pytest.raises(ValueError, match="item"):
        _threads.thread_map(boom, [1, 2])


def test_the_process_blas_threads_are_as_they_were_after_fits_in_threads(monkeypatch):
    """k-means (the mixtures' initialisation) limits BLAS to one thread and restores what it found; overlapping in
    threads, that once left the whole process at one BLAS thread. The pool's own limit, set and restored in the
    calling thread, keeps the process's setting."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(_threads, "usable_cpus", lambda: 2)
    X = np.random.default_rng(0).normal(size=(400, 5))
    before = sorted((i["user_api"], i["num_threads"]) for i in threadpool_info())
    _threads.thread_map(lambda k: KMeans(k, n_init=3, random_state=0).fit(X).inertia_, range(2, 10))
    assert sorted((i["user_api"], i["num_threads"]) for i in threadpool_info()) == before


def test_one_usable_cpu_is_a_plain_loop_and_omp_num_threads_caps_the_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads.usable_cpus() == 1
    names = _threads.thread_map(lambda _: threading.current_thread().name, range(3))
    assert names == [threading.current_thread().name] * 3
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert _threads.usable_cpus() >= 1


def _bands(seed: int, side: int = 18) -> AnnData:
    """Three noisy bands of tissue states in 40 dimensions (so the consensus's 10, 15 and 30 components all fit)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(side), np.arange(side))
    xy = np.c_[xx.ravel(), yy.ravel()].astype(float)
    truth = np.minimum((xy[:, 0] * 3 // side).astype(int), 2)
    lift = np.random.default_rng(0).normal(size=(CENTRES.shape[1], 40))
    a = AnnData(X=sp.csr_matrix((len(xy), 0), dtype=np.float32))
    a.obsm["X_senca"] = (CENTRES[truth] + rng.normal(0, 1.5, size=(len(xy), CENTRES.shape[1]))) @ lift \
        + rng.normal(0, 0.3, size=(len(xy), 40))
    a.obsm["spatial_neighbors"] = cKDTree(xy).query(xy, k=9)[1].astype(np.int64)
    a.obs["truth"] = pd.Categorical(truth.astype(str))
    a.uns["senca"] = {"slide_id": f"bands{seed}"}
    return a


@pytest.mark.parametrize("k", [3, None])
def test_the_consensus_fitted_side_by_side_is_the_consensus_fitted_in_turn(monkeypatch, k):
    """Members after the first (which chooses k) run in threads on stand-ins of the slides: the same k, the same
    member cuts and the same regions on every slide as with one CPU; the slides get only the consensus."""
    results = {}
    for cpus in (1, 2):
        monkeypatch.setattr(_threads, "usable_cpus", lambda cpus=cpus: cpus)
        slides = [_bands(1), _bands(2)]
        model = tl.cluster(slides, k, cut_by="cohort", return_model=True)  # the pooled consensus, k given or read
        results[cpus] = (model.k_requested, [s.obs["region"].astype(int).tolist() for s in slides],
                         [[m.predict(s).tolist() for s in slides] for m in model.members])
        assert list(slides[0].obs.columns) == ["truth", "region"]
    assert results[1] == results[2]
    assert len(results[2][2]) == 2


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def _blas_threads_in_another_thread() -> list[int]:
    """The BLAS thread counts a call of ``one_blas_thread`` sees from a thread other than this one."""
    seen = []

    def other():
        with _threads.one_blas_thread():
            seen.append(_blas_threads())

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    return seen[0]


def test_one_blas_thread_is_held_by_the_main_thread_and_restored_when_it_leaves():
    """Calls nested in the main thread's, and calls from other threads while it holds, run under its limit and
    change nothing; its outermost call restores the process's setting."""
    before = _blas_threads()
    if not before:
        pytest.skip("no BLAS library seen by threadpoolctl")
    with _threads.one_blas_thread():
        assert _blas_threads() == [1] * len(before)
        assert _blas_threads_in_another_thread() == [1] * len(before)
        with _threads.one_blas_thread():  # nested in this thread
            pass
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_one_blas_thread_from_another_thread_alone_changes_nothing():
    """OpenBLAS lets a thread other than the main one lower its thread count but not raise it back: such a caller
    leaves the setting alone rather than leave the process at one BLAS thread."""
    before = _blas_threads()
    if not before:
        pytest.skip("no BLAS library seen by threadpoolctl")
    assert _blas_threads_in_another_thread() == before
    assert _blas_threads() == before


def test_the_clustering_fits_its_mixtures_on_one_blas_thread(monkeypatch):
    """``tl.cluster``'s mixtures are fitted on (spots, 15) matrices, where OpenBLAS's threads cost more than they
    give (DLPFC's first cut: 3.5 s on two threads, 0.5 s on one): every fit sees one BLAS thread, and the process
    gets its setting back after."""
    import sklearn.mixture
    from sklearn.mixture import GaussianMixture

    before = _blas_threads()
    if not before:
        pytest.skip("no BLAS library seen by threadpoolctl")
    seen = []

    class Spy(GaussianMixture):
        def fit(self, X, y=None):
            seen.append(_blas_threads())
            return super().fit(X, y)

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", Spy)  # tl imports it where it fits, at the call
    slide = _bands(3)
    tl.cluster(slide, None)
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert _blas_threads() == before
