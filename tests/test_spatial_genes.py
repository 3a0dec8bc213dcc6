"""Genes chosen by spatial autocorrelation (``pp.spatial_genes``, ``pp.select_genes``), the preprocessing default."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

import senca_core.pp as pp
from senca_core.datasets import synthetic_slide
from senca_core.errors import ConfigError
from senca_core.pp._spatial_genes import morans_i, neighbour_weights


def _square_grid(side: int = 20, seed: int = 0) -> AnnData:
    """Counts on a square grid: gene 0 high on the left half (a layout), gene 1 as variable but scattered (noise),
    gene 2 a left-to-right gradient, genes 3.. background; gene 4 never counted (constant)."""
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(side) for j in range(side)], dtype=float) * 100.0
    n = len(xy)
    left = xy[:, 0] < side * 50.0
    counts = rng.poisson(5.0, size=(n, 60)).astype(np.float32)
    counts[:, 0] = rng.poisson(np.where(left, 30.0, 3.0))
    counts[:, 1] = rng.poisson(np.where(rng.random(n) < 0.5, 30.0, 3.0))
    counts[:, 2] = rng.poisson(2.0 + 30.0 * xy[:, 0] / xy[:, 0].max())
    counts[:, 4] = 0.0
    a = AnnData(X=sp.csr_matrix(counts))
    a.var_names = [f"g{i}" for i in range(counts.shape[1])]
    a.obs_names = [f"s{i}" for i in range(n)]
    a.obsm["spatial"] = xy
    return a


def test_morans_i_matches_the_definition_on_dense_and_sparse_input():
    rng = np.random.default_rng(1)
    n = 60
    nb = np.column_stack([np.arange(n)] + [rng.permutation(n) for _ in range(4)])
    w = neighbour_weights(nb).toarray()
    x = rng.poisson(1.0, size=(n, 8)).astype(float)
    x[:, 3] = 2.0  # constant
    want = []
    for g in range(x.shape[1]):
        z = x[:, g] - x[:, g].mean()
        want.append(np.nan if (z ** 2).sum() == 0 else (z @ w @ z) / (z @ z) * n / w.sum())
    np.testing.assert_allclose(morans_i(x, sp.csr_matrix(w)), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(morans_i(sp.csr_matrix(x), sp.csr_matrix(w)), want, rtol=1e-10, atol=1e-12)
    assert np.isnan(morans_i(x, sp.csr_matrix(w))[3])


def test_spatial_genes_ranks_a_layout_above_noise_of_the_same_size():
    a = _square_grid()
    pp.normalize_log(a)
    pp.spatial_neighbors(a)
    pp.spatial_genes(a, n_top_genes=3)
    i = a.var["morans_i"]
    assert i["g0"] > 0.5 and i["g2"] > 0.5  # a half and a gradient: neighbours agree
    assert abs(i["g1"]) < 0.15  # as variable as g0, but scattered
    assert np.isnan(i["g4"])  # constant: never ranked
    assert set(a.var_names[a.var["highly_variable"]]) >= {"g0", "g2"}
    assert not a.var.loc["g1", "highly_variable"] and not a.var.loc["g4", "highly_variable"]
    assert a.var.loc[["g0", "g2"], "highly_variable_rank"].max() <= 1
    assert a.uns["hvg"] == {"flavor": "moran", "n_top_genes": 3}


def test_spatial_genes_keeps_every_varying_gene_when_asked_for_more_and_computes_what_it_needs():
    a = _square_grid()
    pp.spatial_genes(a, n_top_genes=1000)  # no log1p, no neighbours yet: computed with the defaults
    assert "log1p" in a.layers and "spatial_neighbors" in a.obsm
    assert int(a.var["highly_variable"].sum()) == a.n_vars - 1 == a.uns["hvg"]["n_top_genes"]  # g4 is constant
    with pytest.raises(ConfigError, match="n_top_genes"):
        pp.spatial_genes(a, n_top_genes=0)


def test_select_genes_choices_and_the_fallback_for_a_slide_without_positions():
    a = _square_grid()
    pp.select_genes(a, "variable", 5)
    assert a.uns["hvg"]["flavor"] == "seurat_v3" and int(a.var["highly_variable"].sum()) == 5
    b = _square_grid()
    del b.obsm["spatial"]
    pp.select_genes(b)  # spatial by default, but there are no spot positions
    assert b.uns["hvg"]["flavor"] == "seurat_v3"
    assert any("no spot positions" in w for w in b.uns["senca"]["warnings"])
    with pytest.raises(ConfigError, match="genes"):
        pp.select_genes(a, "nope")
    assert pp.GENE_CHOICES == {"spatial": 2000, "variable": 3000}


def test_preprocess_defaults_to_spatial_genes_on_one_slide_and_a_cohort():
    one = synthetic_slide(300, seed=0, with_image=False, slide_id="s0")
    state = pp.preprocess(one, n_comps=10)
    assert one.uns["hvg"]["flavor"] == "moran" and "morans_i" in one.var
    assert state["n_comps"] == 10 and one.obsm["X_pca"].shape == (one.n_obs, 10)
    cohort = [synthetic_slide(300, seed=s, with_image=False, slide_id=f"s{s}") for s in (1, 2)]
    state = pp.preprocess(cohort, n_top_genes=100, n_comps=10)
    assert len(state["genes"]) == 100  # the shared panel ranks the slides' spatial genes as it does HVGs
    assert all(a.uns["hvg"]["n_top_genes"] == 100 for a in cohort)
    variable = synthetic_slide(300, seed=0, with_image=False, slide_id="v")
    pp.preprocess(variable, genes="variable", n_comps=10)
    assert variable.uns["hvg"]["flavor"] == "seurat_v3"
