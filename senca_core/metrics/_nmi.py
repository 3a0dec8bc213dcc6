from __future__ import annotations

from anndata import AnnData
from sklearn.metrics import normalized_mutual_info_score

from ._labels import scored_pairs


def nmi(adata: AnnData, key: str = "region", label_key: str = "label") -> float:
    """Normalised mutual information of ``obs[key]`` against ``obs[label_key]`` over scored spots."""
    pred, truth = scored_pairs(adata, key, label_key)
    return float(normalized_mutual_info_score(truth, pred))
