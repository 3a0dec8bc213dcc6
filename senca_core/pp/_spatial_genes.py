"""``spatial_genes``: the genes whose expression is most alike between neighbouring spots (Moran's I)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError, SlideError
from ._neighbors import spatial_neighbors
from ._normalize import normalize_log
from ._utils import slide_name


class NoVaryingGene(SlideError):
    """No gene's log-expression varies across the slide's spots: nothing to rank."""


def neighbour_weights(neighbors: np.ndarray) -> sp.csr_matrix:
    """Row-normalised spot × spot weights of ``obsm["spatial_neighbors"]`` (column 0, the spot itself, left out)."""
    neighbors = np.asarray(neighbors)
    n = neighbors.shape[0]
    rows = np.repeat(np.arange(n), neighbors.shape[1] - 1)
    cols = neighbors[:, 1:].ravel()
    w = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    w.sum_duplicates()
    deg = np.asarray(w.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(deg, 1.0)) @ w


def morans_i(values, weights: sp.csr_matrix) -> np.ndarray:
    """Moran's I of every column of ``values`` (n × G, dense or sparse) under row-normalised ``weights``.

    ``I = zᵀ W z / zᵀ z`` with ``z`` the centred column (with rows summing to 1, ``n / ΣW = 1``). Computed
    without centring the matrix: ``zᵀ W z = xᵀ W x − m cᵀ x`` (``m`` the column mean, ``c = Wᵀ 1``),
    so a sparse matrix stays sparse. A constant column gets ``nan``."""
    x = sp.csr_matrix(values, dtype=np.float64)
    n = x.shape[0]
    mean = np.asarray(x.mean(axis=0)).ravel()
    col_w = np.asarray(weights.sum(axis=0)).ravel()
    num = np.asarray(x.multiply(weights @ x).sum(axis=0)).ravel() - mean * (col_w @ x)
    den = np.asarray(x.multiply(x).sum(axis=0)).ravel() - n * mean ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den > 1e-12 * np.maximum(1.0, n * mean ** 2), out, np.nan)


def spatial_genes(adata: AnnData, n_top_genes: int = 2000) -> None:
    """Mark the ``n_top_genes`` genes whose log-expression is most spatially autocorrelated.

    The genes are ranked by Moran's I of ``layers["log1p"]`` over each spot's grid neighbours
    (``obsm["spatial_neighbors"]``; both are computed with the defaults where absent). No label is used. Where a
    gene's level follows the tissue's layout (a layer, a tumour nest, a duct) neighbours agree and I is high;
    where it varies from spot to spot (noise, scattered single cells) I is near 0. Measured on the labelled
    sections (docs/BENCHMARKS.md, "Genes chosen by spatial autocorrelation"): with the model's readout at
    ``readout_expr_weight`` 0.5 it is the default of :func:`preprocess` (``genes="spatial"``);
    ``genes="variable"`` (:func:`hvg`, seurat_v3) is the scanpy choice.

    Constant genes are never selected; a slide with fewer varying genes keeps all of them.

    Writes
    ------
    ``var["morans_i"]`` (float, nan for constant genes), ``var["highly_variable"]`` (bool: the selected genes,
    under scanpy's column name so that :func:`pca` and a cohort's shared panel read one column),
    ``var["highly_variable_rank"]`` (float, 0 = most autocorrelated, NaN for the others) and
    ``uns["hvg"] = {"flavor": "moran", "n_top_genes"}`` (the number actually selected).
    """
    if n_top_genes is None or isinstance(n_top_genes, bool) or int(n_top_genes) < 1:
        raise ConfigError("n_top_genes", f"must be a positive integer, got {n_top_genes!r}")
    slide = slide_name(adata)
    if "log1p" not in adata.layers:
        normalize_log(adata)
    if "spatial_neighbors" not in adata.obsm:
        spatial_neighbors(adata)
    score = morans_i(adata.layers["log1p"], neighbour_weights(adata.obsm["spatial_neighbors"]))
    varying = np.isfinite(score)
    if not varying.any():
        raise NoVaryingGene("no gene varies across spots: cannot rank genes by spatial autocorrelation",
                            slide=slide, field="X")
    n = int(min(int(n_top_genes), int(varying.sum())))
    order = np.argsort(-np.where(varying, score, -np.inf), kind="stable")[:n]
    rank = np.full(adata.n_vars, np.nan)
    rank[order] = np.arange(n, dtype=np.float64)
    adata.var["morans_i"] = score
    adata.var["highly_variable"] = np.isfinite(rank)
    adata.var["highly_variable_rank"] = rank
    adata.uns["hvg"] = {"flavor": "moran", "n_top_genes": n}
