"""senca_core.tl summaries (heterogeneity, microenvironment, marker_genes, tumour-region rule) and
senca_core.pl.region_map, on hand-made grids with known answers, synthetic slides and HER2ST; the cohort regions'
patient mixing (senca_core.metrics.patient_mixing) and the infer stage's warning built on it."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import senca_core.pp as pp
from senca_core.datasets import synthetic_slide
from senca_core.errors import SlideError
from senca_core.pl import region_map
from senca_core.tl._heterogeneity import heterogeneity
from senca_core.tl._markers import marker_genes, tumour_like_regions, tumour_scores
from senca_core.tl._microenvironment import microenvironment


def square(labels: np.ndarray, pitch: float = 100.0) -> ad.AnnData:
    """An AnnData on a square grid whose obs["region"] is the 2-D array ``labels``."""
    R, C = labels.shape
    r, c = np.mgrid[0:R, 0:C]
    a = ad.AnnData(obs=pd.DataFrame({"array_row": r.ravel(), "array_col": c.ravel()},
                                    index=[f"{j}x{i}" for i, j in zip(r.ravel(), c.ravel())]))
    a.obs["region"] = pd.Categorical(labels.ravel())
    a.obsm["spatial"] = np.stack([c.ravel() * pitch, r.ravel() * pitch], axis=1).astype(float)
    a.uns["senca"] = {"slide_id": "hand", "grid": "square"}
    return a


def brute_mixing(labels: np.ndarray) -> float:
    """Independent reference: 8-neighbourhood on the array, mean fraction of other-region neighbours."""
    R, C = labels.shape
    fr = []
    for i in range(R):
        for j in range(C):
            nb = [labels[i + di, j + dj] for di in (-1, 0, 1) for dj in (-1, 0, 1)
                  if (di or dj) and 0 <= i + di < R and 0 <= j + dj < C]
            fr.append(np.mean([x != labels[i, j] for x in nb]))
    return float(np.mean(fr))


# ---- heterogeneity ----------------------------------------------------------------------------------
def test_two_uniform_halves():
    lab = np.array([["a"] * 5 + ["b"] * 5] * 10)
    h = heterogeneity(square(lab), tumour_regions=["a"])
    assert h["shannon"] == pytest.approx(math.log(2))
    assert h["shannon_evenness"] == pytest.approx(1.0)
    assert h["simpson"] == pytest.approx(0.5)
    assert h["inverse_simpson"] == pytest.approx(2.0)
    assert h["proportions"] == {"a": 0.5, "b": 0.5}
    assert h["neighbour_mixing"] == pytest.approx(brute_mixing(lab))
    assert h["neighbour_mixing"] == pytest.approx((2 * (8 * 3 / 8 + 2 * 2 / 5)) / 100)
    assert h["tumour_fraction"] == 0.5 and h["n_tumour_components"] == 1
    assert h["tumour_component_sizes"] == [50]
    assert h["tumour_rule"] == "given"


def test_single_region_and_na_spots():
    lab = np.full((6, 6), "x", dtype=object)
    a = square(lab)
    a.obs.loc[a.obs_names[:6], "region"] = np.nan
    h = heterogeneity(a, tumour_regions=["x"])
    assert h["n_spots"] == 30 and h["n_regions"] == 1
    assert h["shannon"] == 0.0 and h["simpson"] == 0.0 and h["neighbour_mixing"] == 0.0
    assert h["neighbour_entropy"] == 0.0


def test_tumour_components_sizes_and_spread():
    lab = np.full((12, 12), "s", dtype=object)
    lab[1:4, 1:4] = "t"          # a 3 x 3 nest
    lab[8:10, 8:11] = "t2"       # a 2 x 3 nest of another tumour region, far away
    lab[6, 0] = "t"              # a single-spot fragment
    h = heterogeneity(square(lab), tumour_regions=["t", "t2"])
    assert h["n_tumour_regions"] == 2
    assert h["tumour_component_sizes"] == [9, 6]  # the lone spot is below min_component=3
    assert h["n_tumour_components"] == 2 and h["n_tumour_fragments"] == 3
    sub = h["tumour_subregions"]["t"]
    assert sub["n_spots"] == 10 and sub["n_components"] == 1 and sub["largest_component"] == 9
    # spread of a 3 x 3 block alone: mean distance to its centre in pitches
    lab2 = np.full((7, 7), "s", dtype=object)
    lab2[2:5, 2:5] = "t"
    h2 = heterogeneity(square(lab2), tumour_regions=["t"])
    assert h2["tumour_spread"] == pytest.approx((4 + 4 * math.sqrt(2)) / 9)
    assert h2["tumour_spread_px"] == pytest.approx(100 * (4 + 4 * math.sqrt(2)) / 9)
    # diagonal contact counts as adjacency on a square grid (8-neighbourhood)
    lab3 = np.full((5, 5), "s", dtype=object)
    lab3[1, 1] = lab3[2, 2] = lab3[3, 3] = "t"
    assert heterogeneity(square(lab3), tumour_regions=["t"])["n_tumour_components"] == 1


def test_bad_keys():
    a = square(np.array([["a", "b"] * 3] * 6))
    with pytest.raises(SlideError, match="no column"):
        heterogeneity(a, key="nope", tumour_regions=["a"])
    with pytest.raises(SlideError, match="not found"):
        heterogeneity(a, tumour_regions=["zzz"])


# ---- microenvironment ---------------------------------------------------------------------------------
def test_rings_around_a_tumour_block():
    lab = np.full((11, 11), "stroma", dtype=object)
    lab[2:9, 2:9] = "immune"
    lab[4:7, 4:7] = "tumour"     # tumour, ring 1 + ring 2 immune, then stroma
    lab[2, 2] = "fat"            # one ring-2 spot of another kind (corner of the 7x7 square)
    df = microenvironment(square(lab), tumour_regions=["tumour"], rings=3)
    assert list(df.index) == ["ring1", "ring2", "ring3", "beyond", "all_non_tumour"]
    assert df.loc["ring1", "n_spots"] == 16 and df.loc["ring1", "immune"] == 1.0
    assert df.loc["ring2", "n_spots"] == 24
    assert df.loc["ring2", "fat"] == pytest.approx(1 / 24)
    assert df.loc["ring3", "stroma"] == 1.0 and df.loc["ring3", "n_spots"] == 32
    assert df.loc["all_non_tumour", "n_spots"] == 121 - 9
    assert df.attrs["enrichment"]["immune"] > 2
    assert "tumour" not in df.columns


# ---- synthetic slide: the defaults find the tumour and its margin --------------------------------------
@pytest.fixture(scope="module")
def syn():
    a = synthetic_slide(1200, seed=11, with_image=False, slide_id="syn11")
    pp.preprocess(a, n_top_genes=300, n_comps=15)
    a.obs["region"] = a.obs["true_region"]  # summarise the ground-truth regions
    return a


def test_tumour_rule_and_summaries_on_synthetic(syn):
    assert sorted(tumour_like_regions(syn)) == ["tumour_A", "tumour_B"]
    s = tumour_scores(syn)
    assert s.index[-1] in ("stroma", "adipose") and s["tumour_A"] > 0 > s["gland"]
    h = heterogeneity(syn)
    truth = syn.obs["true_region"].isin(["tumour_A", "tumour_B"]).mean()
    assert h["tumour_rule"] == "tumour_genes" and h["tumour_fraction"] == pytest.approx(truth)
    assert h["n_regions"] == 6 and 0 < h["neighbour_mixing"] < 0.5
    me = microenvironment(syn)  # the generator puts an immune ring at the tumour margin
    assert me.loc["ring1", "immune"] > 0.6
    assert me.attrs["enrichment"]["immune"] > 1.5


def test_marker_genes_recover_the_programmes(syn):
    df = marker_genes(syn, n_genes=5)
    assert list(df.columns[:3]) == ["group", "rank", "gene"]
    design = syn.uns["senca"]["design"]["markers"]
    top = df.groupby("group")["gene"].apply(list)
    assert len(set(top["tumour_A"]) & set(design["clone_A"])) >= 3
    assert len(set(top["tumour_B"]) & set(design["clone_B"])) >= 3
    assert len(set(top["immune"]) & set(design["immune"])) >= 4
    assert (df["logfoldchange"] > 0).all() and (df["mean_in"] > df["mean_out"]).all()
    assert "rank_genes_region" in syn.uns
    tt = marker_genes(syn, n_genes=3, method="t-test")
    assert len(tt) == 3 * syn.obs["true_region"].nunique()
    one = syn.copy()
    one.obs["one"] = pd.Categorical(["x"] * one.n_obs)
    with pytest.raises(SlideError, match="two groups"):
        marker_genes(one, key="one")


# ---- name_regions -------------------------------------------------------------------------------------
def test_name_regions_on_the_synthetic_truth(syn):
    from senca_core.tl import name_regions

    a = syn.copy()
    names = name_regions(a).set_index("region")
    assert names.attrs["context"] == "breast"
    assert names.loc["tumour_A", "is_tumour"] and names.loc["tumour_B", "is_tumour"]  # both clones, kept apart
    assert names.loc["tumour_A", "region_name"] != names.loc["tumour_B", "region_name"]
    assert names.loc["immune", "tissue"] == "immune" and names.loc["gland", "tissue"] == "normal gland"
    assert names.loc["stroma", "tissue"] == "stroma" and not names.loc["gland", "is_tumour"]
    assert names.loc["tumour_A", "region_name"].startswith("Rtumour_A · ")
    assert names["n_spots"].sum() == a.n_obs and names["fraction"].sum() == pytest.approx(1.0)
    assert (a.obs["region_name"].astype(str) == a.obs["region"].map(names["region_name"]).astype(str)).all()
    assert list(a.uns["region_names"]["region"]) == list(names.index)


def test_name_regions_brain_context_and_unassigned():
    from senca_core.tl import name_regions

    genes = ["SNAP25", "SYT1", "MBP", "PLP1", "MOBP", "MOG", "PCP4", "TRABD2A", "FEZF2", "ACTB", "GAPDH"]
    base = {g: 2.0 for g in genes}
    wm = dict(base, MBP=4.0, PLP1=4.0, MOBP=3.0, MOG=3.0)
    l5 = dict(base, PCP4=3.5, TRABD2A=3.0, FEZF2=3.0)
    flat = dict(base, ACTB=2.2)
    prof = pd.DataFrame([wm, l5, flat], index=["0", "1", "2"])
    names = name_regions(prof, n_spots={"0": 50, "1": 30, "2": 20}).set_index("region")
    assert names.attrs["context"] == "brain"
    assert names.loc["0", "tissue"] == "white matter" and names.loc["1", "tissue"] == "L5"
    assert names.loc["2", "tissue"] == "unassigned" and not names["is_tumour"].any()  # never forced
    assert names.loc["0", "region_name"] in ("R0 · MBP/PLP1", "R0 · PLP1/MBP")
    assert names.loc["0", "fraction"] == pytest.approx(0.5)
    with pytest.raises(Exception, match="n_spots"):
        name_regions(prof)


# ---- region map ---------------------------------------------------------------------------------------
def test_region_map_writes_a_real_picture(tmp_path):
    a = synthetic_slide(600, seed=2, out_dir=tmp_path, slide_id="map2")
    out = region_map(a, "true_region", out=tmp_path / "maps" / "m.png", thumbnail_px=500)
    assert out.exists() and out.stat().st_size > 20_000
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # H&E underneath + spots + legend
    tab_blue = np.array([31, 119, 180])   # tab10 colour of the first region
    assert (np.abs(img.astype(int) - tab_blue).sum(axis=2) < 40).sum() > 100
    del a.uns["senca"]["image_path"]        # no image: plain background still works
    out2 = region_map(a, key="label", out=tmp_path / "m2.png")
    assert Image.open(out2).size[0] > 300
    with pytest.raises(SlideError):
        region_map(a, key="nope", out=tmp_path / "m3.png")
    pdf = region_map(a, key="label", out=tmp_path / "m4.pdf")  # PNG's compression setting is for PNG only
    assert pdf.read_bytes().startswith(b"%PDF")


# ---- HER2ST: the tumour rule on pathologist labels -------------------------------------------------
@pytest.mark.realdata
@pytest.mark.parametrize("section,expected", [
    ("A1", {"invasive cancer", "cancer in situ"}),
    ("B1", {"invasive cancer"}),
    ("C1", {"invasive cancer"}),
])
def test_tumour_rule_on_her2st_labels(her2st_root, section, expected):
    from test_pp import load_her2st

    a = load_her2st(her2st_root, section)
    a.obs["label"] = a.obs["label"].astype(str).where(a.obs["label_scored"].to_numpy(dtype=bool))
    pp.normalize_log(a)
    assert set(tumour_like_regions(a, "label")) == expected
    h = heterogeneity(a, "label")
    assert h["tumour_rule"] == "tumour_genes"
    assert h["n_tumour_components"] >= 1 and h["tumour_component_sizes"][0] >= 20


def test_tumour_subregions_split_two_populations_and_leave_one_alone():
    """The hierarchy's second level: a tumour region holding two distinct populations (in the embedding) is split
    into sub-regions ``<r>a`` / ``<r>b``; a homogeneous one, and non-tumour regions, are left as they are."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from senca_core import tl

    rng = np.random.default_rng(0)
    n = 120
    emb = np.vstack([rng.normal(0, 1, (70, 8)), rng.normal(6, 1, (50, 8)),   # region 0: two clones
                     rng.normal(0, 1, (60, 8)),                              # region 1: one population
                     rng.normal(-6, 1, (40, 8))])                            # region 2: not tumour
    region = ["0"] * n + ["1"] * 60 + ["2"] * 40
    a = ad.AnnData(np.zeros((len(region), 3), dtype=np.float32))
    a.obs["region"] = pd.Categorical(region)
    a.obsm["X_senca"] = emb.astype(np.float32)
    a.layers["log1p"] = np.abs(rng.normal(0, 1, a.shape)).astype(np.float32)
    slides = [a[:100].copy(), a[100:].copy()]  # pooled over slides
    table = tl.tumour_subregions(slides, ["0", "1"])
    assert list(table["subregion"]) == ["0a", "0b", "1"]
    assert table.set_index("subregion").loc[["0a", "0b"], "n_spots"].tolist() == [70, 50]
    assert not table.set_index("subregion").loc["1", "split"]
    sub = np.concatenate([s.obs["tumour_subregion"].astype(object).to_numpy() for s in slides])
    assert (sub[:70] == "0a").all() and (sub[70:120] == "0b").all() and (sub[120:180] == "1").all()
    assert pd.isna(sub[180:]).all()


