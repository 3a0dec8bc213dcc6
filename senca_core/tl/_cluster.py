"""Regions: cluster embeddings (pooled over slides, so region ids agree across a cohort), refine spatially."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from ..errors import ConfigError, SlideError

METHODS = ("gmm", "leiden", "kmeans")


def _slide(adata: AnnData) -> str:
    return str(adata.uns.get("senca", {}).get("slide_id", "?"))


def _pooled(adatas: Sequence[AnnData], use_rep: str) -> np.ndarray:
    blocks = []
    for a in adatas:
        if use_rep not in a.obsm:
            raise SlideError(f"no embedding {use_rep!r}: run senca_core.tl.senca first", slide=_slide(a),
                             field=f"obsm['{use_rep}']")
        X = np.asarray(a.obsm[use_rep], dtype=np.float64)
        if not np.isfinite(X).all():
            raise SlideError("embedding has NaN/inf values", slide=_slide(a), field=f"obsm['{use_rep}']")
        blocks.append(X)
    return np.vstack(blocks)


def _reduce(X: np.ndarray, n_pcs: int | None, seed: int) -> np.ndarray:
    """Centre and project onto the leading components (GMM covariances stay estimable on small sections)."""
    if n_pcs is None or n_pcs >= X.shape[1]:
        return X - X.mean(0)
    return PCA(n_components=n_pcs, random_state=seed).fit_transform(X)


def _gmm(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    gm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=1e-4, n_init=3, random_state=seed)
    return gm.fit_predict(X)


def _choose_k(X: np.ndarray, seed: int, k_max: int) -> int:
    """k by the lowest BIC of a diagonal GMM over 2..k_max."""
    best, best_k = np.inf, 2
    for k in range(2, k_max + 1):
        bic = GaussianMixture(k, covariance_type="diag", random_state=seed, n_init=2).fit(X).bic(X)
        if bic < best:
            best, best_k = bic, k
    return best_k


def _leiden(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Leiden on the kNN graph of the embedding, resolution searched (bisection) to reach k clusters."""
    import scanpy as sc

    tmp = AnnData(np.zeros((X.shape[0], 1), dtype=np.float32))
    tmp.obsm["X_rep"] = X.astype(np.float32)
    sc.pp.neighbors(tmp, use_rep="X_rep", n_neighbors=min(15, X.shape[0] - 1), random_state=seed)
    lo, hi, labels = 0.01, 3.0, None
    for _ in range(30):
        res = (lo + hi) / 2
        sc.tl.leiden(tmp, resolution=res, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
        labels = tmp.obs["leiden"].astype(int).to_numpy()
        found = len(np.unique(labels))
        if found == k:
            break
        lo, hi = (res, hi) if found < k else (lo, res)
    return labels


def refine_labels(labels: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Spatial refinement: a spot whose neighbours (excluding itself) mostly agree on another region takes it."""
    nb = neighbors[:, 1:]
    out = labels.copy()
    for i in range(len(labels)):
        vals, counts = np.unique(labels[nb[i]], return_counts=True)
        top = counts.argmax()
        if vals[top] != labels[i] and counts[top] > nb.shape[1] / 2:
            out[i] = vals[top]
    return out


def _order_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber regions 0..k-1 by decreasing pooled size (stable, reproducible ids)."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = {old: new for new, old in enumerate(order)}
    return np.array([remap[x] for x in labels])


def cluster(adatas: AnnData | Sequence[AnnData], k: int | None = None, *, method: str = "gmm",
            use_rep: str = "X_senca", refine: bool = True, n_pcs: int | None = 20, seed: int = 0,
            key_added: str = "region", k_max: int = 12) -> int:
    """Cluster ``obsm[use_rep]`` into ``k`` regions; writes ``obs[key_added]`` (categorical) on every slide.

    A list of slides is clustered on the pooled embeddings, so region ``"3"`` means the same in every slide.
    ``k=None`` chooses k by BIC. ``refine`` smooths labels over ``obsm['spatial_neighbors']``. Returns k.
    """
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    if method not in METHODS:
        raise ConfigError("method", f"unknown clustering method {method!r}; use one of {METHODS}")
    X = _pooled(adatas, use_rep)
    n = X.shape[0]
    if k is not None:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("k", f"must be a positive integer or None, got {k!r}")
        if k > n:
            slides = ", ".join(_slide(a) for a in adatas)
            raise SlideError(f"k={k} regions requested but only {n} spots", slide=slides, field="k")
    Xr = _reduce(X, n_pcs, seed)
    if k is None:
        k = _choose_k(Xr, seed, min(k_max, max(2, n // 10)))
    if method == "gmm":
        labels = _gmm(Xr, k, seed)
    elif method == "kmeans":
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(Xr)
    else:
        labels = _leiden(Xr, k, seed)
    start = 0
    per_slide = []
    for a in adatas:
        lab = labels[start:start + a.n_obs]
        start += a.n_obs
        if refine and "spatial_neighbors" in a.obsm:
            lab = refine_labels(lab, np.asarray(a.obsm["spatial_neighbors"]))
        per_slide.append(lab)
    pooled = _order_by_size(np.concatenate(per_slide))
    start = 0
    categories = [str(i) for i in range(int(pooled.max()) + 1)]
    for a in adatas:
        a.obs[key_added] = pd.Categorical(pooled[start:start + a.n_obs].astype(str), categories=categories)
        start += a.n_obs
    return int(k)
