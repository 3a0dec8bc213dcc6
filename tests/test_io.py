"""senca_core.io: the slide readers on the real HER2ST / DLPFC data, the h5ad round trip, and every bad-input
case (each must be a SlideError naming slide, file and field, never a raw traceback).

Bad inputs are generated in tmp_path from tiny hand-made tables (or cut from the real files)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from senca_core.errors import SlideError
from senca_core.io import read_h5ad, read_her2st, read_legacy_st, read_visium, validate_counts

A1_IMAGE_SCALE = 2000 / 6954


# ------------------------------------------------------------------------------------------------ helpers
def assert_slide_error(exc: pytest.ExceptionInfo, *, slide: str, file: str | Path, field: str | None = None,
                       text: str | None = None) -> SlideError:
    """The error is a SlideError whose message names the slide, the file (its name) and the field."""
    err = exc.value
    assert isinstance(err, SlideError)
    msg = str(err)
    assert err.slide == slide and f"slide {slide!r}" in msg, msg
    assert err.file is not None and Path(file).name in err.file and Path(file).name in msg, msg
    if field is not None:
        assert err.field == field and f"field {field!r}" in msg, msg
    if text is not None:
        assert text.lower() in msg.lower(), msg
    return err


def label_file_counts(path: Path, keys: pd.Index) -> dict[str, int]:
    """Class counts of a HER2ST label file, computed independently of the reader, over rows whose rounded
    key is one of ``keys``."""
    df = pd.read_csv(path, sep="\t")
    k = [f"{int(np.floor(x + 0.5))}x{int(np.floor(y + 0.5))}" for x, y in zip(df["x"], df["y"])]
    df = df[pd.Index(k).isin(keys)]
    return df["label"].value_counts().to_dict()


def write_legacy(tmp: Path, *, counts_rows: list[str] | None = None, header: str | None = None,
                 spots: pd.DataFrame | None = None, gz: bool = True, name: str = "S1") -> tuple[Path, Path]:
    """A tiny legacy-ST slide: 4×4 grid, 3 genes; counts rows / header / spot table can be replaced."""
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    if header is None:
        header = "\tGENE_A\tGENE_B\tGENE_C"
    if counts_rows is None:
        counts_rows = [f"{k}\t{i % 5 + 1}\t{i % 3}\t{i % 2}" for i, k in enumerate(keys)]
    text = "\n".join([header, *counts_rows]) + "\n"
    counts = tmp / (f"{name}.tsv.gz" if gz else f"{name}.tsv")
    if gz:
        with gzip.open(counts, "wt") as fh:
            fh.write(text)
    else:
        counts.write_text(text)
    if spots is None:
        xs = np.array([int(k.split("x")[0]) for k in keys])
        ys = np.array([int(k.split("x")[1]) for k in keys])
        spots = pd.DataFrame({"x": xs, "y": ys, "new_x": xs + 0.01, "new_y": ys - 0.01,
                              "pixel_x": xs * 200.0 + 7, "pixel_y": ys * 200.0 + 3, "selected": 1})
    spot_file = tmp / f"{name}_selection.tsv"
    spots.to_csv(spot_file, sep="\t", index=False)
    return counts, spot_file


def write_visium(folder: Path, *, n_side: int = 6, positions: str = "v1", barcodes: list[str] | None = None,
                 feature_names: list[str] | None = None, image: bool = True, drop_h5: list[str] = ()) -> Path:
    """A tiny Space Ranger folder: n_side² spots on a hex grid (all in tissue but the first), 4 genes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spatial").mkdir(exist_ok=True)
    n = n_side * n_side
    rows = np.repeat(np.arange(n_side), n_side)
    cols = 2 * np.tile(np.arange(n_side), n_side) + (rows % 2)
    bcs = barcodes or [f"AAAC{i:04d}-1" for i in range(n)]
    rng = np.random.default_rng(0)
    M = rng.poisson(3.0, size=(4, n)).astype(np.int32)  # genes × spots
    M[0, :] += 1  # no zero spots
    csc = sp.csc_matrix(M)
    ids = [f"ENSG{i:011d}" for i in range(4)]
    names = feature_names or ["GENE_A", "GENE_B", "GENE_C", "GENE_D"]
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        parts = {"barcodes": np.array(bcs, dtype="S"), "data": csc.data, "indices": csc.indices.astype(np.int64),
                 "indptr": csc.indptr.astype(np.int64), "shape": np.array(M.shape, dtype=np.int32)}
        for k, v in parts.items():
            if k not in drop_h5:
                g.create_dataset(k, data=v)
        fg = g.create_group("features")
        fg.create_dataset("id", data=np.array(ids, dtype="S"))
        fg.create_dataset("name", data=np.array(names, dtype="S"))
        fg.create_dataset("feature_type", data=np.array(["Gene Expression"] * 4, dtype="S"))
    pxl_row = 1000.0 + rows * 173.2
    pxl_col = 1000.0 + cols * 100.0
    pos = pd.DataFrame({"barcode": bcs, "in_tissue": [0] + [1] * (n - 1), "array_row": rows, "array_col": cols,
                        "pxl_row_in_fullres": pxl_row, "pxl_col_in_fullres": pxl_col})
    if positions == "v1":
        pos.to_csv(folder / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    else:
        pos.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    sf = {"spot_diameter_fullres": 130.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1,
          "fiducial_diameter_fullres": 190.0}
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    if image:
        Image.new("RGB", (300, 300), (200, 150, 180)).save(folder / "spatial" / "tissue_lowres_image.png")
    return folder


def deep_equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, list, tuple)):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def assert_contract(adata: anndata.AnnData, *, platform: str, grid: str) -> None:
    X = adata.X
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    assert (X != adata.layers["counts"]).nnz == 0
    assert adata.layers["counts"] is not X
    assert adata.obs_names.is_unique
    for col in ("array_row", "array_col"):
        assert adata.obs[col].dtype == np.int64
    sp_ = adata.obsm["spatial"]
    assert sp_.dtype == np.float64 and sp_.shape == (adata.n_obs, 2)
    s = adata.uns["senca"]
    assert s["platform"] == platform and s["grid"] == grid
    for key in ("slide_id", "patient_id", "spot_diameter_px", "scalefactors", "source_files"):
        assert key in s
    assert all(v is not None for v in s.values())
    assert all(isinstance(v, str) for v in s["source_files"].values())


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


