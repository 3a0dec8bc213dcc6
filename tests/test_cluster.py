"""tl.cluster on several slides: slide alignment (centre / matched), RegionModel re-assignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from senca_core import tl
from senca_core.errors import ConfigError
from senca_core.tl._align import SlideAligner
from senca_core.tl._consensus import average_linkage, member_settings

from _state_slides import CENTRES, state_slide



def _slide(sid: str, props, offset, n=300, seed=0) -> AnnData:
    """A slide of 3 tissue states (shared by every slide) mixed in ``props``, all shifted by ``offset``."""
    return state_slide(sid, props, offset, n=n, seed=seed)


def _cohort():
    # a strong patient offset (larger than the distance between states) and very different compositions
    return [_slide("S1", [0.8, 0.1, 0.1], [0, 0, 0, 0], seed=1),
            _slide("S2", [0.1, 0.45, 0.45], [0, 0, 9, 0], seed=2),
            _slide("S3", [0.34, 0.33, 0.33], [0, 0, 0, -9], seed=3)]


def _pooled_ari(slides) -> float:
    pred = np.concatenate([a.obs["region"].astype(int) for a in slides])
    truth = np.concatenate([a.obs["truth"].astype(int) for a in slides])
    return adjusted_rand_score(truth, pred)


def test_unaligned_pooling_finds_patients_alignment_finds_tissue_states():
    slides = _cohort()
    tl.cluster(slides, k=3, align=None, refine=False, n_pcs=None)
    unaligned = _pooled_ari(slides)
    tl.cluster(slides, k=3, align="matched", refine=False, n_pcs=None)
    matched = _pooled_ari(slides)
    tl.cluster(slides, k=3, align="centre", refine=False, n_pcs=None)
    centred = _pooled_ari(slides)
    assert unaligned < 0.3, unaligned  # the regions are the slides
    assert matched > 0.9, matched  # one region per tissue state in every slide
    # centring alone is pulled by the compositions (slide 1 is 80 % state 0) yet still beats no alignment
    assert centred > unaligned
    assert matched >= centred


def test_matched_offsets_recover_the_true_shift_despite_composition():
    slides = _cohort()
    al = SlideAligner(3, method="matched", n_pcs=None)
    al.fit_transform([a.obsm["X_senca"] for a in slides])
    rel = [o - al.offsets_[0] for o in al.offsets_]
    np.testing.assert_allclose(rel[1], [0, 0, 9, 0], atol=0.25)
    np.testing.assert_allclose(rel[2], [0, 0, 0, -9], atol=0.25)


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
@pytest.mark.parametrize("align", ["centre", "matched"])
def test_region_model_reproduces_and_aligns_a_new_slide(method, align):
    slides = _cohort()
    model = tl.cluster(slides, k=3, method=method, align=align, refine=False, n_pcs=None, return_model=True)
    for a in slides:  # training slides get exactly their regions back
        np.testing.assert_array_equal(model.predict(a), a.obs["region"].astype(int).to_numpy())
    new = _slide("NEW", [0.2, 0.2, 0.6], [5, -5, 0, 0], seed=9)  # another patient, another offset
    assert model.aligner is not None and model.aligner.method == align
    if align == "centre":  # centring is pulled by the new slide's composition: only "matched" is checked here
        return
    new.obs["region"] = pd.Categorical(model.predict(new).astype(str))
    assert adjusted_rand_score(new.obs["truth"], new.obs["region"]) > 0.9
    # the ids mean the same thing: state 0 spots of the new slide get the region of state 0 in slide 1
    s1 = slides[0]
    region_of_state0 = s1.obs.loc[s1.obs["truth"] == "0", "region"].astype(int).mode()[0]
    assert new.obs.loc[new.obs["truth"] == "0", "region"].astype(int).mode()[0] == region_of_state0


def test_one_slide_is_never_aligned_and_bad_align_is_a_config_error():
    a = _slide("S1", [0.4, 0.3, 0.3], [3, 3, 3, 3])
    model = tl.cluster(a, k=3, refine=False, n_pcs=None, return_model=True)
    assert model.aligner is None
    with pytest.raises(ConfigError, match="align"):
        tl.cluster(_cohort(), k=3, align="harmony")


@pytest.mark.parametrize("covariance", ["full", "tied", "diag", "spherical"])
def test_gmm_covariance_is_a_switch(covariance):
    """``covariance`` picks the GMM's covariance type (bench/bench_clustering.py compares them); the estimator the
    RegionModel keeps is the one fitted, so new spots get the same regions."""
    a = _slide("S1", [0.4, 0.3, 0.3], [0, 0, 0, 0])
    model = tl.cluster(a, 3, covariance=covariance, refine=False, consensus=False, return_model=True)
    assert model.estimator.covariance_type == covariance
    assert adjusted_rand_score(a.obs["truth"], a.obs["region"]) > 0.9
    assert (model.labels(np.asarray(a.obsm["X_senca"])) == a.obs["region"].astype(int).to_numpy()).all()
    with pytest.raises(ConfigError):
        tl.cluster(a, 3, covariance="EEE")


def _grid_slide(noise: float, seed: int = 0, side: int = 30) -> AnnData:
    """Three vertical bands of tissue states on a square grid, each spot's embedding very noisy (so the plain GMM
    arg-max scatters wrong labels through every band); 8 grid neighbours per spot (row 0: the spot itself)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(side), np.arange(side))
    xy = np.c_[xx.ravel(), yy.ravel()].astype(float)
    truth = np.minimum((xy[:, 0] * 3 // side).astype(int), 2)
    X = CENTRES[truth] + rng.normal(0, noise, size=(len(xy), 4))
    a = AnnData(X=sp.csr_matrix((len(xy), 0), dtype=np.float32))
    a.obsm["X_senca"] = X
    a.obsm["spatial"] = xy
    a.obsm["spatial_neighbors"] = cKDTree(xy).query(xy, k=9)[1].astype(np.int64)
    a.obs["truth"] = pd.Categorical(truth.astype(str))
    a.uns["senca"] = {"slide_id": "grid"}
    return a


def test_the_spatial_prior_recovers_regions_the_noise_scatters_and_new_slides_get_the_same():
    """The Potts prior (``spatial_prior``) pulls a spot towards its neighbours' region: on a noisy slide it
    recovers the bands the plain arg-max scatters; the RegionModel applies it again, so the same slide gets the
    same regions, and a fresh slide of the same tissue is labelled as well."""
    a = _grid_slide(noise=2.2)
    tl.cluster(a, 3, refine=False, spatial_prior=0.0, n_pcs=None, consensus=False)
    plain = adjusted_rand_score(a.obs["truth"], a.obs["region"])
    model = tl.cluster(a, 3, refine=False, spatial_prior=16.0, n_pcs=None, consensus=False, return_model=True)
    prior = adjusted_rand_score(a.obs["truth"], a.obs["region"])
    assert prior > plain + 0.2 and prior > 0.8, (plain, prior)
    assert model.spatial_prior == 16.0
    again = model.labels(np.asarray(a.obsm["X_senca"]), a.obsm["spatial_neighbors"])
    assert (again == a.obs["region"].astype(int).to_numpy()).all()
    b = _grid_slide(noise=2.2, seed=7)
    assert adjusted_rand_score(b.obs["truth"], model.predict(b)) > 0.8
    assert tl.spatial_prior_labels(np.log(np.full((3, 2), 0.5)), np.array([[0, 1], [1, 2], [2, 0]]), 0.0).tolist() \
        == [0, 0, 0]  # beta 0: the plain arg-max
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="spatial_prior"):
            tl.cluster(a, 3, spatial_prior=bad)


def test_hmrf_em_refits_the_mixture_to_the_prior_and_never_collapses_it():
    """``prior_em_rounds`` (opt-in): the mixture re-estimated from the spatially coherent labels lifts a noisy slide,
    the RegionModel keeps the refitted mixture (the same slide gets the same regions again, a fresh slide is
    labelled as well); on barely separable regions, where re-estimating would let one component swallow the
    others, the rounds that would collapse the mixture are not taken."""
    a = _grid_slide(noise=2.2, seed=3)
    tl.cluster(a, 3, refine=False, spatial_prior=16.0, prior_em_rounds=0, n_pcs=None, consensus=False)
    once = adjusted_rand_score(a.obs["truth"], a.obs["region"])
    model = tl.cluster(a, 3, refine=False, spatial_prior=16.0, prior_em_rounds=10, n_pcs=None, consensus=False,
                       return_model=True)
    em = adjusted_rand_score(a.obs["truth"], a.obs["region"])
    assert em > once and em > 0.95, (once, em)
    again = model.labels(np.asarray(a.obsm["X_senca"]), a.obsm["spatial_neighbors"])
    assert (again == a.obs["region"].astype(int).to_numpy()).all()
    b = _grid_slide(noise=2.2, seed=8)
    assert adjusted_rand_score(b.obs["truth"], model.predict(b)) > 0.9
    hard = _grid_slide(noise=2.6, seed=3)  # without the guard: ARI 0.0; with it 0.56 (0.69 without EM)
    tl.cluster(hard, 3, refine=False, spatial_prior=16.0, prior_em_rounds=10, n_pcs=None, consensus=False)
    assert hard.obs["region"].nunique() == 3 and adjusted_rand_score(hard.obs["truth"], hard.obs["region"]) > 0.5
    with pytest.raises(ConfigError, match="prior_em_rounds"):
        tl.cluster(a, 3, prior_em_rounds=-1)


def test_the_consensus_agrees_over_the_cuts_and_gives_new_slides_the_same_regions():
    """The consensus (the default cut) is the partition a family of GMM cuts agrees on (full covariance, HMRF-EM,
    on ``n_pcs`` and ⅔ of it): it finds the bands of a noisy slide, its model (pickled, as the platform keeps it)
    gives the training slide exactly its regions back and labels a fresh slide of the same tissue; a member-id
    tuple never seen in training joins the group whose spots carry those ids most."""
    import pickle

    a = _grid_slide(noise=2.2, seed=3)
    model = tl.cluster(a, 3, n_pcs=3, return_model=True)
    assert isinstance(model, tl.ConsensusRegionModel) and model.k == model.k_requested == 3
    assert len(model.members) == len(member_settings(3)) == 2 and len(member_settings(None)) == 1
    assert adjusted_rand_score(a.obs["truth"], a.obs["region"]) > 0.9
    model = pickle.loads(pickle.dumps(model))
    assert (model.predict(a) == a.obs["region"].astype(int).to_numpy()).all()
    fresh = _grid_slide(noise=2.2, seed=8)
    assert adjusted_rand_score(fresh.obs["truth"], model.predict(fresh)) > 0.9
    L = np.stack([m.predict(a) for m in model.members], axis=1)
    rows, counts = np.unique(L, axis=0, return_counts=True)
    seen = rows[counts.argmax()]  # the commonest tuple
    unseen = seen.copy()
    unseen[-1] = 99  # an id the last member never gave: the other members' ids decide
    assert model.groups(unseen[None, :])[0] == model.groups(seen[None, :])[0]
    assert [len(member_settings(15)), [s["n_pcs"] for s in member_settings(15)]] == [2, [15, 10]]
    assert member_settings(15)[0] == {"covariance": "full", "n_pcs": 15, "prior_em_rounds": 10}
    assert {s["covariance"] for s in member_settings(15)} == {"full"}
    for one_cut in ({"covariance": "tied"}, {"prior_em_rounds": 3}):
        with pytest.raises(ConfigError, match="consensus"):
            tl.cluster(a, 3, consensus=True, **one_cut)
        assert isinstance(tl.cluster(a, 3, return_model=True, **one_cut), tl.RegionModel)  # the default: one cut


def test_weighted_average_linkage_is_average_linkage_over_the_points():
    """Each distinct tuple stands for the spots holding it: UPGMA over the weighted items partitions the points
    exactly as scipy's average linkage over the points themselves."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import cdist, pdist

    rng = np.random.default_rng(0)
    for k in (2, 4, 6):
        items = rng.normal(size=(15, 3))
        weights = rng.integers(1, 5, size=15)
        points = np.repeat(items, weights, axis=0)
        ref = fcluster(linkage(pdist(points), "average"), k, "maxclust")
        ours = np.repeat(average_linkage(cdist(items, items), weights, k), weights)
        assert len(np.unique(ours)) == k
        assert adjusted_rand_score(ref, ours) == 1.0


def _elongated_regions(k: int, seed: int, n_per: int = 700, dim: int = 4) -> np.ndarray:
    """k regions of thousands of spots, each stretched along its own random direction (correlated features)."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(k):
        rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        parts.append(rng.normal(size=(n_per, dim)) * np.r_[10.0, 0.3, 0.3, 0.3] @ rotation.T
                     + rng.normal(scale=4.0, size=dim))
    return np.vstack(parts)


@pytest.mark.parametrize("k", [3, 4])
def test_k_auto_finds_correlated_regions_on_a_large_section(k):
    """Thousands of spots support full covariances, so k auto reads the full family's BIC curve: on stretched,
    crossing regions a diagonal mixture needs several components per region (its knee said 4 to 8 for 3 regions on
    these seeds) and the full one finds k."""
    from senca_core.tl._k_auto import choose_k

    assert [choose_k(_elongated_regions(k, seed), 0, 10) for seed in range(3)] == [k, k, k]


def test_k_auto_keeps_the_diagonal_family_on_a_small_section():
    """A few dozen spots per region in 15 dimensions do not support a full covariance (120 parameters a region):
    the diagonal curve decides, and finds the three regions."""
    from senca_core.tl._k_auto import choose_k

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(60, 15)) + rng.normal(scale=3.0, size=15) for _ in range(3)])
    assert choose_k(X, 0, 10) == 3
