"""Visium and HDF5 cases of the corpus: the good Space Ranger folder V1 (MEX counts, v1/v2 positions, scale
factors), its 10x HDF5 matrix, and the broken copies (``visium/``: read_visium cases; ``h5/``: read_h5ad)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

from corpus_legacy import GENES
from corpus_registry import case


V_BARCODES = [f"AAACGT{i:02d}-1" for i in range(16)]


def visium_files(*, positions: str = "v1", drop_col: str | None = None, replace: tuple[int, str, str] | None = None,
                 barcode_prefix: str = "", duplicate_barcode: bool = False, negative: bool = False,
                 mtx_header: str | None = None, scalefactors: bytes | None = None) -> dict[str, bytes]:
    """The files of a tiny Space Ranger folder (MEX counts, positions, scale factors), with one change."""
    rows = [i // 4 for i in range(16)]
    cols = [2 * (i % 4) + (r % 2) for i, r in enumerate(rows)]
    pos_rows = []
    for i, bc in enumerate(V_BARCODES):
        row = {"barcode": barcode_prefix + bc, "in_tissue": "1", "array_row": str(rows[i]),
               "array_col": str(cols[i]), "pxl_row_in_fullres": f"{100 + rows[i] * 86.6:.1f}",
               "pxl_col_in_fullres": f"{100 + cols[i] * 50.0:.1f}"}
        if replace is not None and replace[0] == i:
            row[replace[1]] = replace[2]
        pos_rows.append(row)
    if duplicate_barcode:
        pos_rows[1]["barcode"] = pos_rows[0]["barcode"]
    head = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    keep = [c for c in head if c != drop_col]
    lines = ([",".join(keep)] if positions == "v2" else []) + [",".join(r[c] for c in keep) for r in pos_rows]
    pos_name = "tissue_positions.csv" if positions == "v2" else "tissue_positions_list.csv"
    entries = []
    for j in range(16):  # genes × spots, 1-based
        for g in range(3):
            v = (j + g) % 4 + (1 if g == 0 else 0)
            if v:
                entries.append((g + 1, j + 1, v))
    if negative:
        g, j, _ = entries[4]
        entries[4] = (g, j, -2)
    mtx = ["%%MatrixMarket matrix coordinate integer general", "%"]
    mtx.append(mtx_header if mtx_header is not None else f"3 16 {len(entries)}")
    mtx += [f"{g} {j} {v}" for g, j, v in entries]
    feats = [f"ENSG0000000000{g}\tGENE_{'ABC'[g]}\tGene Expression" for g in range(3)]
    sf = scalefactors if scalefactors is not None else json.dumps(
        {"spot_diameter_fullres": 40.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}).encode()
    return {
        "filtered_feature_bc_matrix/matrix.mtx": ("\n".join(mtx) + "\n").encode(),
        "filtered_feature_bc_matrix/features.tsv": ("\n".join(feats) + "\n").encode(),
        "filtered_feature_bc_matrix/barcodes.tsv": ("\n".join(V_BARCODES) + "\n").encode(),
        f"spatial/{pos_name}": ("\n".join(lines) + "\n").encode(),
        "spatial/scalefactors_json.json": sf,
    }


def visium_10x_h5() -> bytes:
    """A valid 10x HDF5 matrix (v3 schema) of the good Visium slide (16 spots, 3 genes)."""
    import h5py
    import numpy as np

    buf = io.BytesIO()
    with h5py.File(buf, "w", track_order=False) as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(V_BARCODES, dtype="S"))
        g.create_dataset("data", data=np.arange(1, 33, dtype=np.int32))
        g.create_dataset("indices", data=np.tile(np.arange(2), 16).astype(np.int64))
        g.create_dataset("indptr", data=np.arange(0, 33, 2, dtype=np.int64))
        g.create_dataset("shape", data=np.array([3, 16], dtype=np.int32))
        fg = g.create_group("features")
        fg.create_dataset("id", data=np.array([f"ENSG{i}" for i in range(3)], dtype="S"))
        fg.create_dataset("name", data=np.array(GENES, dtype="S"))
        fg.create_dataset("feature_type", data=np.array(["Gene Expression"] * 3, dtype="S"))
    return buf.getvalue()


def truncated_10x_h5() -> bytes:
    """``visium_10x_h5`` cut to its first 2 KB."""
    return visium_10x_h5()[:2048]


def truncated_h5ad() -> bytes:
    """The first 2 KB of an .h5ad of the good slide (the HDF5 superblock is there, the data is not)."""
    import anndata
    import numpy as np
    import scipy.sparse as sp

    ad = anndata.AnnData(X=sp.csr_matrix(np.ones((4, 3), dtype=np.float32)))
    ad.obsm["spatial"] = np.arange(8, dtype=np.float64).reshape(4, 2)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.h5ad"
        ad.write_h5ad(p)
        return p.read_bytes()[:2048]


def build_visium_cases() -> None:
    """Register the Visium cases and the truncated .h5ad case."""
    def visium(id, doc, folder, *, file, field, text, files=None, **kwargs):
        case(id, "read_visium", doc, args={"path": f"visium/{folder}", "slide_id": "V1", **kwargs}, slide="V1",
             file=file, field=field, text=text,
             files={f"visium/{folder}/{k}": v for k, v in (files or {}).items()})

    visium("visium_missing_folder", "the Space Ranger folder does not exist", "absent", file="absent",
           field="path", text="not found")
    visium("visium_positions_missing_column", "positions (v2, header) without pxl_col_in_fullres",
           "positions_missing_column", file="tissue_positions.csv", field="pxl_col_in_fullres",
           text="missing column", files=visium_files(positions="v2", drop_col="pxl_col_in_fullres"))
    visium("visium_positions_non_numeric", "an array_row value 'x7'", "positions_non_numeric",
           file="tissue_positions_list.csv", field="array_row", text="'x7'",
           files=visium_files(replace=(3, "array_row", "x7")))
    visium("visium_positions_duplicate", "two position rows for one barcode", "positions_duplicate",
           file="tissue_positions_list.csv", field="barcode", text="duplicate barcode",
           files=visium_files(duplicate_barcode=True))
    visium("visium_barcode_mismatch", "positions of another slide: no barcode in common with the matrix",
           "barcode_mismatch", file="tissue_positions_list.csv", field="barcode", text="counts/spot-file mismatch",
           files=visium_files(barcode_prefix="GG"))
    visium("visium_scalefactors_bad_json", "scalefactors_json.json is not JSON", "scalefactors_bad_json",
           file="scalefactors_json.json", field="scalefactors", text="not valid JSON",
           files=visium_files(scalefactors=b"{spot_diameter_fullres: 40"))
    visium("visium_scalefactors_missing_key", "scalefactors_json.json without spot_diameter_fullres",
           "scalefactors_missing_key", file="scalefactors_json.json", field="spot_diameter_fullres",
           text="missing", files=visium_files(scalefactors=b'{"tissue_lowres_scalef": 0.1}'))
    visium("visium_scalefactor_not_a_number", "tissue_lowres_scalef: 'about 0.1' (text, not a number: the image "
           "would silently be unused)", "scalefactor_text", file="scalefactors_json.json",
           field="tissue_lowres_scalef", text="must be a number", files=visium_files(
               scalefactors=b'{"spot_diameter_fullres": 40.0, "tissue_lowres_scalef": "about 0.1"}'))
    visium("visium_mtx_negative", "a negative count in matrix.mtx", "mtx_negative", file="matrix.mtx",
           field="counts", text="negative", files=visium_files(negative=True))
    visium("visium_mtx_shape", "matrix.mtx says 5 genes, features.tsv lists 3", "mtx_shape", file="matrix.mtx",
           field="matrix", text="features", files=visium_files(mtx_header="5 16 40"))
    visium("visium_h5_truncated", "filtered_feature_bc_matrix.h5 cut to 2 KB", "h5_truncated",
           file="filtered_feature_bc_matrix.h5", field="matrix", text="cannot read the 10x HDF5 matrix",
           files={"filtered_feature_bc_matrix.h5": truncated_10x_h5(),
                  **{k: v for k, v in visium_files().items() if k.startswith("spatial/")}})
    case("h5ad_truncated", "read_h5ad", "an .h5ad cut to 2 KB", args={"path": "h5/truncated.h5ad", "slide_id": "H1"},
         slide="H1", file="truncated.h5ad", field="h5ad", text="cannot read the h5ad file",
         files={"h5/truncated.h5ad": truncated_h5ad()})
