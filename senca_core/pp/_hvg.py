"""``hvg``: highly variable genes on the raw counts (scanpy ``seurat_v3``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import ConfigError, SlideError
from ..io._validate import add_warning
from ._normalize import log_normalize
from ._utils import counts_matrix, senca_uns, slide_name

#: below this many varying genes the seurat_v3 loess fit is not attempted
_MIN_LOESS_GENES = 50
#: below this many distinct spots (count profiles) the seurat_v3 loess fit is not attempted
_MIN_DISTINCT_SPOTS = 3


def _n_distinct_spots(counts, cap: int = _MIN_DISTINCT_SPOTS) -> int:
    """How many distinct count profiles (rows) there are, counted up to ``cap``.

    Two random projections in float64: identical rows give bit-identical values (same entries, same
    order of summation), distinct rows coincide only by chance.
    """
    rng = np.random.default_rng(0)
    proj = counts.astype(np.float64) @ rng.random((counts.shape[1], 2))
    return int(min(len(np.unique(np.asarray(proj), axis=0)), cap))


def _varying_genes(counts) -> np.ndarray:
    """Genes whose counts are not the same in every spot (exact: max > min, no float round-off)."""
    hi = np.asarray(counts.max(axis=0).todense()).ravel()
    lo = np.asarray(counts.min(axis=0).todense()).ravel()
    return hi > lo


def _variance(m) -> np.ndarray:
    mean = np.asarray(m.mean(axis=0)).ravel()
    sq = np.asarray(m.multiply(m).mean(axis=0)).ravel()
    return sq - mean**2


def _log_dispersion(counts) -> np.ndarray:
    """var / mean of log1p(counts normalised to 1e4) per gene (NaN where the mean is 0)."""
    log = log_normalize(counts, 1e4).astype(np.float64)
    mean = np.asarray(log.mean(axis=0)).ravel()
    var = _variance(log)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, var / mean, np.nan)


def _expand(df: pd.DataFrame, names, varying: np.ndarray, counts) -> pd.DataFrame:
    """scanpy's result on the varying genes, widened to all genes (constant ones never selected)."""
    full = pd.DataFrame(index=pd.Index(names))
    mean = np.asarray(counts.mean(axis=0), dtype=np.float64).ravel()
    for col in df.columns:
        vals = df[col].to_numpy()
        if vals.dtype == bool:
            out = np.zeros(len(names), dtype=bool)
        elif np.issubdtype(vals.dtype, np.number):
            out = np.full(len(names), np.nan)
        else:  # e.g. scanpy's gene_name column: not written to var
            continue
        out[varying] = vals
        full[col] = out
    if "means" in full:
        full["means"] = mean
    if "variances" in full:
        full.loc[~varying, "variances"] = 0.0
    return full


