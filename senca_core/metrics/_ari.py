from __future__ import annotations

from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from ._labels import scored_pairs


def ari(adata: AnnData, key: str = "region", label_key: str = "label") -> float:
    """Adjusted Rand index of ``obs[key]`` against ``obs[label_key]`` over scored spots (no `undetermined`/NA)."""
    pred, truth = scored_pairs(adata, key, label_key)
    return float(adjusted_rand_score(truth, pred))
