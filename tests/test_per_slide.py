"""tl.cluster(cut_by="slide"): each slide cut alone, its regions matched into cohort ids (senca_core.tl._per_slide)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from senca_core import tl
from senca_core.errors import ConfigError
from senca_core.tl._per_slide import match_regions

from _state_slides import state_slide



def _slide(sid: str, props, offset, scale=1.0, n=300, seed=0) -> AnnData:
    """A slide of tissue states mixed in ``props``, the states' distances times ``scale``, shifted by ``offset``."""
    return state_slide(sid, props, offset, scale=scale, noise=0.4, n=n, seed=seed)


def _cohort():
    # patient C's tissue is as structured as the others' but compressed (a tenth of the distances) and far off:
    # a pooled cut spends its components on the spread-out patients and leaves C one region
    return [_slide("A", [0.5, 0.3, 0.2], [0, 0, 0, 0], seed=1),
            _slide("B", [0.2, 0.4, 0.4], [0, 0, 0, 6], seed=2),
            _slide("C", [0.4, 0.3, 0.3], [30, 30, 0, 0], scale=0.1, seed=3)]


def _region_of_state(a) -> dict[int, int]:
    """Tissue state -> the region id a slide gave it."""
    return {int(t): int(r) for t, r in zip(a.obs["truth"].astype(int), a.obs["region"].astype(int))}


def _ids_of_states(a, region_of_state: dict[int, int]) -> np.ndarray:
    """The region id each spot of ``a`` should get: its tissue state's id in ``region_of_state``."""
    return np.array([region_of_state[int(t)] for t in a.obs["truth"].astype(int)])


def _ari(a) -> float:
    return adjusted_rand_score(a.obs["truth"].astype(int), a.obs["region"].astype(int))


def test_a_patient_the_pooled_cut_leaves_one_region_keeps_its_regions_cut_alone():
    slides = _cohort()
    tl.cluster(slides, k=3, refine=False, n_pcs=None, cut_by="cohort")
    pooled = [_ari(a) for a in slides]
    assert slides[2].obs["region"].nunique() == 1 and pooled[2] == 0.0  # the failure cut_by="slide" is for
    model = tl.cluster(slides, k=3, refine=False, n_pcs=None, cut_by="slide", return_model=True)
    assert isinstance(model, tl.PerSlideRegionModel) and model.k == 3
    assert min(_ari(a) for a in slides) > 0.9
    # the ids are the cohort's: tissue state s has the same region id in every slide
    ids = {(int(t), int(r)) for a in slides for t, r in zip(a.obs["truth"].astype(int), a.obs["region"].astype(int))}
    by_state = pd.DataFrame(sorted(ids), columns=["state", "region"]).groupby("state")["region"].agg(
        lambda r: r.mode().iloc[0])
    majority = np.concatenate([by_state.loc[a.obs["truth"].astype(int)].to_numpy() for a in slides])
    assert np.mean(majority == np.concatenate([a.obs["region"].astype(int) for a in slides])) > 0.95
    assert sorted(by_state) == [0, 1, 2]


def test_training_slides_get_their_regions_back_and_a_new_slide_gets_the_cohorts_ids():
    slides = _cohort()
    model = tl.cluster(slides, k=3, n_pcs=None, cut_by="slide", return_model=True)
    model = pickle.loads(pickle.dumps(model))
    for a in slides:
        assert np.array_equal(model.predict(a), a.obs["region"].astype(int).to_numpy())
    truth_to_id = _region_of_state(slides[0])
    new = _slide("D", [0.3, 0.3, 0.4], [-5, 2, 0, 0], scale=0.5, seed=9)  # a new patient: own offset and scale
    labels = model.predict(new)
    assert adjusted_rand_score(new.obs["truth"].astype(int), labels) > 0.9
    assert np.mean(labels == _ids_of_states(new, truth_to_id)) > 0.9


