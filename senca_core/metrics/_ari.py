from __future__ import annotations

from anndata import AnnData
from ._labels import scored_pairs
from ._partition_scores import adjusted_rand_index


def ari(adata: AnnData, key: str = "region", label_key: str = "label") -> float:
    """Adjusted Rand index of ``obs[key]`` against ``obs[label_key]`` over scored spots (no `undetermined`/NA)."""
    pred, truth = scored_pairs(adata, key, label_key)
    return adjusted_rand_index(truth, pred)
