"""k auto (``senca_core.tl._k_auto``): the design effect read from the spots' neighbours, and k with it."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from senca_core.pp._neighbors import knn_with_self
from senca_core.tl._k_auto import MAX_MORAN, choose_k, design_effect, neighbour_edges


def _grid_regions(seed: int, smooth: float | None, side: int = 40, dim: int = 6, k: int = 3):
    """k vertical bands of a side x side grid, well separated in ``dim`` features, plus within-region structure:
    a spatially smooth field (Gaussian-filtered noise, ``smooth`` spots wide) or, with ``smooth`` None, noise drawn
    independently spot by spot. Returns (X, region, neighbours)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    region = np.minimum(xx.ravel() * k // side, k - 1)
    means = rng.normal(scale=4.0, size=(k, dim))
    if smooth is None:
        within = rng.normal(size=(side * side, dim))
    else:
        within = np.stack([gaussian_filter(rng.normal(size=(side, side)), smooth).ravel() for _ in range(dim)], 1)
        within /= within.std(0)
    X = means[region] + within + 0.3 * rng.normal(size=(side * side, dim))
    return X, region, knn_with_self(np.c_[xx.ravel(), yy.ravel()].astype(float), 8)


def _residual_centres(X, region):
    return np.stack([X[region == r].mean(0) for r in np.unique(region)])[region]


def test_independent_spots_have_no_design_effect_and_smooth_fields_do():
    X, region, nb = _grid_regions(0, None)
    edges = neighbour_edges([nb], [len(X)])
    assert design_effect(X, _residual_centres(X, region), edges) == pytest.approx(1.0, abs=0.15)
    X, region, nb = _grid_regions(0, smooth=1.0)
    c = design_effect(X, _residual_centres(X, region), neighbour_edges([nb], [len(X)]))
    assert 1.5 < c <= (1 + MAX_MORAN) / (1 - MAX_MORAN)
    assert design_effect(X, X.mean(0), (np.zeros(0, int), np.zeros(0, int))) == 1.0  # no neighbours: c = 1


def test_neighbour_edges_offset_pooled_slides_and_skip_slides_without_neighbours():
    nb = np.array([[0, 1], [1, 0], [2, 1]])
    rows, cols = neighbour_edges([nb, None, nb], [3, 5, 3])
    assert list(zip(rows, cols)) == [(0, 1), (1, 0), (2, 1), (8, 9), (9, 8), (10, 9)]


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_k_auto_keeps_well_separated_regions_under_smooth_within_region_structure(seed):
    """Three bands far apart, each with a spatially smooth field inside (Moran's I about 0.9 left in the residuals):
    the design effect is capped (``MAX_MORAN``), so the penalty does not refuse regions this clear (uncapped, c = 13
    read two on seeds 0 and 2)."""
    X, _, nb = _grid_regions(seed, smooth=3.0)
    assert choose_k(X, 0, 10, edges=neighbour_edges([nb], [len(X)])) == 3


def test_k_auto_with_independent_spots_reads_what_plain_bic_and_knee_read():
    X, _, nb = _grid_regions(1, None)
    assert choose_k(X, 0, 10, edges=neighbour_edges([nb], [len(X)])) == choose_k(X, 0, 10) == 3


def test_the_region_model_says_how_k_auto_read_k():
    """``k=None``: the model (a consensus too) carries choose_k's report, which the platform prints and keeps in
    cohort_summary.json; an integer k: no report."""
    import senca_core as sc
    from anndata import AnnData

    X, _, nb = _grid_regions(1, None)
    a = AnnData(np.zeros((len(X), 1), dtype=np.float32))
    a.obsm["X_senca"], a.obsm["spatial_neighbors"] = X, nb
    model = sc.tl.cluster(a, None, n_pcs=None, return_model=True)
    report = model.k_auto
    assert report["k"] == model.k_requested == 3 and report["k"] == min(report["knee"], report["penalised"])
    assert report["design_effect"] == pytest.approx(1.0, abs=0.2) and report["family"] in ("diag", "full")
    assert sc.tl.cluster(a, 3, n_pcs=None, return_model=True).k_auto is None
