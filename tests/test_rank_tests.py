"""``tl.marker_genes``'s statistics (``senca_core.tl._rank_tests``): scanpy's ``rank_genes_groups`` numbers, computed
without scanpy, so that a worker running the default stages never imports it (``tests/test_ray_data_maps.py``)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from senca_core.tl._rank_tests import rank_groups


def _scanpy(X, labels, names, method, n_genes):
    import scanpy as sc

    tmp = ad.AnnData(X=X, obs=pd.DataFrame({"g": labels}, index=[str(i) for i in range(X.shape[0])]),
                     var=pd.DataFrame(index=names))
    tmp.uns["log1p"] = {"base": np.e}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "g", method=method, n_genes=n_genes, use_raw=False, key_added="r")
    return tmp.uns["r"]


def _slide(seed=0, n=240, genes=180, shift=0.0):
    """Sparse log1p-like counts with many ties (small integer counts) and five groups, a few genes marking each."""
    rng = np.random.default_rng(seed)
    labels = pd.Categorical(rng.integers(0, 5, n).astype(str))
    lam = np.full((n, genes), 0.3)
    for g in range(5):
        lam[np.asarray(labels.codes) == g, g * 7:(g + 1) * 7] = 2.0  # each group's markers
    X = sp.csr_matrix(np.log1p(rng.poisson(lam)).astype(np.float32))
    if shift:
        X.data = X.data - np.float32(shift)  # negative entries: ranked densely
    return X, labels, pd.Index([f"g{i}" for i in range(genes)])


@pytest.mark.parametrize("method", ["wilcoxon", "t-test", "t-test_overestim_var"])
@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_scanpys_numbers_and_order(method, shift):
    X, labels, names = _slide(shift=shift)
    ours, theirs = rank_groups(X, labels, names, method=method, n_genes=25), _scanpy(X, labels, names, method, 25)
    for g in labels.categories:
        assert list(ours["names"][g]) == list(theirs["names"][g])
        if method == "wilcoxon":  # rank sums are exact: the same z-scores and p-values to the last bit
            assert np.array_equal(ours["scores"][g], theirs["scores"][g])
            assert np.array_equal(ours["pvals"][g], theirs["pvals"][g])
        np.testing.assert_allclose(ours["scores"][g], theirs["scores"][g], rtol=1e-6)
        np.testing.assert_allclose(ours["pvals"][g], theirs["pvals"][g], rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(ours["pvals_adj"][g], theirs["pvals_adj"][g], rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(ours["logfoldchanges"][g], theirs["logfoldchanges"][g], rtol=1e-6, atol=1e-6)
    for key in ("names", "scores", "pvals", "pvals_adj", "logfoldchanges"):
        assert ours[key].dtype == theirs[key].dtype
    # the markers it finds are the planted ones
    assert all(int(ours["names"][g][0][1:]) // 7 == int(g) for g in labels.categories)


def test_marker_genes_uses_them_and_logreg_is_scanpys():
    import senca_core as sc

    X, labels, names = _slide()
    obs = pd.DataFrame({"region": labels.astype(str)}, index=[f"s{i}" for i in range(X.shape[0])])
    a = ad.AnnData(X=X.copy(), obs=obs, var=pd.DataFrame(index=names))
    a.layers["log1p"] = X.copy()
    table = sc.tl.marker_genes(a, "region", n_genes=5)
    ref = _scanpy(X, pd.Categorical(labels.astype(str), categories=list(a.obs["region"].value_counts().index)),
                  names, "wilcoxon", 5)
    for g, rows in table.groupby("group"):
        assert list(rows.sort_values("rank")["gene"]) == list(ref["names"][g])
    assert set(a.uns["rank_genes_region"]) >= {"names", "scores", "pvals", "pvals_adj", "logfoldchanges", "params"}
    logreg = sc.tl.marker_genes(a, "region", n_genes=3, method="logreg")
    assert len(logreg) == 15 and logreg["pval"].isna().all()