# ------------------------------------------------------------------------------------------------ legacy ST: good
def test_legacy_tiny_slide(tmp_path):
    counts, spots = write_legacy(tmp_path, gz=False)
    ad = read_legacy_st(counts, spots, slide_id="T1", patient_id="P1", image_scale=0.5)
    assert ad.shape == (16, 3)
    assert_contract(ad, platform="legacy_st", grid="square")
    assert ad.obs.loc["3x2", "array_col"] == 3 and ad.obs.loc["3x2", "array_row"] == 2
    np.testing.assert_allclose(ad.obsm["spatial"][list(ad.obs_names).index("3x2")], [(600 + 7) / 2, (400 + 3) / 2])
    assert ad.uns["senca"]["spot_diameter_px"] == pytest.approx(50.0)
    assert "label" not in ad.obs and "image_path" not in ad.uns["senca"]


def test_legacy_partial_join_and_plain_text_named_gz(tmp_path):
    # a plain-text counts file named .tsv.gz is read (compression is sniffed); one extra count row and one
    # extra spot row are dropped and counted
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    rows = [f"{k}\t1\t2\t3" for k in keys[:15]] + ["9x9\t1\t1\t1"]
    counts, spots = write_legacy(tmp_path, counts_rows=rows, gz=False, name="P")
    named_gz = tmp_path / "P2.tsv.gz"
    shutil.copy(counts, named_gz)
    ad = read_legacy_st(named_gz, spots)
    assert ad.uns["senca"]["slide_id"] == "P2" and ad.uns["senca"]["patient_id"] == "P2"
    assert ad.n_obs == 15
    assert ad.uns["senca"]["join"] == {"n_counts_only": 1, "n_spots_only": 1, "n_unselected": 0}


