"""senca_core.pp: qc, hvg, normalize_log, pca (single + cohort basis), spatial_neighbors, chain.

The real-data test reproduces the scanpy baseline of peers.md on HER2ST A1/B1/C1."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import senca_core.pp as pp
from senca_core.datasets import synthetic_slide
from senca_core.errors import ConfigError, SlideError

warnings.filterwarnings("ignore", category=UserWarning)


# ------------------------------------------------------------------------------------------------
def load_her2st(root, section):
    """HER2ST section as AnnData (raw counts in X, label / label_scored, spatial): the io reader
    when it exists, else a direct pandas read of the published files."""
    try:
        from senca_core.io import read_her2st  # written in parallel by the io owner
    except ImportError:
        read_her2st = None
    if read_her2st is not None:
        a = read_her2st(root, section)
        if "label_scored" not in a.obs and "label" in a.obs:
            a.obs["label_scored"] = a.obs["label"].notna() & (a.obs["label"].astype(str) != "undetermined")
        return a
    counts = pd.read_csv(root / "counts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    sel = pd.read_csv(root / "spots" / f"{section}_selection.tsv", sep="\t")
    sel.index = [f"{x}x{y}" for x, y in zip(sel.x, sel.y)]
    lab = pd.read_csv(root / "labels" / f"{section}_labeled_coordinates.tsv", sep="\t")
    lab.index = [f"{round(x)}x{round(y)}" for x, y in zip(lab.x, lab.y)]
    counts = counts.loc[counts.index.isin(sel.index)]
    a = ad.AnnData(sp.csr_matrix(counts.to_numpy(np.float32)), obs=pd.DataFrame(index=counts.index),
                   var=pd.DataFrame(index=counts.columns))
    a.var_names_make_unique()
    label = lab["label"].reindex(a.obs_names)
    a.obs["label"] = pd.Categorical(label)
    a.obs["label_scored"] = (label.notna() & (label != "undetermined")).to_numpy()
    a.obsm["spatial"] = sel.loc[a.obs_names, ["pixel_x", "pixel_y"]].to_numpy(np.float64)
    a.uns["senca"] = {"slide_id": section, "patient_id": section[0], "platform": "legacy_st",
                      "grid": "square"}
    return a


@pytest.fixture(scope="module")
def slide():
    return synthetic_slide(900, seed=5, with_image=False, slide_id="syn5")


def _tiny(n_spots=40, n_genes=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, size=(n_spots, n_genes)).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    a.uns["senca"] = {"slide_id": "tiny"}
    return a


# ---- qc -----------------------------------------------------------------------------------------
def test_qc_drops_only_empty_spots_and_rare_genes_and_records_it():
    a = _tiny()
    X = a.X.toarray()
    X[3] = 0                      # an empty spot
    X[:, 5] = 0
    X[[0, 1], 5] = 4              # a gene seen in 2 spots (< min_cells=3)
    X[7] = 0
    X[7, 0] = 1                   # a 1-UMI spot: kept by the defaults
    a.X = sp.csr_matrix(X)
    a.obsm["spatial_neighbors"] = np.zeros((a.n_obs, 3), np.int64)
    pp.qc(a)
    rec = a.uns["senca"]["qc"]
    assert "s3" not in a.obs_names and "s7" in a.obs_names
    assert "g5" not in a.var_names
    assert rec["n_spots_dropped"] == 1 and rec["n_genes_dropped"] == 1
    assert list(rec["dropped_spots"]) == ["s3"]
    assert rec["n_spots_after"] == a.n_obs == 39
    assert "spatial_neighbors" not in a.obsm  # stale indices removed
    np.testing.assert_allclose(a.obs["total_counts"], np.asarray(a.X.sum(axis=1)).ravel())


def test_qc_everything_dropped_names_the_slide():
    a = _tiny()
    with pytest.raises(SlideError) as e:
        pp.qc(a, min_counts=10**9)
    assert e.value.slide == "tiny" and e.value.field == "min_counts"
    assert "tiny" in str(e.value)
    with pytest.raises(SlideError, match="every gene"):
        pp.qc(_tiny(), min_cells=10**6)


# ---- hvg / normalize ---------------------------------------------------------------------------
def test_hvg_on_counts_falls_back_to_all_genes_and_finds_the_markers(slide):
    a = slide.copy()
    x_before = a.X.copy()
    pp.hvg(a, n_top_genes=3000)  # more than the 500 genes of the panel
    expressed = int((np.asarray((a.X > 0).sum(axis=0)).ravel() > 0).sum())
    assert a.uns["hvg"]["flavor"] == "seurat_v3"
    assert a.uns["hvg"]["n_top_genes"] == expressed == int(a.var["highly_variable"].sum())
    assert (a.X != x_before).nnz == 0  # counts untouched
    b = slide.copy()
    pp.hvg(b, n_top_genes=60)
    design = b.uns["senca"]["design"]["markers"]
    markers = {g for prog in ("clone_A", "clone_B", "stroma", "immune") for g in design[prog]}
    top = set(b.var_names[b.var["highly_variable"]])
    assert len(top) == 60
    assert len(top & markers) >= 25  # region markers dominate the most variable genes
    assert np.nanmax(b.var["highly_variable_rank"]) == 59


def test_hvg_falls_back_on_tiny_panels_without_crashing():
    a = _tiny(n_spots=20, n_genes=3)  # skmisc's loess segfaults on 3 points: must not be tried
    pp.hvg(a, n_top_genes=2)
    assert a.uns["hvg"]["flavor"] == "dispersion" and "fallback" in a.uns["hvg"]
    assert int(a.var["highly_variable"].sum()) == 2
    b = _tiny(n_spots=40, n_genes=30)
    X = b.X.toarray()
    X[:, 0] = np.arange(40) % 2 * 30  # one very dispersed gene
    b.X = sp.csr_matrix(X)
    pp.hvg(b, n_top_genes=5, flavor="seurat")
    assert b.uns["hvg"]["flavor"] == "seurat" and int(b.var["highly_variable"].sum()) == 5
    assert b.var["highly_variable"]["g0"]


def test_hvg_bad_parameters():
    with pytest.raises(ConfigError):
        pp.hvg(_tiny(), n_top_genes=0)
    with pytest.raises(ConfigError):
        pp.hvg(_tiny(), flavor="nope")


def test_normalize_log_keeps_counts_in_x(slide):
    a = slide.copy()
    X = a.X.toarray()
    X[0] = 0
    a.X = sp.csr_matrix(X)
    del a.layers["counts"]
    pp.normalize_log(a, target_sum=1e4)
    assert np.array_equal(a.X.toarray(), X)  # X stays raw counts
    assert np.array_equal(a.layers["counts"].toarray(), X)
    back = np.expm1(a.layers["log1p"].toarray().astype(np.float64))
    sums = back.sum(axis=1)
    assert sums[0] == 0
    np.testing.assert_allclose(sums[1:], 1e4, rtol=1e-4)
    np.testing.assert_allclose(back[5] / 1e4, X[5] / X[5].sum(), rtol=1e-4, atol=1e-7)
    assert a.uns["senca"]["normalize"]["target_sum"] == 1e4
    with pytest.raises(ConfigError):
        pp.normalize_log(a, target_sum=-1)


# ---- pca ------------------------------------------------------------------------------------------
def test_pca_matches_sklearn_and_separates_regions(slide):
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    a = slide.copy()
    pp.hvg(a, n_top_genes=200)
    pp.normalize_log(a)
    state = pp.pca(a, n_comps=10)
    X = a.layers["log1p"][:, a.var["highly_variable"].to_numpy()].toarray().astype(np.float64)
    ref = PCA(10, svd_solver="full").fit(X)
    ours = a.obsm["X_pca"]
    assert ours.shape == (a.n_obs, 10) and ours.dtype == np.float64
    for k in range(10):  # same components up to sign
        c = np.corrcoef(ours[:, k], ref.transform(X)[:, k])[0, 1]
        assert abs(c) > 0.999
    np.testing.assert_allclose(state["variance_ratio"], ref.explained_variance_ratio_, rtol=1e-6)
    assert a.varm["PCs"].shape == (a.n_vars, 10)
    assert int(a.var["pca_gene"].sum()) == 200
    # expression separates every region except the expression-alike stroma/adipose pair
    merged = a.obs["true_region"].astype(str).replace({"adipose": "stroma"})
    g = GaussianMixture(5, covariance_type="full", random_state=0).fit_predict(ours)
    assert adjusted_rand_score(merged, g) > 0.7


def test_the_genes_gram_matrix_summed_over_row_blocks_is_the_sparse_product(monkeypatch):
    import scipy.sparse as sp

    from senca_core.pp import _pca

    X = sp.random(53, 11, density=0.3, format="csr", random_state=0, dtype=np.float64)
    monkeypatch.setattr(_pca, "_GRAM_ROWS", 7)  # eight blocks, the last one short
    np.testing.assert_allclose(_pca._gram(X), (X.T @ X).toarray(), rtol=1e-12, atol=1e-12)


def test_pca_cohort_shared_basis_and_projection(tmp_path):
    a = synthetic_slide(500, seed=1, with_image=False, slide_id="a")
    b = synthetic_slide(400, seed=2, with_image=False, slide_id="b", layout={"tumour": 0.2})
    c = synthetic_slide(300, seed=3, with_image=False, slide_id="c")
    for x in (a, b, c):
        pp.hvg(x, n_top_genes=150)
        pp.normalize_log(x)
    state = pp.pca([a, b], n_comps=8)
    assert state["n_slides"] == 2 and state["n_spots"] == 900
    np.testing.assert_array_equal(a.uns["pca"]["components"], b.uns["pca"]["components"])
    # the pooled fit is centred on the pooled spots
    pooled = np.vstack([a.obsm["X_pca"], b.obsm["X_pca"]])
    np.testing.assert_allclose(pooled.mean(axis=0), 0.0, atol=1e-8)
    # projecting a fitted slide gives back its scores; the state survives an h5ad round trip
    b2 = b.copy()
    del b2.obsm["X_pca"]
    pp.pca_project(b2, state)
    np.testing.assert_allclose(b2.obsm["X_pca"], b.obsm["X_pca"], atol=1e-8)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    a_back = ad.read_h5ad(path)
    pp.pca_project(c, a_back)
    assert c.obsm["X_pca"].shape == (c.n_obs, 8)
    # same regions land in the same place of the shared basis
    ca = pd.DataFrame(a.obsm["X_pca"][:, :3]).groupby(a.obs["true_region"].to_numpy()).mean()
    cc = pd.DataFrame(c.obsm["X_pca"][:, :3]).groupby(c.obs["true_region"].to_numpy()).mean()
    common = ca.index.intersection(cc.index)
    assert np.corrcoef(ca.loc[common].to_numpy().ravel(), cc.loc[common].to_numpy().ravel())[0, 1] > 0.95
    # a slide lacking some genes is projected (missing genes count as the mean) ...
    d = c[:, c.var_names[10:]].copy()
    pp.pca_project(d, state)
    assert np.isfinite(d.obsm["X_pca"]).all() and d.uns["pca"]["n_genes_missing"] >= 0
    # ... unless most are missing
    e = c[:, c.var_names[:20]].copy()
    e.uns["senca"] = {"slide_id": "e"}
    with pytest.raises(SlideError, match="missing"):
        pp.pca_project(e, state)
    with pytest.raises(ConfigError):
        pp.pca_project(c, {"nope": 1})


# ---- spatial neighbours ----------------------------------------------------------------------------
def _grid_adata(kind, rows=9, cols=9, pitch=10.0, grid_in_uns=True):
    r, c = np.mgrid[0:rows, 0:cols]
    r, c = r.ravel(), c.ravel()
    if kind == "hex":  # Visium: row r uses columns of parity r, x = c*pitch/2, y = r*pitch*sqrt(3)/2
        c = 2 * c + (r % 2)
        xy = np.stack([c * pitch / 2, r * pitch * np.sqrt(3) / 2], axis=1)
    else:
        xy = np.stack([c * pitch, r * pitch], axis=1)
    a = ad.AnnData(obs=pd.DataFrame({"array_row": r, "array_col": c},
                                    index=[f"{x}x{y}" for x, y in zip(c, r)]))
    a.obsm["spatial"] = xy + np.random.default_rng(0).normal(0, 0.3, xy.shape)  # slight jitter
    a.uns["senca"] = {"slide_id": kind, "grid": kind} if grid_in_uns else {"slide_id": kind}
    return a


@pytest.mark.parametrize("kind,expected_k", [("hex", 6), ("square", 8)])
@pytest.mark.parametrize("grid_in_uns", [True, False])
def test_spatial_neighbors_are_the_adjacent_spots(kind, expected_k, grid_in_uns):
    a = _grid_adata(kind, grid_in_uns=grid_in_uns)
    pp.spatial_neighbors(a)
    nb = a.obsm["spatial_neighbors"]
    assert nb.dtype == np.int64 and nb.shape == (a.n_obs, expected_k + 1)
    assert (nb[:, 0] == np.arange(a.n_obs)).all()
    assert a.uns["spatial_neighbors"]["grid"] == kind
    r = a.obs["array_row"].to_numpy()
    c = a.obs["array_col"].to_numpy()
    if kind == "hex":
        offsets = {(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)}
        interior = (r > 0) & (r < r.max()) & (c > 1) & (c < c.max() - 1)
    else:
        offsets = {(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)} - {(0, 0)}
        interior = (r > 0) & (r < r.max()) & (c > 0) & (c < c.max())
    assert interior.sum() > 20
    for i in np.flatnonzero(interior):
        got = {(r[j] - r[i], c[j] - c[i]) for j in nb[i, 1:]}
        assert got == offsets, (i, got)


def test_spatial_neighbors_custom_k_and_errors():
    a = _grid_adata("square", rows=3, cols=3)
    pp.spatial_neighbors(a, k=4)
    assert a.obsm["spatial_neighbors"].shape == (9, 5)
    with pytest.raises(SlideError, match="too few"):
        pp.spatial_neighbors(_grid_adata("square", rows=2, cols=4))  # 8 spots, k=8
    b = _grid_adata("hex")
    del b.obsm["spatial"]
    with pytest.raises(SlideError) as e:
        pp.spatial_neighbors(b)
    assert e.value.field == "obsm['spatial']" and e.value.slide == "hex"
    c = _grid_adata("hex")
    c.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(SlideError, match="non-finite"):
        pp.spatial_neighbors(c)
    with pytest.raises(ConfigError):
        pp.spatial_neighbors(_grid_adata("hex"), grid="triangle")


def test_spatial_neighbors_duplicate_positions_keep_self_first():
    a = _grid_adata("square", rows=4, cols=4)
    a.obsm["spatial"][5] = a.obsm["spatial"][6]
    pp.spatial_neighbors(a)
    nb = a.obsm["spatial_neighbors"]
    assert (nb[:, 0] == np.arange(a.n_obs)).all()
    assert 6 in nb[5, 1:] and 5 in nb[6, 1:]
    assert all(len(set(row)) == len(row) for row in nb)


# ---- common genes / chain --------------------------------------------------------------------------
def test_common_genes():
    a, b = _tiny(n_genes=10), _tiny(n_genes=10)
    b = b[:, ["g7", "g2", "g3", "g9"]].copy()
    assert list(pp.common_genes([a, b])) == ["g2", "g3", "g7", "g9"]
    assert list(pp.common_genes({"x": b, "y": a})) == ["g7", "g2", "g3", "g9"]
    c = _tiny(n_genes=3)
    c.var_names = ["q1", "q2", "q3"]
    c.uns["senca"] = {"slide_id": "other"}
    with pytest.raises(SlideError) as e:
        pp.common_genes([a, c])
    assert "tiny" in str(e.value) and "other" in str(e.value)


def test_preprocess_chain_writes_the_contract(slide):
    a = slide.copy()
    state = pp.preprocess(a, n_top_genes=300, n_comps=15)
    kept = np.isin(slide.var_names, a.var_names)
    assert sp.issparse(a.X) and np.array_equal(a.X.toarray(), slide.X.toarray()[:, kept])
    assert {"counts", "log1p"} <= set(a.layers)
    assert a.obsm["X_pca"].shape == (a.n_obs, 15) and state["n_comps"] == 15
    assert a.obsm["spatial_neighbors"].shape == (a.n_obs, 7)  # synthetic default grid is hex
    assert a.uns["senca"]["qc"]["n_spots_before"] == slide.n_obs
    # the whole result writes to h5ad (no None anywhere in uns)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        a.write_h5ad(Path(d) / "x.h5ad")


def test_preprocess_cohort_names_the_failing_slide():
    a = synthetic_slide(200, seed=1, with_image=False, slide_id="ok")
    b = _tiny()
    b.uns["senca"] = {"slide_id": "bad"}
    with pytest.raises(SlideError) as e:
        pp.preprocess([a, b], min_counts=10**9)
    assert e.value.slide in ("ok", "bad")


# ---- the baseline of peers.md on real sections -------------------------------------------------
PEERS_ARI = {"A1": 0.230, "B1": 0.281, "C1": 0.154}


@pytest.mark.realdata
@pytest.mark.parametrize("section", ["A1", "B1", "C1"])
def test_preprocess_reproduces_peers_scanpy_gmm_baseline(her2st_root, section):
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    a = load_her2st(her2st_root, section)
    n0 = a.n_obs
    pp.preprocess(a, genes="variable")  # HVG 3000 seurat_v3 -> normalise 1e4 -> log1p -> PCA 30
    assert a.n_obs == n0  # defaults keep the section whole
    assert a.obsm["spatial_neighbors"].shape[1] == 9  # legacy ST: square grid, 8 + self
    scored = a.obs["label_scored"].to_numpy(dtype=bool)
    y = a.obs["label"].astype(str).to_numpy()[scored]
    k = len(set(y))
    aris = []
    for seed in (0, 1, 2):
        g = GaussianMixture(k, covariance_type="full", random_state=seed).fit_predict(a.obsm["X_pca"])
        aris.append(adjusted_rand_score(y, g[scored]))
    print(section, np.round(aris, 3), np.mean(aris))
    assert abs(np.mean(aris) - PEERS_ARI[section]) <= 0.06, aris


def test_pca_genes_ranks_the_common_genes_by_how_many_slides_find_them_variable():
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from anndata import AnnData

    from senca_core import pp
    from senca_core.errors import SlideError

    def slide(genes, hv, rank):
        var = pd.DataFrame({"highly_variable": hv, "highly_variable_rank": rank}, index=genes)
        return AnnData(X=sp.csr_matrix((3, len(genes)), dtype=np.float32), var=var)

    a = slide(["g1", "g2", "g3", "g4", "only_a"], [True, False, False, True, True], [1.0, np.nan, np.nan, 0.0, 2.0])
    b = slide(["g4", "g3", "g2", "g1"], [True, True, False, False], [0.0, 1.0, np.nan, np.nan])
    genes = list(pp.pca_genes([a, b]))
    assert len(genes) == 3  # as many as the largest HVG set (a: 3)
    assert "g4" in genes  # variable on both slides: always kept
    assert "only_a" not in genes and "g2" not in genes  # not on every slide / variable nowhere
    assert list(pp.pca_genes(a)) == ["g1", "g4", "only_a"]  # one slide: its HVGs
    with pytest.raises(SlideError, match="highly variable"):
        pp.pca_genes(slide(["g1"], [False], [np.nan]))