def hvg(adata: AnnData, n_top_genes: int = 3000, *, flavor: str = "seurat_v3") -> None:
    """Mark the ``n_top_genes`` most variable genes, computed on the raw counts.

    ``flavor="seurat_v3"`` (default, needs scikit-misc) ranks genes by the variance of the counts
    standardised by a loess fit of variance on mean. When the slide has fewer expressed genes than
    ``n_top_genes``, all of them are kept (no error). If the loess fit cannot be done (fewer than
    3 distinct spots or 50 varying genes, checked exactly before the fit because scikit-misc's loess
    crashes the process on such input; scikit-misc missing; a degenerate fit), genes are ranked
    instead by the dispersion (var / mean) of log1p-normalised expression, ``uns["hvg"]["flavor"] ==
    "dispersion"`` and ``uns["hvg"]["fallback"]`` says why; the degenerate-input case also adds a
    line to ``uns["senca"]["warnings"]``. Genes with the same count in every spot never enter the
    loess fit (their float round-off "variance" is noise) and are never selected. ``flavor="seurat"`` or
    ``"cell_ranger"`` can be asked for directly (on a temporary log-normalised copy, as scanpy
    expects); they select exactly ``n_top_genes`` by normalised dispersion.

    Writes
    ------
    ``var["highly_variable"]`` (bool), ``var["highly_variable_rank"]`` (float, 0 = most variable,
    NaN for the others), ``var["means"]``, ``var["variances"]``, ``var["variances_norm"]`` /
    ``var["dispersions_norm"]`` (as scanpy writes them), and ``uns["hvg"]`` = ``{"flavor",
    "n_top_genes"}`` (the number actually selected), plus ``"fallback"`` (str) when one was used.
    X is not modified.
    """
    import scanpy as sc  # here, not at import: a worker preprocessing with spatial genes never loads it (1.6 s)

    if n_top_genes is None or int(n_top_genes) < 1:
        raise ConfigError("n_top_genes", f"must be a positive integer, got {n_top_genes!r}")
    if flavor not in ("seurat_v3", "seurat", "cell_ranger"):
        raise ConfigError("flavor", f"unknown HVG flavor {flavor!r} (seurat_v3, seurat, cell_ranger)")
    slide = slide_name(adata)
    counts = counts_matrix(adata)
    expressed = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    n_expr = int(expressed.sum())
    if n_expr == 0:
        raise SlideError("no gene has any count: cannot select variable genes", slide=slide, field="X")
    n = int(min(int(n_top_genes), n_expr))

    tmp = AnnData(X=counts.astype(np.float32), obs=pd.DataFrame(index=adata.obs_names),
                  var=pd.DataFrame(index=adata.var_names))
    fallback = None
    df = None
    used = flavor
    if flavor == "seurat_v3":
        # skmisc's loess crashes the process (SIGSEGV) on degenerate input: genes that are constant
        # but get a float round-off variance (identical spots), too few points. Checked exactly first.
        varying = _varying_genes(counts)
        n_var = int(varying.sum())
        n_spots = _n_distinct_spots(counts)
        if n_spots < _MIN_DISTINCT_SPOTS or n_var < _MIN_LOESS_GENES:
            why = (f"only {n_spots} distinct spot(s)" if n_spots < _MIN_DISTINCT_SPOTS
                   else f"only {n_var} gene(s) vary across spots")
            fallback = (f"seurat_v3 needs >= {_MIN_DISTINCT_SPOTS} distinct spots and >= "
                        f"{_MIN_LOESS_GENES} varying genes, the slide has {why}; "
                        "ranked by dispersion of log1p instead")
            add_warning(adata, f"hvg: {why} (identical or near-empty spots?): highly variable genes "
                               "ranked by dispersion instead of seurat_v3")
        else:
            try:
                # constant genes (exactly) never reach loess: their float round-off variance is noise
                # (all-zero genes are left in: scanpy drops them itself, and the result stays as it was)
                fit = tmp if not bool((expressed & ~varying).any()) else tmp[:, varying].copy()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = sc.pp.highly_variable_genes(fit, n_top_genes=min(n, n_var), flavor="seurat_v3",
                                                      inplace=False, check_values=False)
                df = res if fit is tmp else _expand(res, adata.var_names, varying, counts)
            except (ImportError, ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
                fallback = (f"seurat_v3 failed ({type(exc).__name__}: {exc}); "
                            "ranked by dispersion of log1p instead")
        if df is None:
            used = "dispersion"
    else:
        sc.pp.normalize_total(tmp, target_sum=1e4)
        tmp.X.data = np.log1p(tmp.X.data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor=flavor, inplace=False)
        except (ValueError, ZeroDivisionError, IndexError) as exc:
            fallback = f"{flavor} failed ({type(exc).__name__}: {exc}); ranked by dispersion of log1p"
            used = "dispersion"
    if df is not None and "highly_variable_rank" in df:
        rank = df["highly_variable_rank"].to_numpy(dtype=np.float64)
        hv = df["highly_variable"].to_numpy(dtype=bool)
    else:  # seurat / cell_ranger / fallback: exactly n genes by normalised dispersion
        if df is not None:
            disp = df["dispersions_norm"].to_numpy(dtype=np.float64)
        else:
            disp = _log_dispersion(counts)
            df = pd.DataFrame({"dispersions": disp}, index=adata.var_names)
        disp = np.where(expressed, np.nan_to_num(disp, nan=-np.inf), -np.inf)
        order = np.argsort(-disp, kind="stable")[:n]
        rank = np.full(adata.n_vars, np.nan)
        rank[order] = np.arange(n, dtype=np.float64)
        hv = np.isfinite(rank)
    df.index = adata.var_names
    adata.var["highly_variable"] = hv
    adata.var["highly_variable_rank"] = rank
    for col in ("means", "variances", "variances_norm", "dispersions", "dispersions_norm"):
        if col in df:
            adata.var[col] = df[col].to_numpy(dtype=np.float64)
    info = {"flavor": str(used), "n_top_genes": int(hv.sum())}
    if fallback:
        info["fallback"] = fallback
    adata.uns["hvg"] = info
    senca_uns(adata)  # make sure the contract dict exists
    return None