def test_legacy_duplicate_genes_made_unique_and_unselected(tmp_path):
    spots = pd.DataFrame({"x": [1, 2, 3, 1], "y": [1, 1, 1, 2], "pixel_x": [10.0, 20, 30, 10],
                          "pixel_y": [10.0, 10, 10, 20], "selected": [1, 1, 1, 0]})
    rows = ["1x1\t1\t2\t3", "2x1\t1\t0\t3", "3x1\t4\t2\t0", "1x2\t1\t1\t1"]
    counts, spot_file = write_legacy(tmp_path, header="\tTP53\tTP53\tMYC", counts_rows=rows, spots=spots)
    ad = read_legacy_st(counts, spot_file)
    assert list(ad.var_names) == ["TP53", "TP53-1", "MYC"]
    assert ad.n_obs == 3 and ad.uns["senca"]["join"]["n_unselected"] == 1


def test_legacy_some_zero_spots_dropped(tmp_path):
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    rows = [f"{k}\t0\t0\t0" if i in (2, 7) else f"{k}\t1\t2\t3" for i, k in enumerate(keys)]
    counts, spots = write_legacy(tmp_path, counts_rows=rows)
    ad = read_legacy_st(counts, spots)
    assert ad.n_obs == 14 and ad.uns["senca"]["n_zero_spots_dropped"] == 2
    assert keys[2] not in ad.obs_names and ad.layers["counts"].shape == (14, 3)


def test_legacy_labels_fractional_keys_and_unscored(tmp_path):
    counts, spots = write_legacy(tmp_path)
    lab = pd.DataFrame({"Row.names": ["a", "b", "c", "d"], "x": [1.02, 2.49, 3.51, 9.0], "y": [0.98, 1.0, 1.0, 9.0],
                        "pixel_x": 0, "pixel_y": 0, "label": ["tumour", "undetermined", "stroma", "tumour"]})
    lab_file = tmp_path / "lab.tsv"
    lab.to_csv(lab_file, sep="\t", index=False)
    ad = read_legacy_st(counts, spots, labels=lab_file)
    assert ad.obs.loc["1x1", "label"] == "tumour" and ad.obs.loc["1x1", "label_scored"]
    assert ad.obs.loc["2x1", "label"] == "undetermined" and not ad.obs.loc["2x1", "label_scored"]
    assert ad.obs.loc["4x1", "label"] == "stroma"
    assert pd.isna(ad.obs.loc["1x2", "label"]) and not ad.obs.loc["1x2", "label_scored"]
    assert ad.uns["senca"]["labels_join"] == {"n_labels_only": 1, "n_unlabelled": 13, "n_no_coordinates": 0,
                                              "n_ambiguous": 0}
    assert ad.uns["senca"]["warnings"] == [f"labels: 1 of 4 labelled spots of {lab_file} are not spots of this "
                                           "slide: skipped"]


# ------------------------------------------------------------------------------------------------ legacy ST: bad
def test_bad_missing_files(tmp_path):
    counts, spots = write_legacy(tmp_path)
    with pytest.raises(SlideError) as e:
        read_legacy_st(tmp_path / "nope.tsv.gz", spots)
    assert_slide_error(e, slide="nope", file="nope.tsv.gz", field="counts", text="not found")
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, tmp_path / "nospots.tsv")
    assert_slide_error(e, slide="S1", file="nospots.tsv", field="spots", text="not found")
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots, labels=tmp_path / "nolabels.tsv")
    assert_slide_error(e, slide="S1", file="nolabels.tsv", field="labels", text="not found")
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots, image=tmp_path / "noimage.png")
    assert_slide_error(e, slide="S1", file="noimage.png", field="image", text="not found")
    with pytest.raises(SlideError) as e:
        read_her2st(tmp_path, "Z9")
    assert_slide_error(e, slide="Z9", file="Z9.tsv.gz", field="counts", text="not found")


