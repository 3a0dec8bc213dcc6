"""``silhouette``: how well an embedding's spots sit in their regions, without labels (numpy only).

scikit-learn's definition (``silhouette_score``, Euclidean): for each spot ``a`` = its mean distance to the other
spots of its region, ``b`` = its smallest mean distance to the spots of another region, ``s = (b - a) / max(a,
b)``, 0 for a spot alone in its region; the score is the mean over spots. Computed here without importing
scikit-learn (0.8 s of CPU in every Ray worker that scores a slide: ``senca_core.metrics._partition_scores``),
row blocks of the distance matrix at a time; equal to scikit-learn's to ~1e-12 and on the same sampled spots
(``tests/test_partition_scores.py``).
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData

#: rows of the distance matrix held at once (x the spots scored, float64: 512 x 5,000 = 20 MB at most)
_BLOCK = 512


def silhouette_of(X: np.ndarray, labels, *, sample_size: int | None = None, seed: int = 0) -> float:
    """Mean silhouette of the rows of ``X`` under ``labels`` (``sample_size``: that many spots drawn as
    scikit-learn's ``silhouette_score`` draws them for ``random_state=seed``). Needs 2 to n - 1 distinct labels."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if sample_size is not None:
        keep = np.random.RandomState(seed).permutation(X.shape[0])[:sample_size]
        X, labels = X[keep], labels[keep]
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.ravel()
    n, k = X.shape[0], int(codes.max()) + 1 if codes.size else 0
    if not 2 <= k <= n - 1:
        raise ValueError(f"silhouette needs 2 to n_samples - 1 = {n - 1} labels, got {k}")
    onehot = np.zeros((n, k))
    onehot[np.arange(n), codes] = 1.0
    sizes = onehot.sum(axis=0)
    squares = np.einsum("ij,ij->i", X, X)
    scores = np.empty(n)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(start + _BLOCK, n))
        dist = X[rows] @ X.T
        dist *= -2.0
        dist += squares[rows, None]
        dist += squares[None, :]
        np.maximum(dist, 0.0, out=dist)
        np.sqrt(dist, out=dist)
        dist[np.arange(dist.shape[0]), np.arange(rows.start, rows.stop)] = 0.0  # a spot's distance to itself
        sums = dist @ onehot  # (block, k): summed distance to each region's spots
        own = codes[rows]
        own_size = sizes[own]
        a = sums[np.arange(len(own)), own] / np.maximum(own_size - 1, 1)
        sums[np.arange(len(own)), own] = np.inf
        b = (sums / sizes).min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = (b - a) / np.maximum(a, b)
        scores[rows] = np.where(own_size > 1, np.nan_to_num(s), 0.0)
    return float(scores.mean())


def silhouette(adata: AnnData, use_rep: str = "X_senca", key: str = "region", *, max_spots: int = 5000,
               seed: int = 0) -> float:
    """Silhouette of the embedding ``obsm[use_rep]`` under the partition ``obs[key]`` (NaN for one cluster).

    Sampled to ``max_spots`` spots so the cost stays bounded on large sections.
    """
    labels = adata.obs[key].astype(str).to_numpy()
    if len(set(labels)) < 2:
        return float("nan")
    X = np.asarray(adata.obsm[use_rep])
    n = min(max_spots, X.shape[0])
    return silhouette_of(X, labels, sample_size=n if n < X.shape[0] else None, seed=seed)
