"""senca_core.datasets: the synthetic slide (contract, confounded pairs in counts AND image) and
the cohort writer (files round-trip, shared panel, patient heterogeneity)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from senca_core.datasets import (EXPRESSION_ALIKE_PAIRS, HISTOLOGY_ALIKE_PAIRS, REGION_NAMES,
                                 synthetic_cohort, synthetic_slide)
from senca_core.errors import ConfigError


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return synthetic_slide(2500, seed=7, out_dir=tmp_path_factory.mktemp("syn"), slide_id="s7",
                           patient_id="p7")


def _log_norm(a):
    X = a.X.toarray().astype(np.float64)
    return np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)


def _patch_stats(a):
    """Crude per-spot image statistics from a patch of 2 spot diameters: mean R, G, B, grey
    std, fraction of dark (nuclear) and of white pixels."""
    img = np.asarray(Image.open(a.uns["senca"]["image_path"]).convert("RGB")).astype(np.float64)
    r = int(round(a.uns["senca"]["spot_diameter_px"]))
    rows = []
    for x, y in np.round(a.obsm["spatial"]).astype(int):
        p = img[y - r:y + r, x - r:x + r]
        grey = p.mean(axis=2)
        rows.append([*p.reshape(-1, 3).mean(axis=0), grey.std(), (grey < 120).mean(), (grey > 235).mean()])
    return pd.DataFrame(rows, columns=["R", "G", "B", "grey_sd", "dark", "white"], index=a.obs_names)


def test_slide_follows_the_anndata_contract(slide):
    a = slide
    assert a.n_obs == 2500 and a.n_vars == 500
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() >= 0
    assert (a.layers["counts"] != a.X).nnz == 0
    assert a.obs_names.is_unique
    for col in ("array_row", "array_col"):
        assert np.issubdtype(a.obs[col].dtype, np.integer)
    assert isinstance(a.obs["true_region"].dtype, pd.CategoricalDtype)
    assert (a.obs["label"].astype(str) == a.obs["true_region"].astype(str)).all()
    assert a.obs["label_scored"].dtype == bool and a.obs["label_scored"].all()
    assert set(a.obs["true_region"].cat.categories) == set(REGION_NAMES)  # all six regions present
    s = a.uns["senca"]
    assert s["slide_id"] == "s7" and s["patient_id"] == "p7"
    assert s["platform"] == "synthetic" and s["grid"] == "hex"
    assert a.obsm["spatial"].dtype == np.float64 and a.obsm["spatial"].shape == (2500, 2)
    W, H = Image.open(s["image_path"]).size
    assert tuple(s["image_size"]) == (W, H)
    xy = a.obsm["spatial"]
    d = s["spot_diameter_px"]
    assert (xy[:, 0] > d).all() and (xy[:, 0] < W - d).all() and (xy[:, 1] > d).all() and (xy[:, 1] < H - d).all()
    # hex grid: nearest neighbours exactly one pitch away, six of them in the interior
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xy).query(xy, k=7)
    pitch = s["scalefactors"]["spot_spacing_px"]
    assert np.allclose(dist[:, 1], pitch)
    assert np.median((dist[:, 1:] < 1.01 * pitch).sum(axis=1)) == 6
    # library sizes vary realistically, with zeros (dropout) in the matrix
    lib = np.asarray(a.X.sum(axis=1)).ravel()
    assert 1500 < np.median(lib) < 6000 and lib.std() / lib.mean() > 0.3
    assert 0.2 < 1 - a.X.nnz / np.prod(a.shape) < 0.9


def test_design_is_documented(slide):
    d = slide.uns["senca"]["design"]
    assert [tuple(p) for p in d["histology_alike_pairs"]] == [tuple(p) for p in HISTOLOGY_ALIKE_PAIRS]
    assert [tuple(p) for p in d["expression_alike_pairs"]] == [tuple(p) for p in EXPRESSION_ALIKE_PAIRS]
    for x, y in HISTOLOGY_ALIKE_PAIRS:
        assert d["texture"][x] == d["texture"][y] and d["programmes"][x] != d["programmes"][y]
    for x, y in EXPRESSION_ALIKE_PAIRS:
        assert d["texture"][x] != d["texture"][y] and d["programmes"][x] == d["programmes"][y]


def test_expression_separates_the_histology_alike_pair_but_not_the_other(slide):
    a = slide
    L = _log_norm(a)
    reg = a.obs["true_region"].astype(str).to_numpy()
    mean = {r: L[reg == r].mean(axis=0) for r in REGION_NAMES}
    sd = L.std(axis=0) + 1e-9
    # tumour_A vs tumour_B: clone markers differ strongly
    genes = list(a.var_names)
    for prog, hi, lo in (("clone_A", "tumour_A", "tumour_B"), ("clone_B", "tumour_B", "tumour_A")):
        idx = [genes.index(g) for g in a.uns["senca"]["design"]["markers"][prog]]
        assert (mean[hi][idx] - mean[lo][idx]).mean() > 1.0
    effect = lambda x, y: np.abs(mean[x] - mean[y]) / sd  # noqa: E731  standardised gene effects
    n_diff_hist_pair = int((effect("tumour_A", "tumour_B") > 0.5).sum())
    n_diff_expr_pair = int((effect("stroma", "adipose") > 0.5).sum())
    assert n_diff_hist_pair >= 20
    assert n_diff_expr_pair <= 2
    assert np.corrcoef(mean["stroma"], mean["adipose"])[0, 1] > 0.995


def test_image_separates_the_expression_alike_pair_but_not_the_other(slide):
    a = slide
    F = _patch_stats(a)
    reg = a.obs["true_region"].astype(str).to_numpy()
    sd = F.std(axis=0)
    m = F.groupby(reg).mean()
    # tumour_A vs tumour_B: same texture -> every statistic within 0.15 sd
    assert ((m.loc["tumour_A"] - m.loc["tumour_B"]).abs() / sd < 0.15).all(), m
    # stroma vs adipose: fat is white, stroma pink
    assert m.loc["adipose", "white"] - m.loc["stroma", "white"] > 0.4
    assert ((m.loc["stroma"] - m.loc["adipose"]).abs() / sd).max() > 1.5
    # nuclei-rich textures are dark: tumour and immune vs stroma/adipose, and they differ
    assert m.loc["tumour_A", "dark"] > 0.3 > m.loc["stroma", "dark"]
    assert abs(m.loc["tumour_A", "dark"] - m.loc["immune", "dark"]) / sd["dark"] > 0.3


def test_layout_proportions_seed_and_square_grid(tmp_path):
    a = synthetic_slide(800, seed=3, with_image=False, layout={"tumour": 0.4, "clone_B": 0.5})
    reg = a.obs["true_region"].astype(str)
    tum = reg.isin(["tumour_A", "tumour_B"]).mean()
    assert abs(tum - 0.4) < 0.05
    assert abs((reg == "tumour_B").sum() / reg.isin(["tumour_A", "tumour_B"]).sum() - 0.5) < 0.05
    b = synthetic_slide(800, seed=3, with_image=False, layout={"tumour": 0.4, "clone_B": 0.5})
    assert (a.X != b.X).nnz == 0 and (a.obs["true_region"] == b.obs["true_region"]).all()  # deterministic
    c = synthetic_slide(800, seed=4, with_image=False, layout={"tumour": 0.4, "clone_B": 0.5})
    assert (a.obs["true_region"].to_numpy() != c.obs["true_region"].to_numpy()).mean() > 0.2
    sq = synthetic_slide(600, seed=1, grid="square", out_dir=tmp_path)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(sq.obsm["spatial"]).query(sq.obsm["spatial"], k=9)
    pitch = sq.uns["senca"]["scalefactors"]["spot_spacing_px"]
    assert np.median((dist[:, 1:] < 1.5 * pitch).sum(axis=1)) == 8
    assert sq.uns["senca"]["grid"] == "square" and Image.open(sq.uns["senca"]["image_path"]).mode == "RGB"


def test_bad_parameters():
    with pytest.raises(ConfigError):
        synthetic_slide(100, grid="triangle", with_image=False)
    with pytest.raises(ConfigError, match="layout"):
        synthetic_slide(100, layout={"tumor": 0.3}, with_image=False)
    with pytest.raises(ConfigError, match="n_genes"):
        synthetic_slide(100, n_genes=20, with_image=False)
    with pytest.raises(ConfigError):
        synthetic_slide(10, with_image=False)


def test_cohort_writes_files_that_round_trip(tmp_path):
    recs = synthetic_cohort(tmp_path, n_patients=3, slides_per_patient=2, n_spots=400, seed=1)
    assert len(recs) == 6
    assert [r["patient_id"] for r in recs] == ["P1", "P1", "P2", "P2", "P3", "P3"]
    assert len({r["slide_id"] for r in recs}) == 6
    slides = []
    for r in recs:
        a = ad.read_h5ad(r["h5ad"])
        assert a.uns["senca"]["slide_id"] == r["slide_id"] and a.uns["senca"]["patient_id"] == r["patient_id"]
        assert a.uns["senca"]["image_path"] == r["image"]
        assert Image.open(r["image"]).size == tuple(a.uns["senca"]["image_size"])
        assert sp.issparse(a.X) and a.X.dtype == np.float32 and a.n_obs == 400
        assert a.obsm["spatial"].shape == (400, 2)
        assert a.obs["label_scored"].all()
        assert set(a.uns["senca"]["design"]["regions"]) == set(REGION_NAMES)
        slides.append(a)
    assert all((s.var_names == slides[0].var_names).all() for s in slides)  # one gene panel
    tum = np.array([s.obs["true_region"].isin(["tumour_A", "tumour_B"]).mean() for s in slides])
    # patients differ in tumour burden; slides of one patient are alike
    per_patient = tum.reshape(3, 2)
    assert np.ptp(per_patient.mean(axis=1)) > 0.05
    assert np.abs(per_patient[:, 0] - per_patient[:, 1]).max() < 0.06
    # the programmes are shared: tumour_A's clone_A markers are up in every slide
    for s in slides:
        if (s.obs["true_region"] == "tumour_A").sum() >= 5:
            L = _log_norm(s)
            idx = s.var_names.get_indexer(s.uns["senca"]["design"]["markers"]["clone_A"])
            reg = s.obs["true_region"].astype(str).to_numpy()
            assert L[reg == "tumour_A"][:, idx].mean() - L[reg != "tumour_A"][:, idx].mean() > 0.8