def test_bad_truncated_gzip(her2st_root, tmp_path):
    data = (her2st_root / "counts" / "A1.tsv.gz").read_bytes()
    bad = tmp_path / "A1.tsv.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as e:
        read_legacy_st(bad, her2st_root / "spots" / "A1_selection.tsv")
    assert_slide_error(e, slide="A1", file="A1.tsv.gz", field="counts", text="truncated")


def test_bad_garbage_bytes(tmp_path):
    counts, spots = write_legacy(tmp_path)
    spots.write_bytes(b"x\ty\n\xff\xfe\x00\x81\x82\n")
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots.name, field="spots")
    corrupt = tmp_path / "C.tsv.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"\x00garbage" * 20)
    with pytest.raises(SlideError) as e:
        read_legacy_st(corrupt, spots)
    assert_slide_error(e, slide="C", file="C.tsv.gz")


def test_bad_non_numeric_count(tmp_path):
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    rows = [f"{k}\t1\t2\t3" for k in keys]
    rows[5] = f"{keys[5]}\t1\tabc\t3"
    counts, spots = write_legacy(tmp_path, counts_rows=rows)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    err = assert_slide_error(e, slide="S1", file=counts, field="counts", text="non-numeric")
    assert "'abc'" in str(err) and keys[5] in str(err) and "GENE_B" in str(err)


@pytest.mark.parametrize("column", ["x", "y", "pixel_x", "pixel_y"])
def test_bad_spot_file_missing_column(tmp_path, column):
    counts, spots = write_legacy(tmp_path)
    df = pd.read_csv(spots, sep="\t").drop(columns=[column])
    df.to_csv(spots, sep="\t", index=False)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots, field=column, text=f"missing column {column!r}")


def test_bad_spot_file_values(tmp_path):
    counts, spots = write_legacy(tmp_path)
    df = pd.read_csv(spots, sep="\t")
    df.loc[3, "pixel_y"] = "n/a"
    df.to_csv(spots, sep="\t", index=False)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots, field="pixel_y", text="'n/a'")
    df = pd.read_csv(write_legacy(tmp_path)[1], sep="\t")
    df.loc[3, "x"] = 2.5
    df.to_csv(spots, sep="\t", index=False)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots, field="x", text="whole number")


def test_bad_counts_spot_mismatch(tmp_path):
    counts, spots = write_legacy(tmp_path)
    df = pd.read_csv(spots, sep="\t")
    df["x"] += 10  # the spot file of another section
    df.to_csv(spots, sep="\t", index=False)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots, field="x,y", text="counts/spot-file mismatch")
    df["x"] -= 10
    df.iloc[:9].to_csv(spots, sep="\t", index=False)  # 9 of 16 count rows join: still fine
    assert read_legacy_st(counts, spots).n_obs == 9
    df.iloc[:7].to_csv(spots, sep="\t", index=False)  # 7 of 16: fewer than half
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots, text="only 7 of 16")


@pytest.mark.parametrize("value,text", [("", "NaN"), ("nan", "NaN"), ("inf", "NaN/infinite"), ("-2", "negative")])
def test_bad_nan_inf_negative_counts(tmp_path, value, text):
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    rows = [f"{k}\t1\t2\t3" for k in keys]
    rows[4] = f"{keys[4]}\t1\t2\t{value}"
    counts, spots = write_legacy(tmp_path, counts_rows=rows)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots, slide_id="S-bad")
    err = assert_slide_error(e, slide="S-bad", file=counts, field="counts", text=text)
    assert keys[4] in str(err) and "GENE_C" in str(err)


