"""``stability``: how reproducible a k-region partition of an embedding is, without labels."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from ._partition_scores import adjusted_rand_index


def stability(adata: AnnData | Sequence[AnnData], k: int, use_rep: str = "X_senca", *, n_pcs: int = 15,
              n_boot: int = 4, fraction: float = 0.8, max_spots: int = 3000, seed: int = 0) -> float:
    """Mean pairwise ARI between the k-region partitions of ``n_boot`` GaussianMixtures, each fitted on a random
    ``fraction`` of the spots (pooled over the slides given) with its own seed, and each predicting every spot.

    Uses no label. An embedding whose regions are real structure gives the same regions whichever spots and start
    the mixture gets (close to 1); an embedding of noise, or one with fewer real regions than ``k``, gives partitions
    that disagree. ``max_spots`` bounds the cost on large sections (a fixed random subset is scored).
    """
    from sklearn.decomposition import PCA  # here: importing ``metrics`` (a Ray worker does) loads no sklearn
    from sklearn.mixture import GaussianMixture

    slides = [adata] if isinstance(adata, AnnData) else list(adata)
    X = np.vstack([np.asarray(a.obsm[use_rep], dtype=np.float64) for a in slides])
    rng = np.random.default_rng(seed)
    if X.shape[0] > max_spots:
        X = X[rng.choice(X.shape[0], max_spots, replace=False)]
    n = X.shape[0]
    k = int(k)
    if n < 2 * k or k < 2:
        return float("nan")
    X = PCA(min(n_pcs, X.shape[1], n), random_state=seed).fit_transform(X)
    partitions = []
    for b in range(int(n_boot)):
        idx = rng.choice(n, max(k, int(round(fraction * n))), replace=False)
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed + b).fit(X[idx])
        partitions.append(gmm.predict(X))
    return float(np.mean([adjusted_rand_index(p, q) for p, q in itertools.combinations(partitions, 2)]))
