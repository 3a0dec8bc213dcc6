from __future__ import annotations

from anndata import AnnData
from ._labels import scored_pairs
from ._partition_scores import normalized_mutual_information


def nmi(adata: AnnData, key: str = "region", label_key: str = "label") -> float:
    """Normalised mutual information of ``obs[key]`` against ``obs[label_key]`` over scored spots."""
    pred, truth = scored_pairs(adata, key, label_key)
    return normalized_mutual_information(truth, pred)