def test_bad_duplicate_keys(tmp_path):
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    rows = [f"{k}\t1\t2\t3" for k in keys]
    rows[3] = f"{keys[2]}\t1\t2\t3"
    counts, spots = write_legacy(tmp_path, counts_rows=rows)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="spot key", text=f"duplicate spot key(s), first {keys[2]!r}")
    # in the spot file
    counts, spots = write_legacy(tmp_path)
    df = pd.read_csv(spots, sep="\t")
    pd.concat([df, df.iloc[[5]]]).to_csv(spots, sep="\t", index=False)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=spots, field="x,y", text="duplicate")
    # label rows rounding to the same spot: only the counts and spots are strict. Rows repeating the spot's label
    # are merged; rows giving it two labels are skipped (the spot is unlabelled), counted and said
    counts, spots = write_legacy(tmp_path)
    lab = tmp_path / "lab.tsv"
    pd.DataFrame({"x": [1.1, 0.9, 2.0, 2.1], "y": [1.0, 1.2, 1.0, 0.9], "label": ["a", "b", "c", "c"]}).to_csv(
        lab, sep="\t", index=False)
    ad = read_legacy_st(counts, spots, labels=lab)
    assert pd.isna(ad.obs.loc["1x1", "label"]) and ad.obs.loc["2x1", "label"] == "c"
    assert ad.uns["senca"]["labels_join"]["n_ambiguous"] == 2
    assert ad.uns["senca"]["warnings"] == [f"labels: 2 row(s) of {lab} give one spot different labels: skipped "
                                           "(those spots are unlabelled)"]


def test_bad_counts_shape_and_names(tmp_path):
    counts, spots = write_legacy(tmp_path, counts_rows=[])  # header only
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="counts", text="empty count matrix")
    counts, spots = write_legacy(tmp_path, counts_rows=["1x1\t1\t2\t3", "spot7\t1\t1\t1"])
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="row names", text="'spot7'")
    counts, spots = write_legacy(tmp_path, counts_rows=["1x1\t1\t2\t3", "2x1\t1\t1\t1\t5\t6"])
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="counts", text="malformed table")
    counts, spots = write_legacy(tmp_path, header="\tA\tB", counts_rows=["1x1\t1\t2\t3"] * 1)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="header")
    empty = tmp_path / "E.tsv"
    empty.write_text("")
    with pytest.raises(SlideError) as e:
        read_legacy_st(empty, spots)
    assert_slide_error(e, slide="E", file=empty, field="header", text="empty")


def test_bad_all_zero_spots(tmp_path):
    keys = [f"{x}x{y}" for y in range(1, 5) for x in range(1, 5)]
    counts, spots = write_legacy(tmp_path, counts_rows=[f"{k}\t0\t0\t0" for k in keys])
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="counts", text="all 16 spots have zero counts")


def test_bad_image(her2st_root, tmp_path):
    root = her2st_root
    with pytest.raises(SlideError) as e:  # the full-resolution coordinates on the 2000 px image
        read_her2st(root, "A1", image=root / "images" / "A1_HE_dark_2000px.png", image_scale=1.0)
    assert_slide_error(e, slide="A1", file="A1_HE_dark_2000px.png", field="image_scale", text="outside")
    counts, spots = write_legacy(tmp_path)
    not_png = tmp_path / "slide.png"
    not_png.write_text("this is not an image")
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots, image=not_png)
    assert_slide_error(e, slide="S1", file=not_png, field="image", text="unreadable image")
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots, image_scale=-1)
    assert e.value.field == "image_scale" and e.value.slide == "S1" and "positive" in str(e.value)


