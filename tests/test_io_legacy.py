"""senca_core.io, legacy ST (HER2ST-style) tables: good files load as published, every bad-input case is one
SlideError naming slide, file and field, never a raw traceback. Bad inputs are generated in tmp_path from tiny
hand-made tables (or cut from the real files)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from senca_core.errors import SlideError
from senca_core.io import read_her2st, read_legacy_st

from _io_helpers import LEGACY_KEYS, assert_contract, assert_slide_error, write_legacy


def read_spoiled(tmp_path, index: int, row: str, **kwargs):
    """Read the tiny legacy slide with counts row ``index`` replaced by ``row`` (``{key}`` = that row's own key,
    ``{prev}`` = the previous row's); returns the SlideError's ExceptionInfo, the counts path and the spot keys."""
    keys = LEGACY_KEYS
    rows = [f"{k}\t1\t2\t3" for k in keys]
    rows[index] = row.format(key=keys[index], prev=keys[index - 1])
    counts, spots = write_legacy(tmp_path, counts_rows=rows)
    with pytest.raises(SlideError) as e:
        read_legacy_st(counts, spots, **kwargs)
    return e, counts, keys


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
    keys = LEGACY_KEYS
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
    keys = LEGACY_KEYS
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
    e, counts, keys = read_spoiled(tmp_path, 5, "{key}\t1\tabc\t3")
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
    e, counts, keys = read_spoiled(tmp_path, 4, f"{{key}}\t1\t2\t{value}", slide_id="S-bad")
    err = assert_slide_error(e, slide="S-bad", file=counts, field="counts", text=text)
    assert keys[4] in str(err) and "GENE_C" in str(err)


def test_bad_duplicate_keys(tmp_path):
    e, counts, keys = read_spoiled(tmp_path, 3, "{prev}\t1\t2\t3")
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
    keys = LEGACY_KEYS
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
