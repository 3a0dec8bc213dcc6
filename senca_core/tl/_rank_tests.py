"""Each group against the rest, gene by gene: scanpy's ``rank_genes_groups`` statistics (Wilcoxon rank-sum,
Welch's t-test) computed on the sparse log-expression itself, with scanpy's numbers and its ``uns`` layout.

Why not call scanpy: importing it costs every Ray worker ~1.6 s of CPU, and its Wilcoxon test ~0.4 s more on
first use (numba's compiled functions loaded from their cache), on top of a few seconds of work; the workers use
nothing else of it. Here the ranks of a sparse, non-negative matrix come from its non-zero entries alone: every
zero of a gene ties with every other zero at the average rank ``(z + 1) / 2`` (``z`` zeros), and a non-zero entry's
rank is ``z`` plus its average rank among the non-zero entries. Rank sums are sums of half-integers, so they are
exact in float64 whatever the order, and the z-scores, p-values and Benjamini-Hochberg adjusted p-values equal
scanpy's (``tie_correct=False``, ``corr_method="benjamini-hochberg"``, its defaults; test
``tests/test_rank_tests.py``). A matrix with negative entries is ranked densely, column block by column block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import special

#: at most this many matrix entries ranked at once when the matrix must be ranked densely (scanpy's chunk size)
_DENSE_BLOCK = 10_000_000


def _rank_sums(X: sp.csr_matrix, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, n_genes) sums of each gene's average ranks (1-based, over all rows) within each group."""
    n, n_genes = X.shape
    if X.nnz and X.data.min() < 0:
        return _dense_rank_sums(X, codes, n_groups)
    csc = X.tocsc()  # X has no explicit zeros (rank_groups)
    csc.sort_indices()
    nnz = np.diff(csc.indptr)
    col = np.repeat(np.arange(n_genes), nnz)
    if csc.data.dtype == np.float32:  # one integer key per entry: gene, then the value's bits (monotone for >= 0)
        order = np.argsort((col.astype(np.int64) << 32) | csc.data.view(np.uint32).astype(np.int64))
    else:
        order = np.lexsort((csc.data, col))  # by gene, then value
    value, gene = csc.data[order], col[order]
    pos = np.arange(len(order)) - csc.indptr[gene]  # 0-based place among the gene's non-zero entries
    starts = np.flatnonzero(np.r_[True, (gene[1:] != gene[:-1]) | (value[1:] != value[:-1])])
    ends = np.r_[starts[1:], len(order)] - 1
    tie = np.repeat(np.arange(len(starts)), ends - starts + 1)
    zeros = n - nnz  # zeros per gene
    rank = zeros[gene] + (pos[starts][tie] + pos[ends][tie]) / 2.0 + 1.0
    group_of_entry = codes[csc.indices[order]]
    cell = group_of_entry * n_genes + gene  # (group, gene) of each non-zero entry
    sums = np.bincount(cell, weights=rank, minlength=n_groups * n_genes)
    sums = sums.reshape(n_groups, n_genes)
    in_group = np.bincount(codes, minlength=n_groups)[:, None]
    nonzero_in_group = np.bincount(cell, minlength=n_groups * n_genes).reshape(n_groups, n_genes)
    return sums + (in_group - nonzero_in_group) * ((zeros + 1) / 2.0)[None, :]