# ------------------------------------------------------------------------------------------------ Visium
def test_visium_tiny_v1_v2_and_images(tmp_path):
    a = read_visium(write_visium(tmp_path / "v1"))
    b = read_visium(write_visium(tmp_path / "v2", positions="v2"))
    assert a.n_obs == 35 and a.uns["senca"]["join"] == {"n_counts_only": 1, "n_spots_only": 0}
    assert_contract(a, platform="visium", grid="hex")
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    # lowres is the only image: x = pxl_col × 0.1, y = pxl_row × 0.1
    i = list(a.obs_names).index("AAAC0007-1")
    np.testing.assert_allclose(a.obsm["spatial"][i], [(1000 + 3 * 100) * 0.1, (1000 + 173.2) * 0.1])
    assert a.uns["senca"]["spot_diameter_px"] == pytest.approx(13.0)
    # hires present: preferred
    Image.new("RGB", (1500, 1500)).save(tmp_path / "v1" / "spatial" / "tissue_hires_image.png")
    h = read_visium(tmp_path / "v1")
    assert h.uns["senca"]["scalefactors"]["image_scale"] == 0.5 and h.uns["senca"]["spot_diameter_px"] == 65.0
    # an explicit full-resolution image wins (scale 1)
    full = tmp_path / "full.png"
    Image.new("RGB", (3000, 3000)).save(full)
    f = read_visium(tmp_path / "v1", image=full)
    assert f.uns["senca"]["image_path"] == str(full.resolve())
    np.testing.assert_allclose(f.obsm["spatial"][i], [1300.0, 1173.2])
    # explicitly the folder's lowres image: its scale factor
    lo = read_visium(tmp_path / "v1", image=tmp_path / "v1" / "spatial" / "tissue_lowres_image.png")
    np.testing.assert_allclose(lo.obsm["spatial"], a.obsm["spatial"])
    # no image at all: full-resolution frame, no image_path
    n = read_visium(write_visium(tmp_path / "noimg", image=False))
    assert "image_path" not in n.uns["senca"] and n.uns["senca"]["scalefactors"]["image_scale"] == 1.0


def test_visium_duplicate_feature_names_and_labels(tmp_path):
    folder = write_visium(tmp_path / "v", feature_names=["X", "X", "Y", "Z"])
    lab = tmp_path / "labels.tsv"
    lab.write_text("barcode\tlayer\nAAAC0001-1\tL1\nAAAC0002-1\tNA\nZZZZ-1\tL2\n")
    ad = read_visium(folder, labels=lab, slide_id="vis", patient_id="p")
    assert list(ad.var_names) == ["X", "X-1", "Y", "Z"] and ad.var["gene_ids"].iloc[1] == "ENSG00000000001"
    assert ad.obs.loc["AAAC0001-1", "label"] == "L1" and ad.obs.loc["AAAC0001-1", "label_scored"]
    assert pd.isna(ad.obs.loc["AAAC0002-1", "label"]) and not ad.obs.loc["AAAC0002-1", "label_scored"]
    assert ad.uns["senca"]["labels_join"] == {"n_labels_only": 1, "n_unlabelled": 33}
    assert ad.uns["senca"]["warnings"] == [f"labels: 1 of 3 labelled spots of {lab} are not spots of this slide: "
                                           "skipped"]
    assert ad.uns["senca"]["slide_id"] == "vis" and ad.uns["senca"]["patient_id"] == "p"


def test_visium_bad_h5(tmp_path):
    folder = write_visium(tmp_path / "s1")
    h5 = folder / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s1", file=h5, field="matrix", text="cannot read the 10x HDF5 matrix")
    folder = write_visium(tmp_path / "s2", drop_h5=["data"])
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s2", file="filtered_feature_bc_matrix.h5", field="matrix", text="data")
    folder = write_visium(tmp_path / "s3", barcodes=["AAAC-1"] * 36)
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s3", file="filtered_feature_bc_matrix.h5", field="barcode", text="duplicate")


