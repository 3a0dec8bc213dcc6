"""``pca`` / ``pca_project``: PCA of the log-normalised HVGs, one slide or a cohort with one basis."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError, SlideError
from ._common_genes import common_genes
from ._hvg import hvg as _hvg
from ._normalize import log_normalize, normalize_log
from ._utils import counts_matrix, slide_name

PcaState = dict[str, Any]
"""What ``pca`` fits and ``pca_project`` needs: ``genes`` (str array, G), ``mean`` (float64, G),
``components`` (float64, n_comps × G, rows = loadings), ``variance``, ``variance_ratio`` (n_comps),
``target_sum`` (float) and ``n_comps``, ``n_slides``, ``n_spots`` (ints)."""


def pca(
    adata: AnnData | Sequence[AnnData],
    n_comps: int = 30,
    *,
    use_hvg: bool = True,
    seed: int = 0,
) -> PcaState:
    """Principal components of ``layers["log1p"]`` (mean-centred, not scaled).

    One AnnData: genes = ``var["highly_variable"]`` (when ``use_hvg``; computed with :func:`hvg`
    if absent), else all genes. A list of AnnData: ONE PCA is fitted on the pooled spots of all
    slides over a shared gene set, so every slide's ``X_pca`` lives in the same basis (what a
    cohort model needs). The shared genes are the genes common to all slides (:func:`common_genes`),
    ranked by the number of slides in which they are highly variable, then by their median HVG rank;
    the top ``max(number of HVGs per slide)`` are used (all common genes when ``use_hvg=False``).

    ``layers["log1p"]`` is computed with :func:`normalize_log` (target 1e4) where absent. The
    solver is exact: an eigendecomposition of the smaller of the spot × spot / gene × gene
    covariance matrices (dense when at most 1500 wide, else ARPACK with a start vector drawn from
    ``seed``), so results do not depend on the seed beyond numerical noise. Component signs are fixed so that each loading vector's largest |entry| is positive.
    ``n_comps`` is reduced to ``min(n_spots, n_genes) - 1`` when larger.

    Writes (each slide)
    -------------------
    ``obsm["X_pca"]`` (float64, n × n_comps), ``varm["PCs"]`` (float64, genes × n_comps, zero rows
    for genes not used), ``var["pca_gene"]`` (bool) and ``uns["pca"]`` = the fitted state
    (``genes``, ``mean``, ``components``, ``variance``, ``variance_ratio``, ``target_sum``,
    ``n_comps``, ``n_slides``, ``n_spots``, ``seed``).

    Returns
    -------
    The state (a dict, see ``PcaState``), to be passed to :func:`pca_project` for new slides.
    """
    adatas = [adata] if isinstance(adata, AnnData) else list(adata)
    if not adatas:
        raise ConfigError("adata", "pca needs at least one AnnData")
    if n_comps is None or int(n_comps) < 1:
        raise ConfigError("n_comps", f"must be a positive integer, got {n_comps!r}")
    for a in adatas:
        if "log1p" not in a.layers:
            normalize_log(a)
        if use_hvg and "highly_variable" not in a.var:
            _hvg(a)
    target_sums = {float(a.uns.get("senca", {}).get("normalize", {}).get("target_sum", 1e4))
                   for a in adatas}
    if len(target_sums) > 1:
        raise ConfigError("target_sum", f"slides were normalised to different totals {sorted(target_sums)}")
    target_sum = target_sums.pop()

    genes = pca_genes(adatas, use_hvg)
    blocks = []
    for a in adatas:
        idx = a.var_names.get_indexer(genes)
        blocks.append(sp.csr_matrix(a.layers["log1p"])[:, idx])
    pooled = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    n_spots, n_genes = pooled.shape
    max_comps = max(1, min(n_spots, n_genes) - 1)
    if n_spots < 3:
        raise SlideError(f"PCA needs at least 3 spots, got {n_spots}",
                         slide=slide_name(adatas[0]), field="obs")
    k = int(min(int(n_comps), max_comps))
    if k < int(n_comps):
        warnings.warn(f"n_comps reduced from {n_comps} to {k} ({n_spots} spots, {n_genes} genes)",
                      stacklevel=2)
    mean, comps, var, var_ratio = _fit_pca(pooled, k, seed)
    state: PcaState = {
        "genes": np.asarray(genes, dtype=str),
        "mean": mean,
        "components": comps,
        "variance": var,
        "variance_ratio": var_ratio,
        "target_sum": float(target_sum),
        "n_comps": int(k),
        "n_slides": int(len(adatas)),
        "n_spots": int(n_spots),
        "seed": int(seed),
    }
    for a, block in zip(adatas, blocks):
        _write(a, block, state)
    return state


def pca_project(adata: AnnData, state: PcaState | AnnData, *, max_missing: float = 0.5) -> None:
    """Project a (new) slide onto a fitted PCA basis (from :func:`pca`, or an AnnData carrying one).

    Uses ``layers["log1p"]`` (computed with the state's ``target_sum`` where absent). Genes of the
    basis that the slide lacks are filled with the basis mean, i.e. contribute nothing; more than
    ``max_missing`` of them missing is an error.

    Writes ``obsm["X_pca"]``, ``varm["PCs"]``, ``var["pca_gene"]``, ``uns["pca"]`` (the state, plus
    ``n_genes_missing``), as :func:`pca` does.
    """
    if isinstance(state, AnnData):
        state = state.uns.get("pca")
    if not isinstance(state, dict) or "components" not in state:
        raise ConfigError("state", "not a PCA state (expected the dict returned by senca_core.pp.pca)")
    genes = np.asarray(state["genes"], dtype=str)
    slide = slide_name(adata)
    idx = adata.var_names.get_indexer(genes)
    present = idx >= 0
    missing = int((~present).sum())
    if present.sum() == 0 or missing > max_missing * len(genes):
        raise SlideError(
            f"{missing} of the {len(genes)} genes of the PCA basis are missing from this slide "
            f"(allowed: {max_missing:.0%})", slide=slide, field="var_names")
    if "log1p" in adata.layers:
        log = sp.csr_matrix(adata.layers["log1p"])
    else:
        log = log_normalize(counts_matrix(adata), float(state["target_sum"]))
    mean = np.asarray(state["mean"], dtype=np.float64)
    comps = np.asarray(state["components"], dtype=np.float64)
    # absent genes are taken at the basis mean: they contribute nothing to the scores
    sub = log[:, idx[present]]
    X = _project(sub, mean[present], comps[:, present])
    st = dict(state)
    st["genes"] = genes
    _write(adata, None, st, X=X)
    adata.uns["pca"]["n_genes_missing"] = missing
    return None


# ----------------------------------------------------------------------------------------------

def pca_genes(adatas: AnnData | list[AnnData], use_hvg: bool = True) -> np.ndarray:
    """The genes :func:`pca` fits on: one slide's highly variable genes; for a list, the genes common to every
    slide, ranked by the number of slides where they are highly variable (then by median HVG rank), the first as
    many as the largest HVG set, returned in the common genes' order. Needs only ``var`` (``highly_variable``, ``highly_variable_rank``), so a driver can decide the
    cohort's panel from slides read without their matrices."""
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    if len(adatas) == 1:
        a = adatas[0]
        if use_hvg:
            hv = a.var["highly_variable"].to_numpy(dtype=bool)
            if not hv.any():
                raise SlideError("no highly variable gene marked", slide=slide_name(a),
                                 field="highly_variable")
            return np.asarray(a.var_names[hv], dtype=str)
        return np.asarray(a.var_names, dtype=str)
    common = common_genes(adatas)
    if not use_hvg:
        return np.asarray(common, dtype=str)
    n_hv = np.zeros(len(common))
    ranks = np.full((len(adatas), len(common)), np.inf)
    n_top = 0
    for i, a in enumerate(adatas):
        var = a.var.loc[common]
        hv = var["highly_variable"].to_numpy(dtype=bool)
        n_top = max(n_top, int(a.var["highly_variable"].sum()))
        n_hv += hv
        if "highly_variable_rank" in var:
            r = var["highly_variable_rank"].to_numpy(dtype=np.float64)
            ranks[i] = np.where(hv & np.isfinite(r), r, np.inf)
        else:
            ranks[i] = np.where(hv, 0.0, np.inf)
    med = np.median(ranks, axis=0)
    order = np.lexsort((med, -n_hv))  # most slides first, then best median rank
    order = order[n_hv[order] > 0][:n_top]
    if len(order) == 0:
        raise SlideError("no gene is highly variable on any slide among the common genes",
                         slide=",".join(str(slide_name(a, str(i))) for i, a in enumerate(adatas)),
                         field="highly_variable")
    return np.asarray(common[np.sort(order)], dtype=str)


def _fit_pca(X: sp.csr_matrix, k: int, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA in float64 of the rows of X (centred). Returns mean, components (k×G), var, ratio.

    Works on the smaller of the two covariance matrices (spots × spots when there are fewer spots
    than genes, else genes × genes); a dense eigendecomposition when that matrix is at most
    ``_DENSE_MAX`` wide, else ARPACK (``eigsh``, start vector drawn from ``seed``) for the top k.
    """
    n, g = X.shape
    X = sp.csr_matrix(X, dtype=np.float64)
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = np.asarray(X.multiply(X).sum(axis=0)).ravel()
    total = float((sq - n * mean**2).sum() / (n - 1))  # total variance (trace of covariance)
    if n < g:
        Xc = X.toarray() - mean[None, :]
        C = (Xc @ Xc.T) / (n - 1)
    else:
        C = (_gram(X) - n * np.outer(mean, mean)) / (n - 1)
    evals, evecs = _top_eigh(C, k, seed)
    if n < g:
        scale = np.sqrt(np.clip(evals, 1e-300, None) * (n - 1))
        comps = (Xc.T @ evecs / scale[None, :]).T
        comps[evals <= 1e-12 * max(total, 1e-300)] = 0.0
    else:
        comps = evecs.T.copy()
    # sign convention (as sklearn's svd_flip on V): largest |loading| positive
    pivot = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(k), pivot])
    signs[signs == 0] = 1.0
    comps *= signs[:, None]
    var = np.clip(evals, 0.0, None)
    ratio = var / total if total > 0 else np.zeros_like(var)
    return mean, comps, var, ratio


_DENSE_MAX = 1500
#: rows densified at a time for the genes x genes Gram matrix (2,048 x 2,000 genes: 33 MB)
_GRAM_ROWS = 2048


def _gram(X: sp.csr_matrix) -> np.ndarray:
    """X^T X (genes x genes) as a dense float64 array, summed over blocks of densified rows: a BLAS product per
    block instead of one sparse x sparse product, whose dense-ish output made it the slowest step of a Visium
    section's preprocessing (DLPFC 151673, 3,639 x 2,000 at 26 % density: 2.3 s -> 0.24 s). Memory stays at one
    block whatever the cohort's size."""
    g = X.shape[1]
    gram = np.zeros((g, g))
    for start in range(0, X.shape[0], _GRAM_ROWS):
        block = X[start:start + _GRAM_ROWS].toarray()
        gram += block.T @ block
    return gram


def _top_eigh(C: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric PSD matrix, by decreasing eigenvalue."""
    m = C.shape[0]
    if m <= _DENSE_MAX or k >= m - 1:
        evals, evecs = np.linalg.eigh(C)
    else:
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=m)
        evals, evecs = eigsh(C, k=k, which="LA", v0=v0)
    order = np.argsort(evals)[::-1][:k]
    return evals[order], evecs[:, order]


def _project(X: sp.csr_matrix, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    """(X - mean) @ comps.T without densifying X."""
    X = sp.csr_matrix(X).astype(np.float64)
    return np.asarray(X @ comps.T) - (mean @ comps.T)[None, :]


def _write(a: AnnData, block: sp.csr_matrix | None, state: PcaState, X: np.ndarray | None = None) -> None:
    if X is None:
        X = _project(block, state["mean"], state["components"])
    a.obsm["X_pca"] = np.ascontiguousarray(X, dtype=np.float64)
    idx = a.var_names.get_indexer(np.asarray(state["genes"], dtype=str))
    pcs = np.zeros((a.n_vars, state["components"].shape[0]), dtype=np.float64)
    ok = idx >= 0
    pcs[idx[ok]] = np.asarray(state["components"], dtype=np.float64).T[ok]
    a.varm["PCs"] = pcs
    used = np.zeros(a.n_vars, dtype=bool)
    used[idx[ok]] = True
    a.var["pca_gene"] = used
    a.uns["pca"] = {key: (np.array(v) if isinstance(v, np.ndarray) else v) for key, v in state.items()}