def _dense_rank_sums(X: sp.csr_matrix, codes: np.ndarray, n_groups: int) -> np.ndarray:
    from scipy.stats import rankdata  # scipy.stats: 0.6 s of import, only for this rare case and the t-tests

    n, n_genes = X.shape
    out = np.zeros((n_groups, n_genes))
    step = max(_DENSE_BLOCK // max(n, 1), 1)
    for left in range(0, n_genes, step):
        ranks = rankdata(X[:, left:left + step].toarray(), axis=0)
        for g in range(n_groups):
            out[g, left:left + step] = ranks[codes == g].sum(axis=0)
    return out


def _mean_var(X: sp.csr_matrix, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of each column over the rows in ``mask``, as scanpy computes them: sums in
    float64, each square in the matrix's own precision."""
    sub = X[mask]
    n = sub.shape[0]
    total = np.bincount(sub.indices, weights=sub.data.astype(np.float64), minlength=sub.shape[1])
    squares = np.bincount(sub.indices, weights=(sub.data * sub.data).astype(np.float64), minlength=sub.shape[1])
    mean = total / n
    var = squares / n - mean ** 2
    if n != 1:
        var *= n / (n - 1)
    return mean, var


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels' ``fdr_bh``, same arithmetic)."""
    order = np.argsort(p)
    ranked = p[order]
    n = len(p)
    adjusted = np.minimum.accumulate((ranked / (np.arange(1, n + 1) / float(n)))[::-1])[::-1]
    adjusted[adjusted > 1] = 1
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def _top(scores: np.ndarray, n_top: int) -> np.ndarray:
    """Indices of the ``n_top`` highest scores, best first (scanpy's order, ties included)."""
    partition = np.argpartition(scores, -n_top)[-n_top:]
    return partition[np.argsort(scores[partition])[::-1]]


def rank_groups(X, labels: pd.Categorical, var_names: pd.Index, *, method: str = "wilcoxon",
                n_genes: int = 100) -> dict[str, np.recarray]:
    """Each category of ``labels`` (one per row of ``X``, log1p expression) against all other rows: scanpy's
    ``uns["rank_genes_groups"]`` fields (``names``, ``scores``, ``pvals``, ``pvals_adj``, ``logfoldchanges``; one
    recarray field per group, ``n_genes`` rows, best first). ``method``: ``"wilcoxon"``, ``"t-test"`` or
    ``"t-test_overestim_var"``."""
    X = sp.csr_matrix(X, copy=True)  # the caller's matrix untouched; a dense one is ranked as its sparse form
    X.eliminate_zeros()
    groups = [str(g) for g in labels.categories]
    codes = np.asarray(labels.codes, dtype=np.int64)
    n, total_genes = X.shape
    n_top = min(int(n_genes), total_genes)
    if method == "wilcoxon":
        sums = _rank_sums(X, codes, len(groups))
    else:
        from scipy.stats import ttest_ind_from_stats

    fields: dict[str, list] = {k: [] for k in ("names", "scores", "pvals", "pvals_adj", "logfoldchanges")}
    for g in range(len(groups)):
        inside = codes == g
        n_in = int(inside.sum())
        mean_in, var_in = _mean_var(X, inside)
        mean_out, var_out = _mean_var(X, ~inside)
        if method == "wilcoxon":
            std = np.sqrt(n_in * (n - n_in) * (n + 1) / 12.0)
            scores = (sums[g] - n_in * (n + 1) / 2.0) / std
            scores[np.isnan(scores)] = 0
            pvals = 2 * special.ndtr(-np.abs(scores))  # the normal's upper tail, as scipy.stats.norm.sf computes it
        else:
            n_rest = n - n_in if method == "t-test" else n_in
            with np.errstate(invalid="ignore"):
                scores, pvals = ttest_ind_from_stats(mean1=mean_in, std1=np.sqrt(var_in), nobs1=n_in,
                                                           mean2=mean_out, std2=np.sqrt(var_out), nobs2=n_rest,
                                                           equal_var=False)
            scores[np.isnan(scores)] = 0
            pvals[np.isnan(pvals)] = 1
        top = _top(scores, n_top)
        pvals_adj = _benjamini_hochberg(np.where(np.isnan(pvals), 1, pvals))
        fold = (np.expm1(mean_in) + 1e-9) / (np.expm1(mean_out) + 1e-9)
        fields["names"].append(np.asarray(var_names)[top])
        fields["scores"].append(scores[top])
        fields["pvals"].append(pvals[top])
        fields["pvals_adj"].append(pvals_adj[top])
        fields["logfoldchanges"].append(np.log2(fold[top]))
    dtypes = {"names": "O", "scores": "float32", "logfoldchanges": "float32", "pvals": "float64",
              "pvals_adj": "float64"}
    return {key: pd.DataFrame(dict(zip(groups, cols))).to_records(index=False, column_dtypes=dtypes[key])
            for key, cols in fields.items()}