def test_visium_bad_positions_and_scalefactors(tmp_path):
    folder = write_visium(tmp_path / "s1", positions="v2")
    pos = folder / "spatial" / "tissue_positions.csv"
    pd.read_csv(pos).drop(columns=["pxl_col_in_fullres"]).to_csv(pos, index=False)
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s1", file=pos, field="pxl_col_in_fullres", text="missing column")
    pos.unlink()
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s1", file="tissue_positions.csv", field="positions", text="no spot positions")
    folder = write_visium(tmp_path / "s2")
    (folder / "spatial" / "scalefactors_json.json").write_text("{not json")
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s2", file="scalefactors_json.json", field="scalefactors", text="JSON")
    (folder / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s2", file="scalefactors_json.json", text="not found")
    # positions of another slide: no barcode in common
    folder = write_visium(tmp_path / "s3")
    p1 = folder / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(p1, header=None)
    df[0] = "GGGG" + df[0]
    df.to_csv(p1, header=False, index=False)
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s3", file=p1, field="barcode", text="counts/spot-file mismatch")
    with pytest.raises(SlideError) as e:
        read_visium(tmp_path / "absent")
    assert_slide_error(e, slide="absent", file="absent", field="path", text="not found")
    # an explicit "full-resolution" image that is really a thumbnail: the spots fall off it
    folder = write_visium(tmp_path / "s4")
    thumb = tmp_path / "thumb.png"
    Image.new("RGB", (100, 100)).save(thumb)
    with pytest.raises(SlideError) as e:
        read_visium(folder, image=thumb)
    assert_slide_error(e, slide="s4", file=thumb, field="image", text="outside")


def test_visium_no_counts(tmp_path):
    folder = write_visium(tmp_path / "s1")
    (folder / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s1", file="filtered_feature_bc_matrix.h5", field="counts", text="no counts")


# ------------------------------------------------------------------------------------------------ h5ad: bad
def test_h5ad_bad(tmp_path):
    ad = anndata.AnnData(X=sp.csr_matrix(np.ones((3, 2), dtype=np.float32)))
    out = tmp_path / "nospatial.h5ad"
    ad.write_h5ad(out)
    with pytest.raises(SlideError) as e:
        read_h5ad(out)
    assert_slide_error(e, slide="nospatial", file=out, field="obsm['spatial']", text="missing")
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(SlideError) as e:
        read_h5ad(garbage, slide_id="G")
    assert_slide_error(e, slide="G", file=garbage, field="h5ad", text="cannot read")
    with pytest.raises(SlideError) as e:
        read_h5ad(tmp_path / "missing.h5ad")
    assert_slide_error(e, slide="missing", file="missing.h5ad", text="not found")
    ad.obsm["spatial"] = np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 3.0]])
    ad.write_h5ad(out)
    with pytest.raises(SlideError) as e:
        read_h5ad(out)
    assert_slide_error(e, slide="nospatial", file=out, field="obsm['spatial']", text="NaN")


# ------------------------------------------------------------------------------------------------ validate_counts
def _ad(X, names=("s1", "s2", "s3")) -> anndata.AnnData:
    ad = anndata.AnnData(X=X)
    ad.obs_names = list(names)
    ad.var_names = [f"g{i}" for i in range(ad.n_vars)]
    ad.uns["senca"] = {"slide_id": "V", "platform": "visium", "source_files": {"counts": "/x/m.h5"}}
    return ad


