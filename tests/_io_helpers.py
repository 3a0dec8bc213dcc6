"""Helpers of the io tests (test_io, test_io_legacy, test_io_visium): slide-error checks and tiny hand-made slides."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from senca_core.errors import SlideError

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


def grid_keys(nx: int, ny: int) -> list[str]:
    """Legacy ST spot keys "{x}x{y}" of an nx × ny grid from (1, 1), row by row."""
    return [f"{x}x{y}" for y in range(1, ny + 1) for x in range(1, nx + 1)]


#: the spot keys of ``write_legacy``'s 4×4 grid, row by row
LEGACY_KEYS = tuple(grid_keys(4, 4))


def write_legacy(tmp: Path, *, counts_rows: list[str] | None = None, header: str | None = None,
                 spots: pd.DataFrame | None = None, gz: bool = True, name: str = "S1") -> tuple[Path, Path]:
    """A tiny legacy-ST slide: 4×4 grid, 3 genes; counts rows / header / spot table can be replaced."""
    if header is None:
        header = "\tGENE_A\tGENE_B\tGENE_C"
    if counts_rows is None:
        counts_rows = [f"{k}\t{i % 5 + 1}\t{i % 3}\t{i % 2}" for i, k in enumerate(LEGACY_KEYS)]
    text = "\n".join([header, *counts_rows]) + "\n"
    counts = tmp / (f"{name}.tsv.gz" if gz else f"{name}.tsv")
    if gz:
        with gzip.open(counts, "wt") as fh:
            fh.write(text)
    else:
        counts.write_text(text)
    if spots is None:
        xs = np.array([int(k.split("x")[0]) for k in LEGACY_KEYS])
        ys = np.array([int(k.split("x")[1]) for k in LEGACY_KEYS])
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
