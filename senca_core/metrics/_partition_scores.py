"""Agreement between two partitions of the same spots, from their contingency table: the adjusted Rand index and
the normalised mutual information (arithmetic mean of the entropies), numpy only.

A worker scoring its slide needs these two numbers and the silhouette; importing scikit-learn for them cost each
Ray worker 0.8 s of CPU at start-up (``sklearn.metrics`` with the ``scipy.stats`` it loads). The definitions and
their limit cases are scikit-learn's (``adjusted_rand_score``, ``normalized_mutual_info_score``): ARI from the pair
counts in exact integer arithmetic, so it equals scikit-learn's to the last bit; NMI to ~1e-15 (another summation
order). ``tests/test_partition_scores.py`` compares both with scikit-learn's.
"""

from __future__ import annotations

import numpy as np


def contingency(a, b) -> np.ndarray:
    """(classes of ``a``, classes of ``b``) table of how many items each pair of classes shares (int64)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two 1-d labelings of the same length expected, got shapes {a.shape} and {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    n_b = int(ib.max()) + 1 if ib.size else 0
    counts = np.bincount(ia.ravel() * n_b + ib.ravel(), minlength=(int(ia.max()) + 1 if ia.size else 0) * n_b)
    return counts.reshape(-1, n_b) if n_b else np.zeros((0, 0), dtype=np.int64)


def adjusted_rand_index(truth, pred) -> float:
    """Adjusted Rand index of two labelings: 1 for the same partition, ~0 for independent ones (may be < 0).
    Two labelings that agree on every pair of items (one class each, or the same classes) give 1."""
    table = contingency(truth, pred).astype(np.int64)
    n = int(table.sum())
    squares = int((table ** 2).sum())
    # ordered pairs of distinct items: together in both labelings, in pred's class only, in truth's only, neither
    both = squares - n
    pred_only = int((table.sum(axis=0) ** 2).sum()) - squares
    truth_only = int((table.sum(axis=1) ** 2).sum()) - squares
    neither = n * n - pred_only - truth_only - squares
    if pred_only == 0 and truth_only == 0:
        return 1.0
    return 2.0 * (both * neither - truth_only * pred_only) / (
        (both + truth_only) * (truth_only + neither) + (both + pred_only) * (pred_only + neither))


def normalized_mutual_information(truth, pred) -> float:
    """Mutual information of two labelings over the arithmetic mean of their entropies (natural log): 1 for the
    same partition (also when both have one class, or none), 0 for independent ones."""
    table = contingency(truth, pred)
    if table.shape[0] == table.shape[1] and table.shape[0] <= 1:
        return 1.0
    n = float(table.sum())
    rows, cols = table.sum(axis=1).astype(float), table.sum(axis=0).astype(float)
    i, j = np.nonzero(table)
    joint = table[i, j].astype(float)
    mi = max(float(np.sum(joint / n * (np.log(joint) + np.log(n) - np.log(rows[i]) - np.log(cols[j])))), 0.0)
    if mi == 0.0:
        return 0.0

    def entropy(sizes: np.ndarray) -> float:
        p = sizes[sizes > 0] / n
        return float(-np.sum(p * np.log(p)))

    return float(mi / max((entropy(rows) + entropy(cols)) / 2, np.finfo(float).eps))
