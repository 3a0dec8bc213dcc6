"""Issue 16, class 2: inputs that used to give a silently wrong result (exit 0, status ok) are now refused with one
error naming slide, file and field, or read with a warning in ``uns["senca"]["warnings"]`` (which reaches the
console, ``cohort_summary.json`` and MLflow: see the last tests). The refused corpus cases (x/y swapped, all spots
on one pixel, a scale factor that is text) are in tests/bad_inputs/ and run by tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from PIL import Image

from senca_core import pp
from senca_core.errors import SlideError
from senca_core.io import read_legacy_st, read_visium, validate_counts

from _corpus import CORPUS
from _io_helpers import grid_keys
GENES = ["GENE_A", "GENE_B", "GENE_C"]


def _warnings(adata) -> list[str]:
    return [str(w) for w in np.ravel(adata.uns["senca"].get("warnings", []))]


def _legacy(tmp: Path, *, keys, counts=None, pixel=None, header=("x", "y")) -> tuple[Path, Path]:
    """A legacy ST slide: ``keys`` "{x}x{y}", counts rows (default small integers), pixel centres (default 20·x)."""
    counts = counts if counts is not None else [[i % 5 + 1, i % 3, i % 2 + 1] for i in range(len(keys))]
    c = tmp / "S1.tsv"
    c.write_text("\t" + "\t".join(GENES) + "\n" + "".join(
        f"{k}\t" + "\t".join(str(v) for v in row) + "\n" for k, row in zip(keys, counts)))
    rows = []
    for i, k in enumerate(keys):
        x, y = (int(v) for v in k.split("x"))
        px, py = pixel(x, y) if pixel else (x * 20.0, y * 20.0)
        rows.append(f"{x}\t{y}\t{px}\t{py}")
    s = tmp / "S1_spots.tsv"
    s.write_text(f"{header[0]}\t{header[1]}\tpixel_x\tpixel_y\n" + "\n".join(rows) + "\n")
    return c, s


# ---------------------------------------------------------------------------------------- 1. gene panel
def _slide(genes: list[str], sid: str, n: int = 30, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    a = AnnData(X=sp.csr_matrix(rng.poisson(2.0, (n, len(genes))).astype(np.float32)),
                var=pd.DataFrame(index=pd.Index(genes)))
    a.uns["senca"] = {"slide_id": sid}
    return a


def test_a_slide_with_one_gene_is_named_and_does_not_collapse_the_panel():
    panel = [f"g{i}" for i in range(400)]
    good = [_slide(panel, "A"), _slide(panel[:380], "B"), _slide(panel[10:], "C")]
    bad = _slide(["g5"], "ONE_GENE")
    assert pp.panel_outliers(good) == {}
    assert len(pp.common_genes(good)) == 370
    out = pp.panel_outliers(good + [bad])
    assert list(out) == ["ONE_GENE"] and "cover only 1 of the 400 genes" in out["ONE_GENE"]
    with pytest.raises(SlideError) as info:  # in a notebook: refused, naming the slide
        pp.common_genes(good + [bad])
    assert info.value.slide == "ONE_GENE" and info.value.field == "var_names"
    # two bad slides cannot shield each other (the reference is what most OTHER slides share)
    out = pp.panel_outliers(good + [bad, _slide(["g5", "g6"], "TWO_GENES")])
    assert set(out) == {"ONE_GENE", "TWO_GENES"}
    # a slide with a smaller but real panel is kept (100 of 400 genes: above max(50, 10 %))
    assert pp.panel_outliers(good + [_slide(panel[:100], "SMALL")]) == {}


def _prepared(tmp: Path, genes: list[str], sid: str, seed: int) -> str:
    from jobs.preprocess import prepare_slide

    a = _slide(genes, sid, n=60, seed=seed)
    a.obs_names = [f"{i % 10}x{i // 10}" for i in range(60)]
    a.obsm["spatial"] = np.array([[20.0 * (i % 10), 20.0 * (i // 10)] for i in range(60)])
    a.uns["senca"].update(grid="square", platform="synthetic")
    a.layers["counts"] = a.X.copy()
    prepare_slide(a, {"n_top_genes": 100, "min_cells": 1})
    path = tmp / f"{sid}.h5ad"
    a.write_h5ad(path)
    return str(path)


def test_cohort_panel_leaves_the_bad_slide_out_and_it_fails_alone(tmp_path, capsys):
    from jobs.preprocess import fit_shared_basis, load_state, project_slide, save_state

    panel = [f"g{i}" for i in range(200)]
    good = [_prepared(tmp_path, panel, "A", 1), _prepared(tmp_path, panel, "B", 2)]
    bad = _prepared(tmp_path, ["g3"], "BAD", 3)
    _, genes_alone = fit_shared_basis(good, n_comps=5)
    state, genes = fit_shared_basis(good + [bad], n_comps=5)
    assert genes == genes_alone and len(genes) == 200  # the good slides keep their panel
    err = capsys.readouterr().err
    assert "gene panel: 200 genes shared by 2 slide(s)" in err and "left out: slide 'BAD'" in err
    state_file = save_state(state, tmp_path / "state.npz")
    genes_file = tmp_path / "genes.npy"
    np.save(genes_file, np.asarray(genes, dtype=str))
    rows = {sid: project_slide({"slide_id": sid, "prepared_path": p, "state_file": str(state_file),
                                "genes_file": str(genes_file), "out_path": str(tmp_path / f"out_{sid}.h5ad")})
            for sid, p in (("A", good[0]), ("B", good[1]), ("BAD", bad))}
    assert rows["A"]["status"] == "ok" and rows["B"]["status"] == "ok"
    assert rows["BAD"]["status"] == "failed"
    assert "slide 'BAD'" in rows["BAD"]["error"] and "field 'var_names'" in rows["BAD"]["error"]
    assert "cover only 1 of the 200 genes" in rows["BAD"]["error"]
    assert load_state(state_file)["cohort_warnings"] == []


# ---------------------------------------------------------------------------------------- 7. n_pca clamped
def test_n_pca_clamped_is_said_in_every_slide(tmp_path, capsys):
    import anndata as ad
    from jobs.preprocess import fit_shared_basis, project_slide, save_state

    panel = [f"g{i}" for i in range(200)]
    paths = [_prepared(tmp_path, panel, "A", 1), _prepared(tmp_path, panel, "B", 2)]
    state, genes = fit_shared_basis(paths, n_comps=5000)
    used = int(state["n_comps"])
    assert used < 5000
    assert f"n_pca: 5000 asked but {used} principal components used" in capsys.readouterr().err
    state_file = save_state(state, tmp_path / "state.npz")
    np.save(tmp_path / "genes.npy", np.asarray(genes, dtype=str))
    row = project_slide({"slide_id": "A", "prepared_path": paths[0], "state_file": str(state_file),
                         "genes_file": str(tmp_path / "genes.npy"), "out_path": str(tmp_path / "out.h5ad")})
    assert row["status"] == "ok", row["error"]
    a = ad.read_h5ad(tmp_path / "out.h5ad")
    assert a.obsm["X_pca"].shape[1] == used
    assert any(f"5000 asked but {used}" in w for w in _warnings(a))


# ---------------------------------------------------------------------------------------- 2. x/y swapped
def test_xy_swapped_refused_and_partial_join_warned(tmp_path):
    keys = grid_keys(5, 4)
    counts, spots = _legacy(tmp_path, keys=keys)
    a = read_legacy_st(counts, spots, slide_id="S1")  # as written: fine, no warning
    assert a.n_obs == 20 and "warnings" not in a.uns["senca"]
    counts, spots = _legacy(tmp_path, keys=keys, header=("y", "x"))
    with pytest.raises(SlideError) as info:
        read_legacy_st(counts, spots, slide_id="S1")
    assert info.value.field == "x,y" and "look swapped" in str(info.value)
    assert "20 of 20 count rows" in str(info.value) and "only 16 as written" in str(info.value)
    # 12 of 20 count rows join: read, but said
    counts, spots = _legacy(tmp_path, keys=keys)
    lines = spots.read_text().splitlines()
    spots.write_text("\n".join(lines[:13]) + "\n")
    a = read_legacy_st(counts, spots, slide_id="S1")
    assert a.n_obs == 12
    assert any("8 of 20 count rows" in w and "have no spot row" in w for w in _warnings(a))


# ---------------------------------------------------------------------------------------- 3. image on background
def _tissue_image(path: Path) -> None:
    img = np.full((400, 400, 3), 245, dtype=np.uint8)  # glass
    yy, xx = np.mgrid[0:400, 0:400]
    tissue = (xx >= 100) & (xx < 320) & (yy >= 100) & (yy < 320)
    img[tissue] = (200, 120, 180)
    img[tissue & (((xx % 12) - 6) ** 2 + ((yy % 12) - 6) ** 2 < 10)] = (90, 50, 140)
    Image.fromarray(img).save(path)


@pytest.mark.parametrize("scale,expect", [(1.0, "ok"), (0.1, "refused")])
def test_image_scale_that_puts_spots_on_glass_is_refused(tmp_path, scale, expect):
    from senca_core import hist

    keys = grid_keys(4, 4)
    counts, spots = _legacy(tmp_path, keys=keys, pixel=lambda x, y: (100 + 40.0 * x, 100 + 40.0 * y))
    _tissue_image(tmp_path / "he.png")
    a = read_legacy_st(counts, spots, image=tmp_path / "he.png", image_scale=scale, slide_id="S1")
    if expect == "ok":
        hist.patch_features(a)
        assert a.obs["patch_tissue_fraction"].min() > 0.5 and "warnings" not in a.uns["senca"]
        return
    with pytest.raises(SlideError) as info:
        hist.patch_features(a)
    err = info.value
    assert err.slide == "S1" and err.field == "image_scale" and "he.png" in str(err)
    assert "16 of 16 spots (100%) fall on background" in str(err)


# ---------------------------------------------------------------------------------------- 4. scale factor as text
def _visium_copy(tmp: Path, scalefactors: dict) -> Path:
    root = tmp / "V1"
    shutil.copytree(CORPUS / "visium" / "V1", root)
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    img = np.full((300, 300, 3), (200, 120, 180), dtype=np.uint8)
    Image.fromarray(img).save(root / "spatial" / "tissue_lowres_image.png")
    return root


def test_visium_scale_factor_as_text_is_read_and_the_image_used(tmp_path):
    root = _visium_copy(tmp_path, {"spot_diameter_fullres": "40.0", "tissue_lowres_scalef": "0.5"})
    a = read_visium(root, slide_id="V1")
    assert a.uns["senca"]["image_path"].endswith("tissue_lowres_image.png")
    assert a.uns["senca"]["scalefactors"]["image_scale"] == 0.5
    assert a.uns["senca"]["spot_diameter_px"] == pytest.approx(20.0)
    assert a.obsm["spatial"].max() < 300


def test_visium_image_without_its_scale_factor_is_said(tmp_path):
    root = _visium_copy(tmp_path, {"spot_diameter_fullres": 40.0})
    a = read_visium(root, slide_id="V1")
    assert "image_path" not in a.uns["senca"]
    assert any("tissue_lowres_image.png is there" in w and "WITHOUT its image" in w for w in _warnings(a))


def test_visium_scale_factor_zero_is_refused(tmp_path):
    root = _visium_copy(tmp_path, {"spot_diameter_fullres": 40.0, "tissue_lowres_scalef": 0})
    with pytest.raises(SlideError) as info:
        read_visium(root, slide_id="V1")
    assert info.value.field == "tissue_lowres_scalef" and "positive" in str(info.value)


def test_spec_image_scale_as_text_is_a_number(tmp_path):
    from senca_platform.spec import load_spec

    (tmp_path / "c.yaml").write_text("name: x\npatients:\n  - id: P\n    slides:\n      - id: S1\n        reader: "
                                     "legacy_st\n        counts: a.tsv\n        spots: b.tsv\n        image_scale: "
                                     "\"0.3\"\n")
    assert load_spec(tmp_path / "c.yaml").patients[0].slides[0].image_scale == 0.3


# ---------------------------------------------------------------------------------------- 5. normalised counts
def test_normalised_floats_given_as_counts_are_warned(tmp_path):
    keys = grid_keys(4, 4)
    rng = np.random.default_rng(0)
    logs = np.round(np.log1p(rng.gamma(2.0, 2.0, (16, 3))), 4).tolist()
    a = read_legacy_st(*_legacy(tmp_path, keys=keys, counts=logs), slide_id="S1")
    [w] = _warnings(a)
    assert "are not whole numbers" in w and "not raw counts" in w
    validate_counts(a)  # validating again does not repeat it
    assert len(_warnings(a)) == 1
    ints = read_legacy_st(*_legacy(tmp_path, keys=keys), slide_id="S1")
    assert "warnings" not in ints.uns["senca"]


# ---------------------------------------------------------------------------------------- 6. positions
def test_shared_positions_refused_or_warned(tmp_path):
    keys = grid_keys(6, 6)
    at = {"1x1": (500.0, 500.0), "2x1": (500.0, 500.0)}  # 2 of 36 share one position: warned
    a = read_legacy_st(*_legacy(tmp_path, keys=keys, pixel=lambda x, y: at.get(f"{x}x{y}", (x * 20.0, y * 20.0))),
                       slide_id="S1")
    assert any("2 of 36 spots share their pixel position" in w for w in _warnings(a))
    with pytest.raises(SlideError) as info:  # a third of the spots on 2 pixels: refused
        read_legacy_st(*_legacy(tmp_path, keys=keys, pixel=lambda x, y: (x % 2 * 50.0, 0.0) if y <= 2
                                else (x * 20.0, y * 20.0)), slide_id="S1")
    assert info.value.field == "spatial" and "12 of 36 spots share" in str(info.value)
    assert "S1_spots.tsv" in str(info.value)


# ---------------------------------------------------------------------------------------- console + MLflow
def test_slide_warnings_become_mlflow_tags_next_to_errors():
    from senca_platform.tracking_log import slide_tags

    tags = slide_tags([{"slide": "A", "status": "ok", "warnings": ["image: 9 of 10 spots", "counts: 80 %"]},
                       {"slide": "B", "status": "ok", "warnings": []},
                       {"slide": "C", "status": "failed", "error": "slide 'C': field 'var_names': cover only 1"}])
    assert tags == {"senca.warning.A": "image: 9 of 10 spots\ncounts: 80 %",
                    "senca.error.C": "slide 'C': field 'var_names': cover only 1"}


def test_slides_sharing_almost_nothing_are_refused_together():
    a = _slide([f"a{i}" for i in range(300)] + ["x1", "x2"], "A")
    b = _slide([f"b{i}" for i in range(300)] + ["x1", "x2"], "B")
    with pytest.raises(SlideError) as info:
        pp.common_genes([a, b])
    assert "share only 2 gene(s)" in str(info.value) and info.value.slide == "A,B"