def test_validate_counts_direct():
    good = _ad(sp.csr_matrix(np.array([[1, 0], [0, 2], [0, 0]], dtype=np.float32)))
    out = validate_counts(good)
    assert out.n_obs == 2 and out.uns["senca"]["n_zero_spots_dropped"] == 1
    assert validate_counts(out) is out and out.uns["senca"]["n_zero_spots_dropped"] == 1  # idempotent
    cases = [
        (_ad(np.array([[1, np.inf], [0, 2], [1, 1]], dtype=np.float32)), "counts", "NaN/infinite"),
        (_ad(np.array([[1, 1], [0, -2], [1, 1]], dtype=np.float64)), "counts", "negative"),
        (_ad(np.array([[1, 1], [0, 2], [1, 1]], dtype=np.float32), names=("a", "b", "a")), "barcode", "'a'"),
        (_ad(np.zeros((3, 2), dtype=np.float32)), "counts", "all 3 spots have zero counts"),
        (_ad(np.array([["1", "x"], ["0", "2"], ["1", "1"]], dtype=object)), "counts", "non-numeric"),
        (_ad(np.zeros((0, 2), dtype=np.float32), names=()), "counts", "empty count matrix"),
    ]
    for ad, field, text in cases:
        with pytest.raises(SlideError) as e:
            validate_counts(ad)
        assert_slide_error(e, slide="V", file="m.h5", field=field, text=text)
    # explicit slide / file override the uns defaults
    with pytest.raises(SlideError) as e:
        validate_counts(cases[0][0], slide="other", file="/y/c.tsv.gz")
    assert_slide_error(e, slide="other", file="c.tsv.gz", field="counts")


# ------------------------------------------------------------------------------------------------ found by fuzzing
def test_visium_h5_with_out_of_range_indices(tmp_path):
    """A 10x .h5 whose sparse indices point past the genes: named at the file, not a scipy error later."""
    folder = write_visium(tmp_path / "s1")
    h5 = folder / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r+") as f:
        idx = f["matrix/indices"][:]
        idx[3] = 1 << 40
        f["matrix/indices"][...] = idx
    with pytest.raises(SlideError) as e:
        read_visium(folder)
    assert_slide_error(e, slide="s1", file=h5, field="matrix", text="corrupt sparse matrix")


def test_validate_counts_corrupt_sparse_and_complex():
    bad = sp.csr_matrix(np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32))
    bad.indices[0] = 7  # past the 2 genes
    with pytest.raises(SlideError) as e:
        validate_counts(_ad(bad))
    assert_slide_error(e, slide="V", file="m.h5", field="counts", text="corrupt sparse count matrix")
    with pytest.raises(SlideError) as e:
        validate_counts(_ad(np.ones((3, 2), dtype=np.complex64)))
    assert_slide_error(e, slide="V", file="m.h5", field="counts", text="complex-valued")


@pytest.mark.parametrize("key,value,text", [
    ("patient_id", [1, 2], "must be a string"),
    ("grid", "triangle", "must be one of"),
    ("spot_diameter_px", "big", "positive number"),
    ("spot_diameter_px", -3.0, "positive number"),
    ("source_files", ["a"], "must be a mapping"),
    ("n_zero_spots_dropped", "abc", "non-negative integer"),
])
def test_h5ad_stored_senca_of_the_wrong_type(tmp_path, key, value, text):
    ad = anndata.AnnData(X=sp.csr_matrix(np.arange(1, 13, dtype=np.float32).reshape(4, 3)))
    ad.obsm["spatial"] = np.arange(8, dtype=np.float64).reshape(4, 2) * 100
    ad.uns["senca"] = {key: value}
    out = tmp_path / "typed.h5ad"
    ad.write_h5ad(out)
    with pytest.raises(SlideError) as e:
        read_h5ad(out, slide_id="H")
    assert_slide_error(e, slide="H", file=out, field=f"uns['senca']['{key}']", text=text)


def test_broken_tiff_is_one_error_without_log_noise(tmp_path, caplog):
    tif = tmp_path / "broken.tif"
    tif.write_bytes(b"II*\x00" + (0x7FFF0000).to_bytes(4, "little") + bytes(56))
    counts, spots = write_legacy(tmp_path)
    with caplog.at_level("DEBUG"):
        with pytest.raises(SlideError) as e:
            read_legacy_st(counts, spots, image=tif)
    assert_slide_error(e, slide="S1", file=tif, field="image", text="unreadable image")
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_header_only_counts_names_the_gene_count(tmp_path):
    counts, spots = write_legacy(tmp_path, counts_rows=[])
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots)
    assert_slide_error(e, slide="S1", file=counts, field="counts", text="0 spots × 3 genes")


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