def test_patient_mixing_flags_regions_that_follow_patients(tmp_path):
    from jobs.infer import patient_mixing_warning
    from senca_core.metrics import patient_mixing, regions_follow_patients

    # two patients, three slides: every region is one patient's (B's two slides share regions 1 and 2)
    follow = [np.array([0] * 50), np.array([1] * 30 + [2] * 20), np.array([1] * 25 + [2] * 25)]
    table = patient_mixing(follow, ["A", "B", "B"])
    assert table.set_index("region")["n_patients"].to_dict() == {"0": 1, "1": 1, "2": 1}
    assert table["one_patient"].all() and regions_follow_patients(table)
    # the same slides with one region shared by both patients: mixed
    shared = [np.array([0] * 40 + [1] * 10), follow[1], follow[2]]
    table = patient_mixing(shared, ["A", "B", "B"])
    assert table.set_index("region").loc["1", "n_patients"] == 2 and not regions_follow_patients(table)
    # a stray spot or two of another patient does not make a region shared (>= 95 % one patient's)
    stray = [np.array([0] * 49 + [1]), np.array([1] * 50), np.array([1] * 48 + [0, 0])]
    assert regions_follow_patients(patient_mixing(stray, ["A", "B", "B"]))
    # one patient: nothing to follow
    assert not regions_follow_patients(patient_mixing(follow, ["A", "A", "A"]))
    with pytest.raises(ValueError, match="patient ids"):
        patient_mixing(follow, ["A", "B"])

    # the infer stage's warning: one line naming the rule; none when the regions are shared or one patient
    paths = {}
    for sid, labels in zip(("s1", "s2", "s3"), follow):
        paths[sid] = str(tmp_path / f"{sid}.npy")
        np.save(paths[sid], labels)
    warning = patient_mixing_warning({"region_paths": paths}, {"s1": "A", "s2": "B", "s3": "B"})
    assert warning is not None and "follow the patients" in warning and "0 A, 1 B, 2 B" in warning
    assert "clustering.cut_by: slide" in warning  # the pooled cut's advice: cut each slide alone
    matched = patient_mixing_warning({"region_paths": paths, "cut_by": "slide"}, {"s1": "A", "s2": "B", "s3": "B"})
    assert "matched across slides follow the patients" in matched and "cut_by" not in matched
    assert patient_mixing_warning({"region_paths": paths}, {"s1": "A", "s2": "A", "s3": "A"}) is None
    np.save(paths["s1"], shared[0])
    assert patient_mixing_warning({"region_paths": paths}, {"s1": "A", "s2": "B", "s3": "B"}) is None