def test_a_slide_with_a_state_the_others_lack_opens_a_region_of_its_own_and_never_merges_two():
    slides = [_slide("A", [0.45, 0.4, 0.15, 0.0], [0, 0, 0, 0], seed=1),
              _slide("B", [0.45, 0.4, 0.0, 0.15], [1, 0, 0, 0], seed=2)]
    model = tl.cluster(slides, 3, refine=False, n_pcs=None, cut_by="slide", return_model=True)
    for a in slides:
        assert _ari(a) > 0.9
        assert a.obs["region"].nunique() == 3
    assert model.k == 4  # two shared states, A's own third and B's own fourth (never paired across the gap)
    regions = [set(a.obs["region"].astype(int)[a.obs["truth"].astype(int) >= 2]) for a in slides]
    assert len(regions[0]) == len(regions[1]) == 1 and regions[0] != regions[1]


def test_matching_is_one_to_one_within_a_slide_and_finds_the_offset():
    rng = np.random.default_rng(0)
    types = rng.normal(0, 5, size=(4, 3))
    perm = [2, 0, 3, 1]
    shifted = types[perm] + np.array([10.0, -3.0, 7.0]) + rng.normal(0, 0.1, size=(4, 3))
    matches, fitted = match_regions([types, shifted], [np.ones(4), np.array([5.0, 1.0, 1.0, 1.0])])
    # region i of the shifted slide is region perm[i] of the first: the same type, four types, none shared
    assert [int(matches[0][j]) for j in perm] == [int(t) for t in matches[1]]
    assert sorted(matches[0]) == [0, 1, 2, 3] and fitted.shape == (4, 3)


def test_a_slide_too_small_to_cut_alone_takes_the_nearest_cohort_regions():
    slides = _cohort()[:2] + [_slide("tiny", [0.4, 0.3, 0.3], [2, 0, 0, 0], n=8, seed=5)]
    model = tl.cluster(slides, k=3, n_pcs=None, cut_by="slide", return_model=True)  # 8 spots < 3 per region
    truth_to_id = _region_of_state(slides[0])
    tiny = slides[2]
    expected = _ids_of_states(tiny, truth_to_id)
    assert np.mean(tiny.obs["region"].astype(int).to_numpy() == expected) >= 7 / 8
    new = _slide("tiny2", [0.4, 0.3, 0.3], [-1, 1, 0, 0], n=6, seed=6)  # a new small slide: the same way
    assert np.mean(model.predict(new) == _ids_of_states(new, truth_to_id)) >= 5 / 6
    only_small = [_slide(s, [0.4, 0.3, 0.3], [0, 0, 0, 0], n=9, seed=i) for i, s in enumerate("XY")]
    assert not isinstance(tl.cluster(only_small, k=3, n_pcs=None, cut_by="slide", return_model=True),
                          tl.PerSlideRegionModel)  # a cohort of small slides only: one pooled cut


def test_cut_by_is_checked_and_one_slide_is_the_plain_cut():
    slides = _cohort()
    with pytest.raises(ConfigError, match="cut_by"):
        tl.cluster(slides, k=3, cut_by="patient")
    one = tl.cluster(slides[0], k=3, n_pcs=None, cut_by="slide", return_model=True)
    assert not isinstance(one, tl.PerSlideRegionModel)


def test_cut_by_auto_cuts_each_slide_alone_when_k_is_read_and_pools_when_k_is_given():
    """The default ``cut_by="auto"``: k read from the data (None) reads it slide by slide, each slide's regions
    matched into cohort ids; a k the caller gives is the cohort's, one pooled cut (docs/BENCHMARKS.md, "Each slide
    cut alone at k auto")."""
    assert tl.resolve_cut_by("auto", None) == "slide" and tl.resolve_cut_by("auto", 3) == "cohort"
    assert tl.resolve_cut_by("cohort", None) == "cohort" and tl.resolve_cut_by("slide", 3) == "slide"
    with pytest.raises(ConfigError, match="cut_by"):
        tl.resolve_cut_by("patient", None)
    slides = _cohort()
    read = tl.cluster(slides, None, n_pcs=None, return_model=True)
    assert isinstance(read, tl.PerSlideRegionModel)
    assert slides[2].obs["region"].nunique() >= 2  # patient C keeps its own regions (pooled at k 3 it gets one)
    given = tl.cluster(slides, 3, refine=False, n_pcs=None, return_model=True)
    assert not isinstance(given, tl.PerSlideRegionModel) and slides[2].obs["region"].nunique() == 1
