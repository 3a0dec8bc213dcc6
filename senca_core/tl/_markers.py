"""``marker_genes`` and ``tumour_like_regions``: what characterises each region."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError, SlideError
from ..pp._normalize import normalize_log
from ._rank_tests import rank_groups

#: Default tumour gene list: epithelial (EPCAM, keratins 8/18/19, CDH1), HER2 amplicon (ERBB2,
#: GRB7) and proliferation (MKI67, TOP2A, …) markers. A carcinoma region scores high on all three;
#: normal epithelium only on the first group, stroma / immune / fat on none.
DEFAULT_TUMOUR_GENES: tuple[str, ...] = (
    "EPCAM", "KRT8", "KRT18", "KRT19", "CDH1",
    "ERBB2", "GRB7",
    "MKI67", "TOP2A", "CCNB1", "BIRC5", "UBE2C", "CENPF",
)

#: Default reference (non-tumour) genes, subtracted from the tumour score: fibroblast / matrix
#: (COL1A1, COL1A2, COL3A1, DCN, LUM, FN1, SPARC), immune (PTPRC, CD74, IGKC), adipocyte
#: (ADIPOQ, PLIN1, FABP4, LPL, CFD) and myoepithelial (KRT5, KRT14, ACTA2, MYH11, TP63: present
#: around normal ducts, lost in invasive carcinoma). The contrast keeps tumour-contaminated
#: stroma of HER2+ sections (ERBB2 high everywhere) from looking tumour-like.
DEFAULT_NORMAL_GENES: tuple[str, ...] = (
    "COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FN1", "SPARC",
    "PTPRC", "CD74", "IGKC",
    "ADIPOQ", "PLIN1", "FABP4", "LPL", "CFD",
    "KRT5", "KRT14", "ACTA2", "MYH11", "TP63",
)


def _slide(adata: AnnData) -> str | None:
    s = adata.uns.get("senca", {})
    return str(s["slide_id"]) if isinstance(s, dict) and "slide_id" in s else None


def _groups(adata: AnnData, key: str) -> pd.Series:
    if key not in adata.obs:
        raise SlideError(f"no column {key!r} in obs", slide=_slide(adata), field=f"obs['{key}']")
    col = adata.obs[key]
    return col.astype("string")  # NA stays NA


def _log1p(adata: AnnData) -> sp.csr_matrix:
    if "log1p" not in adata.layers:
        normalize_log(adata)
    return sp.csr_matrix(adata.layers["log1p"])


def _scanpy_logreg(X, labels: pd.Categorical, var_names: pd.Index, n_rank: int) -> dict:
    import scanpy as sc

    tmp = AnnData(X=X, obs=pd.DataFrame({"g": labels}, index=[str(i) for i in range(X.shape[0])]),
                  var=pd.DataFrame(index=var_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "g", method="logreg", n_genes=n_rank, use_raw=False, key_added="rgg")
    return {k: v for k, v in tmp.uns["rgg"].items() if k != "params"}


def marker_genes(
    adata: AnnData,
    key: str = "region",
    n_genes: int = 10,
    *,
    method: str = "wilcoxon",
    min_spots: int = 3,
) -> pd.DataFrame:
    """Top marker genes of each group of ``obs[key]`` vs the rest: scanpy's ``rank_genes_groups`` statistics,
    computed by ``_rank_tests.rank_groups`` (the same numbers without importing scanpy; ``logreg`` is scanpy's own).

    Tested on ``layers["log1p"]`` (computed with :func:`senca_core.pp.normalize_log` when absent),
    ``method`` ``"wilcoxon"`` (default) or ``"t-test"``. Groups with fewer than ``min_spots``
    spots and NA spots are left out.

    Writes ``uns[f"rank_genes_{key}"]`` (scanpy's result) and, when computed,
    ``layers["log1p"]``.

    Returns
    -------
    DataFrame with one row per (group, rank): ``group``, ``rank`` (0 = best), ``gene``,
    ``score``, ``logfoldchange`` (log2), ``pval``, ``pval_adj`` (Benjamini-Hochberg),
    ``mean_in`` / ``mean_out`` (mean log1p expression in / outside the group).
    """
    if method not in ("wilcoxon", "t-test", "t-test_overestim_var", "logreg"):
        raise ConfigError("method", f"unknown method {method!r}")
    if n_genes < 1:
        raise ConfigError("n_genes", f"must be >= 1, got {n_genes}")
    groups = _groups(adata, key)
    sizes = groups.value_counts()
    keep = [str(g) for g, n in sizes.items() if n >= min_spots]
    if len(keep) < 2:
        raise SlideError(f"need at least two groups of >= {min_spots} spots in obs[{key!r}] "
                         f"to rank marker genes, got {dict(sizes)}", slide=_slide(adata),
                         field=f"obs['{key}']")
    log = _log1p(adata)
    mask = groups.isin(keep).fillna(False).to_numpy(dtype=bool)
    labels = pd.Categorical(groups[mask].astype(str), categories=keep)
    n_rank = int(min(n_genes, adata.n_vars))
    X = log[mask]
    if method == "logreg":  # the one test not computed here: scanpy's, imported only for it
        res = _scanpy_logreg(X, labels, adata.var_names, n_rank)
    else:
        res = rank_groups(X, labels, adata.var_names, method=method, n_genes=n_rank)
    rows = []
    gidx = {g: i for i, g in enumerate(adata.var_names)}
    lab = np.asarray(labels).astype(str)
    for grp in keep:
        inside = lab == grp
        names = res["names"][grp]
        cols = [gidx[n] for n in names]
        sub = X[:, cols]
        m_in = np.asarray(sub[inside].mean(axis=0)).ravel()
        m_out = np.asarray(sub[~inside].mean(axis=0)).ravel() if (~inside).any() else np.zeros(len(cols))
        for r, name in enumerate(names):
            rows.append({
                "group": grp, "rank": r, "gene": str(name),
                "score": float(res["scores"][grp][r]),
                "logfoldchange": float(res["logfoldchanges"][grp][r]) if "logfoldchanges" in res else np.nan,
                "pval": float(res["pvals"][grp][r]) if "pvals" in res else np.nan,
                "pval_adj": float(res["pvals_adj"][grp][r]) if "pvals_adj" in res else np.nan,
                "mean_in": float(m_in[r]), "mean_out": float(m_out[r]),
            })
    res_clean = dict(res)
    res_clean["params"] = {"groupby": key, "method": method, "reference": "rest",
                           "layer": "log1p", "n_genes": n_rank}
    adata.uns[f"rank_genes_{key}"] = res_clean
    return pd.DataFrame(rows, columns=["group", "rank", "gene", "score", "logfoldchange", "pval",
                                       "pval_adj", "mean_in", "mean_out"])


def _zmean(adata: AnnData, genes: Sequence[str]) -> np.ndarray | None:
    """Per spot: the mean over ``genes`` present (case-insensitive) of z-scored log1p expression."""
    upper = pd.Index([str(g).upper() for g in adata.var_names])
    idx = [int(i) for g in dict.fromkeys(str(x).upper() for x in genes)
           for i in np.flatnonzero(upper == g)[:1]]
    if not idx:
        return None
    log = _log1p(adata)[:, idx].toarray().astype(np.float64)
    sd = log.std(axis=0)
    ok = sd > 0
    if not ok.any():
        return None
    return ((log[:, ok] - log[:, ok].mean(axis=0)) / sd[ok]).mean(axis=1)


def tumour_scores(
    adata: AnnData,
    key: str = "region",
    tumour_genes: Sequence[str] = DEFAULT_TUMOUR_GENES,
    normal_genes: Sequence[str] | None = DEFAULT_NORMAL_GENES,
) -> pd.Series:
    """Per group of ``obs[key]`` (sorted, best first): the group mean of the spot score
    ``mean z(tumour_genes) - mean z(normal_genes)``, z = log1p expression standardised over all
    spots of the slide, genes matched case-insensitively, absent genes skipped. Without
    ``normal_genes`` (None, or none present) only the tumour part is used. Computes
    ``layers["log1p"]`` when absent."""
    groups = _groups(adata, key)
    t = _zmean(adata, tumour_genes)
    if t is None:
        raise SlideError(f"none of the tumour genes {list(tumour_genes)[:8]}… varies on this slide; "
                         "pass tumour_regions or tumour_genes", slide=_slide(adata),
                         field="var_names")
    n = _zmean(adata, normal_genes) if normal_genes else None
    score = pd.Series(t - n if n is not None else t, index=adata.obs_names)
    valid = groups.notna().to_numpy()
    return score[valid].groupby(groups[valid].astype(str).to_numpy()).mean().sort_values(ascending=False)


def tumour_like_regions(
    adata: AnnData,
    key: str = "region",
    *,
    tumour_genes: Sequence[str] = DEFAULT_TUMOUR_GENES,
    normal_genes: Sequence[str] | None = DEFAULT_NORMAL_GENES,
    threshold: float = 0.5,
) -> list[str]:
    """Which groups of ``obs[key]`` are tumour-like, without labels. The documented rule:

    1. score each group with :func:`tumour_scores`: mean z-scored log1p expression of
       ``tumour_genes`` (default ``DEFAULT_TUMOUR_GENES``: epithelial + HER2 amplicon +
       proliferation) minus that of ``normal_genes`` (default ``DEFAULT_NORMAL_GENES``: stroma,
       immune, adipocyte, myoepithelial), z over the slide's spots;
    2. tumour-like = groups whose score is above the slide average (> 0, the z-scores' zero) and
       at least ``threshold`` × the best group's score (default 0.5: at least half as tumour-like,
       relative to the slide average, as the most tumour-like group).

    The best-scoring group is always returned (the rule is meant for tumour sections). No
    per-slide constant is involved. On the HER2ST labels it names ``invasive cancer`` +
    ``cancer in situ`` (A1) and ``invasive cancer`` (B1, C1); on synthetic slides
    ``tumour_A`` + ``tumour_B``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError("threshold", f"must be in [0, 1], got {threshold}")
    s = tumour_scores(adata, key, tumour_genes, normal_genes)
    if len(s) == 1:
        return [str(s.index[0])]
    best = float(s.iloc[0])
    chosen = [str(g) for g in s.index if s[g] > 0 and s[g] >= threshold * best]
    return chosen or [str(s.index[0])]


def resolve_tumour_regions(
    adata: AnnData,
    key: str,
    tumour_regions: Sequence[str] | None,
    tumour_genes: Sequence[str] = DEFAULT_TUMOUR_GENES,
    threshold: float = 0.5,
    normal_genes: Sequence[str] | None = DEFAULT_NORMAL_GENES,
) -> tuple[list[str], str]:
    """The tumour regions given by the caller (checked), else :func:`tumour_like_regions`.
    Returns (regions, how) with how = "given" or "tumour_genes"."""
    groups = _groups(adata, key)
    present = set(groups.dropna().astype(str))
    if tumour_regions is not None:
        regs = [str(r) for r in ([tumour_regions] if isinstance(tumour_regions, str) else tumour_regions)]
        missing = [r for r in regs if r not in present]
        if missing:
            raise SlideError(f"tumour regions {missing} not found in obs[{key!r}] "
                             f"(present: {sorted(present)})", slide=_slide(adata),
                             field=f"obs['{key}']")
        return regs, "given"
    return (tumour_like_regions(adata, key, tumour_genes=tumour_genes, normal_genes=normal_genes,
                                threshold=threshold), "tumour_genes")
