"""senca_core.io, Visium folders, h5ad files and ``validate_counts``: good files load, every bad input is one
SlideError naming slide, file and field (including the cases found by fuzzing)."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from senca_core.errors import SlideError
from senca_core.io import read_h5ad, read_legacy_st, read_visium, validate_counts

from _io_helpers import assert_contract, assert_slide_error, write_legacy, write_visium


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
