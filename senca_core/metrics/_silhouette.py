from __future__ import annotations

import numpy as np
from anndata import AnnData
from sklearn.metrics import silhouette_score


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
    return float(silhouette_score(X, labels, sample_size=n if n < X.shape[0] else None, random_state=seed))
