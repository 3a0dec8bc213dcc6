"""senca_core.io: the slide readers on the real HER2ST / DLPFC data, the h5ad round trip and the ``read``
dispatcher. Bad inputs: test_io_legacy.py (legacy ST) and test_io_visium.py (Visium, h5ad, counts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from senca_core.errors import SlideError
from senca_core.io import read_h5ad, read_her2st, read_legacy_st, read_visium

from _io_helpers import A1_IMAGE_SCALE, assert_contract, deep_equal, label_file_counts, write_legacy, write_visium


# ------------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def a1(her2st_root):
    return read_her2st(her2st_root, "A1", image=her2st_root / "images" / "A1_HE_dark_2000px.png",
                       image_scale=A1_IMAGE_SCALE)


@pytest.fixture(scope="module")
def dlpfc(dlpfc_root):
    return read_visium(dlpfc_root, labels=dlpfc_root / "labels.tsv")


def test_her2st_a1_spots_and_labels(a1, her2st_root):
    assert a1.shape == (346, 15045)
    assert_contract(a1, platform="legacy_st", grid="square")
    s = a1.uns["senca"]
    assert s["slide_id"] == "A1" and s["patient_id"] == "A"
    # the 2 selection rows without a count row are dropped and counted; every count row has a spot
    assert s["join"] == {"n_counts_only": 0, "n_spots_only": 2, "n_unselected": 0}
    # all 346 count rows carry a label; the 2 label rows without a count row are the same 2 spots
    assert s["labels_join"] == {"n_labels_only": 2, "n_unlabelled": 0, "n_no_coordinates": 0, "n_ambiguous": 0}
    label_file = her2st_root / "labels" / "A1_labeled_coordinates.tsv"
    assert s["warnings"] == [f"labels: 2 of 348 labelled spots of {label_file} are not spots of this slide: skipped"]
    assert a1.obs["label"].notna().all()
    got = a1.obs["label"].value_counts().to_dict()
    got = {k: v for k, v in got.items() if v}
    expected = label_file_counts(her2st_root / "labels" / "A1_labeled_coordinates.tsv", a1.obs_names)
    print("A1 class counts:", got)
    assert got == expected
    assert sum(got.values()) == 346
    # README: 282 of 341 scored spots are invasive cancer, 5 undetermined
    assert got["invasive cancer"] == 282 and got["undetermined"] == 5
    assert int(a1.obs["label_scored"].sum()) == 341
    assert not a1.obs.loc[a1.obs["label"] == "undetermined", "label_scored"].any()
    # the counts are the file's: row totals of two spots, read independently
    raw = pd.read_csv(her2st_root / "counts" / "A1.tsv.gz", sep="\t", index_col=0, nrows=3)
    for key in raw.index:
        assert float(a1[key].X.sum()) == float(raw.loc[key].sum())
    # real signal: HER2 (ERBB2) is higher in invasive cancer than in adipose tissue (library-size normalised)
    lib = np.asarray(a1.X.sum(axis=1)).ravel()
    erbb2 = np.asarray(a1[:, "ERBB2"].X.todense()).ravel() / lib
    lab = a1.obs["label"].to_numpy()
    assert erbb2[lab == "invasive cancer"].mean() > 1.3 * erbb2[lab == "adipose tissue"].mean()


@pytest.mark.parametrize("section,n_spots,n_spots_only", [("B1", 295, 0), ("C1", 176, 1)])
def test_her2st_b1_c1(her2st_root, section, n_spots, n_spots_only):
    ad = read_her2st(her2st_root, section)
    assert ad.n_obs == n_spots
    assert_contract(ad, platform="legacy_st", grid="square")
    assert "image_path" not in ad.uns["senca"]
    assert ad.uns["senca"]["join"]["n_spots_only"] == n_spots_only
    got = {k: v for k, v in ad.obs["label"].value_counts().to_dict().items() if v}
    expected = label_file_counts(her2st_root / "labels" / f"{section}_labeled_coordinates.tsv", ad.obs_names)
    print(section, "class counts:", got)
    assert got == expected and sum(got.values()) == n_spots
    assert int(ad.obs["label_scored"].sum()) == n_spots - got.get("undetermined", 0)
    # full-resolution frame (no image): the grid pitch is ~290 px (README), so a spot is ~145 px
    assert 135 < ad.uns["senca"]["spot_diameter_px"] < 155


def test_her2st_b4_full_resolution_image(her2st_root):
    ad = read_her2st(her2st_root, "B4", image=her2st_root / "images" / "B4_HE.jpg")
    assert ad.n_obs == 283 and "label" not in ad.obs
    assert ad.uns["senca"]["patient_id"] == "B"  # same patient as B1
    xy = ad.obsm["spatial"]
    assert (xy >= 0).all() and (xy[:, 0] < 9272).all() and (xy[:, 1] < 9923).all()
    assert 135 < ad.uns["senca"]["spot_diameter_px"] < 155  # ~290 px pitch at full resolution


def test_her2st_a1_on_its_image(a1):
    s = a1.uns["senca"]
    assert Path(s["image_path"]).name == "A1_HE_dark_2000px.png"
    xy = a1.obsm["spatial"]
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] < 2000).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] < 2138).all()
    assert not ((xy[:, 0] > 1500) & (xy[:, 1] < 535)).any()  # the annotation thumbnail
    print("A1 spot_diameter_px:", s["spot_diameter_px"])
    assert abs(s["spot_diameter_px"] - 31) < 1.5
    assert s["scalefactors"]["image_scale"] == pytest.approx(A1_IMAGE_SCALE)
    # real signal: every spot centre lies on tissue (the background is blacked out); with x and y swapped
    # a third of them would land on black
    im = np.asarray(Image.open(s["image_path"]).convert("RGB")).astype(int)
    ij = np.rint(xy).astype(int)
    on_tissue = im[ij[:, 1], ij[:, 0]].sum(axis=1) > 30
    assert on_tissue.mean() == 1.0


def test_dlpfc_151673(dlpfc, dlpfc_root):
    assert dlpfc.shape == (3639, 5000)
    assert_contract(dlpfc, platform="visium", grid="hex")
    s = dlpfc.uns["senca"]
    assert s["slide_id"] == "151673" and Path(s["image_path"]).name == "tissue_lowres_image.png"
    assert s["scalefactors"]["image_scale"] == pytest.approx(0.045004502)
    assert s["spot_diameter_px"] == pytest.approx(96.40082438014726 * 0.045004502)
    assert s["join"] == {"n_counts_only": 0, "n_spots_only": 0}
    xy = dlpfc.obsm["spatial"]
    assert (xy >= 0).all() and (xy < 600).all()
    assert dlpfc.var_names[0].startswith("ENSG") and (dlpfc.var["gene_ids"] == dlpfc.var_names).all()
    counts = dlpfc.obs["label"].value_counts(dropna=False)
    print("DLPFC label counts:", counts.to_dict())
    assert set(dlpfc.obs["label"].cat.categories) == {f"Layer{i}" for i in range(1, 7)} | {"WM"}
    assert int(dlpfc.obs["label"].isna().sum()) == 28
    assert int((~dlpfc.obs["label_scored"]).sum()) == 28
    assert counts["Layer3"] == 989 and counts["WM"] == 513
    # real signal: the spots sit on tissue (darker than the slide background) in the lowres frame ...
    im = np.asarray(Image.open(s["image_path"]).convert("RGB")).astype(float).mean(axis=2)
    ij = np.rint(xy).astype(int)
    assert np.percentile(im[ij[:, 1], ij[:, 0]], 95) < 160 < np.median(im[:40, :40])
    # ... and the layer labels joined to the right barcodes: MBP (myelin) is far higher in white matter
    lib = np.asarray(dlpfc.X.sum(axis=1)).ravel()
    mbp = np.asarray(dlpfc[:, "ENSG00000197971"].X.todense()).ravel() / lib
    lab = dlpfc.obs["label"].to_numpy()
    assert mbp[lab == "WM"].mean() > 5 * mbp[np.isin(lab, ["Layer1", "Layer2", "Layer3"])].mean()


def test_dlpfc_mex_fallback_and_v2_positions(dlpfc, dlpfc_root, tmp_path):
    # the same folder without the h5 (MEX counts) and with Space Ranger v2 positions (header)
    folder = tmp_path / "151673"
    (folder / "spatial").mkdir(parents=True)
    (folder / "filtered_feature_bc_matrix").symlink_to(dlpfc_root / "filtered_feature_bc_matrix")
    for f in ("scalefactors_json.json", "tissue_lowres_image.png"):
        (folder / "spatial" / f).symlink_to(dlpfc_root / "spatial" / f)
    pos = pd.read_csv(dlpfc_root / "spatial" / "tissue_positions_list.csv", header=None,
                      names=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                             "pxl_col_in_fullres"])
    pos.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    ad = read_visium(folder, labels=dlpfc_root / "labels.tsv")
    assert ad.uns["senca"]["source_files"]["counts"].endswith("matrix.mtx.gz")
    assert list(ad.obs_names) == list(dlpfc.obs_names) and list(ad.var_names) == list(dlpfc.var_names)
    assert (ad.X != dlpfc.X).nnz == 0
    np.testing.assert_array_equal(ad.obsm["spatial"], dlpfc.obsm["spatial"])
    assert ad.obs["label"].equals(dlpfc.obs["label"])


def test_h5ad_round_trip(a1, dlpfc, tmp_path):
    for ad in (a1, dlpfc):
        out = tmp_path / f"{ad.uns['senca']['slide_id']}.h5ad"
        ad.write_h5ad(out)
        back = read_h5ad(out)
        assert (back.X != ad.X).nnz == 0 and back.X.dtype == np.float32 and sp.isspmatrix_csr(back.X)
        assert (back.layers["counts"] != ad.layers["counts"]).nnz == 0
        pd.testing.assert_frame_equal(back.obs, ad.obs)
        pd.testing.assert_frame_equal(back.var, ad.var)
        np.testing.assert_array_equal(back.obsm["spatial"], ad.obsm["spatial"])
        assert deep_equal(ad.uns["senca"], back.uns["senca"]), (ad.uns["senca"], back.uns["senca"])


def test_h5ad_foreign_fills_defaults(a1, dlpfc, tmp_path):
    # a foreign h5ad: normalised X, raw counts in layers["counts"], no uns["senca"]: grid and spot size guessed
    for ad, grid, diameter in ((a1, "square", a1.uns["senca"]["spot_diameter_px"]), (dlpfc, "hex", None)):
        f = ad.copy()
        del f.uns["senca"]
        f.X = f.X.multiply(1.0 / f.X.sum(axis=1)).tocsr()
        out = tmp_path / "foreign.h5ad"
        f.write_h5ad(out)
        back = read_h5ad(out, patient_id="P7")
        s = back.uns["senca"]
        assert s["slide_id"] == "foreign" and s["patient_id"] == "P7" and s["platform"] == "h5ad"
        assert s["grid"] == grid
        assert (back.X != ad.layers["counts"]).nnz == 0
        assert s["source_files"]["h5ad"].endswith("foreign.h5ad")
        if diameter is not None:
            assert s["spot_diameter_px"] == pytest.approx(diameter)
        else:  # Space Ranger sizes a Visium spot at ~0.65-0.7 of the pitch
            assert s["spot_diameter_px"] == pytest.approx(ad.uns["senca"]["spot_diameter_px"], rel=0.1)


# ------------------------------------------------------------------------------------------------ io.read
def test_read_dispatches_by_reader_name(tmp_path):
    from senca_core.io import read

    counts, spots = write_legacy(tmp_path)
    a = read(counts, reader="legacy_st", spots=spots, slide_id="S1", patient_id="P", labels=None)
    b = read_legacy_st(counts, spots, slide_id="S1", patient_id="P")
    assert (a.X != b.X).nnz == 0 and a.uns["senca"]["patient_id"] == "P" and list(a.obs_names) == list(b.obs_names)
    folder = write_visium(tmp_path / "vis")
    v = read(folder, reader="visium", slide_id="vis", image=None)
    assert v.n_obs == read_visium(folder).n_obs and v.uns["senca"]["platform"] == "visium"
    v.write_h5ad(tmp_path / "v.h5ad")
    h = read(tmp_path / "v.h5ad", reader="h5ad", slide_id="h")
    assert h.uns["senca"]["slide_id"] == "h" and h.n_obs == v.n_obs
    root = tmp_path / "her2st"
    (root / "counts").mkdir(parents=True)
    (root / "spots").mkdir()
    counts.rename(root / "counts" / "S1.tsv.gz")
    spots.rename(root / "spots" / "S1_selection.tsv")
    s = read(root, reader="her2st", section="S1")
    assert s.uns["senca"]["slide_id"] == "S1" and s.n_obs == a.n_obs


def test_read_infers_the_reader_from_the_path(tmp_path):
    from senca_core.io import infer_reader, read

    counts, spots = write_legacy(tmp_path)
    plain, _ = write_legacy(tmp_path, gz=False, name="S2")
    folder = write_visium(tmp_path / "vis")
    assert infer_reader(counts) == "legacy_st" and infer_reader(plain) == "legacy_st"
    assert infer_reader(folder) == "visium" and infer_reader(tmp_path / "x.h5ad") == "h5ad"
    assert read(counts, spots=spots).uns["senca"]["platform"] == "legacy_st"
    v = read(folder)
    assert v.uns["senca"]["platform"] == "visium" and v.uns["senca"]["slide_id"] == "vis"
    v.write_h5ad(tmp_path / "v.h5ad")
    assert read(tmp_path / "v.h5ad").n_obs == v.n_obs
    root = tmp_path / "her2st"
    (root / "counts").mkdir(parents=True)
    (root / "spots").mkdir()
    assert infer_reader(root) == "her2st"
    # the read of the plan's slide entry (jobs.preprocess.read_entry) is this dispatch
    from jobs.preprocess import read_entry

    e = read_entry({"reader": "legacy_st", "slide_id": "S1", "patient_id": "P", "counts": str(counts),
                    "spots": str(spots), "labels": None, "image": None, "image_scale": 1.0})
    assert e.uns["senca"]["slide_id"] == "S1" and e.n_obs == read(counts, spots=spots).n_obs


def test_read_refuses_unknown_or_ambiguous_readers(tmp_path):
    from senca_core.errors import ConfigError
    from senca_core.io import read

    counts, spots = write_legacy(tmp_path)
    with pytest.raises(ConfigError) as e:
        read(counts, reader="slideseq", spots=spots)
    assert e.value.field == "reader" and "unknown reader 'slideseq'" in str(e.value) and "legacy_st" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a folder that is neither Space Ranger nor HER2ST
        read(tmp_path)
    assert e.value.field == "reader" and "cannot tell the reader" in str(e.value)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="cannot tell the reader"):
        read(tmp_path / "x.csv")
    with pytest.raises(SlideError) as e:
        read(tmp_path / "nowhere")
    assert e.value.field == "path" and "nowhere" in str(e.value)
    with pytest.raises(ConfigError) as e:  # legacy ST counts without their spot file
        read(counts)
    assert e.value.field == "spots"
    with pytest.raises(ConfigError) as e:  # a keyword the reader does not take
        read(counts, spots=spots, section="S1")
    assert e.value.field == "section" and "legacy_st" in str(e.value)
