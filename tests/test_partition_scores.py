"""The partition scores without scikit-learn (``senca_core.metrics._partition_scores``, ``._silhouette``): the same
numbers as scikit-learn's, so that a Ray worker scoring its slide never imports it (0.8 s of CPU per worker)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from senca_core.metrics._partition_scores import adjusted_rand_index, contingency, normalized_mutual_information
from senca_core.metrics._silhouette import silhouette_of


def _labelings(n_cases=600, seed=0):
    rng = np.random.default_rng(seed)
    for case in range(n_cases):
        n = int(rng.integers(1, 80))
        a, b = rng.integers(0, int(rng.integers(1, 9)), n), rng.integers(0, int(rng.integers(1, 9)), n)
        if case % 3 == 0:
            b = a.copy()  # full agreement (and, for one class, the limit cases)
        if case % 4 == 0:
            a = np.array([f"class {x}" for x in a])  # strings, as obs columns are
        yield a, b
    yield np.array([], dtype=int), np.array([], dtype=int)
    yield np.zeros(5, dtype=int), np.arange(5)  # one class against every item its own


def test_ari_is_scikit_learns_to_the_last_bit_and_nmi_to_1e_12():
    for a, b in _labelings():
        assert adjusted_rand_index(a, b) == adjusted_rand_score(a, b), (a, b)
        assert abs(normalized_mutual_information(a, b) - normalized_mutual_info_score(a, b)) < 1e-12, (a, b)


def test_contingency_counts_shared_items_and_refuses_mismatched_labelings():
    table = contingency(["x", "x", "y", "z"], [1, 2, 2, 2])
    assert table.tolist() == [[1, 1], [0, 1], [0, 1]]
    with pytest.raises(ValueError, match="same length"):
        contingency([0, 1], [0, 1, 2])


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-6)])  # sklearn rounds float32 distances
def test_silhouette_is_scikit_learns_also_on_the_same_sampled_spots(dtype, tol):
    rng = np.random.default_rng(1)
    for case in range(60):
        n = int(rng.integers(6, 400))
        X = (rng.normal(size=(n, int(rng.integers(1, 16)))) + 0.0).astype(dtype)
        labels = rng.integers(0, int(rng.integers(2, 7)), n)
        if len(set(labels)) < 2:
            continue
        labels[:2] = [0, 1]
        sample = None if case % 2 else max(4, n // 2)
        if sample is not None and len(set(labels[np.random.RandomState(case).permutation(n)[:sample]])) < 2:
            continue
        ours = silhouette_of(X, labels, sample_size=sample, seed=case)
        assert abs(ours - silhouette_score(X, labels, sample_size=sample, random_state=case)) < tol
    lone = np.array([0, 0, 0, 1, 1, 2])  # a spot alone in its region scores 0, as in scikit-learn
    X = rng.normal(size=(6, 3))
    assert abs(silhouette_of(X, lone) - silhouette_score(X, lone)) < 1e-10
    with pytest.raises(ValueError, match="labels"):
        silhouette_of(X, np.arange(6))
