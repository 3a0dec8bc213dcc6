"""``read_visium``: one 10x Visium slide from a Space Ranger output folder as one AnnData."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideError
from ._utils import (
    abspath,
    attach_labels,
    check_image,
    display,
    finish,
    label_warnings,
    make_adata,
    need_file,
    numeric_column,
    open_text,
    reading,
    require_columns,
)

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
_GEX = "Gene Expression"


def _decode(a) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(a).tolist()]


def _read_h5(path: Path, slide: str) -> tuple[sp.csr_matrix, list[str], list[str], list[str], list[str]]:
    """(X spots × genes csr, barcodes, gene names, gene ids, feature types) from a 10x HDF5 matrix
    (Cell Ranger v3+ schema ``matrix/…``, or the v2 schema with one group per genome)."""
    import h5py

    file = display(path)
    with reading(slide=slide, file=file, field="matrix", what="the 10x HDF5 matrix"):
        with h5py.File(path, "r") as f:
            if "matrix" in f:
                g = f["matrix"]
                feat = g["features"]
                names = _decode(feat["name"][:])
                ids = _decode(feat["id"][:])
                types = _decode(feat["feature_type"][:]) if "feature_type" in feat else [_GEX] * len(ids)
            else:
                groups = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
                if not groups:
                    raise KeyError("'matrix'")
                g = f[groups[0]]
                names = _decode(g["gene_names"][:])
                ids = _decode(g["genes"][:])
                types = [_GEX] * len(ids)
            barcodes = _decode(g["barcodes"][:])
            shape = tuple(int(v) for v in g["shape"][:])
            data = g["data"][:]
            indices = g["indices"][:]
            indptr = g["indptr"][:]
        n_genes, n_spots = shape
        if len(barcodes) != n_spots or len(ids) != n_genes or len(indptr) != n_spots + 1:
            raise ValueError(f"inconsistent shapes: shape {shape}, {len(barcodes)} barcodes, {len(ids)} features, "
                             f"indptr of {len(indptr)}")
        X = sp.csc_matrix((data, indices, indptr), shape=(n_genes, n_spots))
        try:  # scipy trusts the arrays: a corrupt file would fail later, far from its name
            X.check_format(full_check=True)
        except ValueError as exc:
            raise ValueError(f"corrupt sparse matrix: {exc}") from exc
        X = X.T.tocsr()
    return X, barcodes, names, ids, types


def _find(folder: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_mex(folder: Path, slide: str) -> tuple[sp.csr_matrix, list[str], list[str], list[str], list[str], Path]:
    """The same from a 10x MEX folder (matrix.mtx[.gz] genes × spots, features.tsv / genes.tsv, barcodes.tsv)."""
    from scipy.io import mmread

    mtx = _find(folder, ["matrix.mtx"])
    feats = _find(folder, ["features.tsv", "genes.tsv"])
    bcs = _find(folder, ["barcodes.tsv"])
    for p, what in ((mtx, "matrix.mtx.gz"), (feats, "features.tsv.gz"), (bcs, "barcodes.tsv.gz")):
        if p is None:
            raise SlideError(f"no counts: neither filtered_feature_bc_matrix.h5 nor {what} in the MEX folder",
                             slide=slide, file=display(folder / what), field="counts")
    with reading(slide=slide, file=display(bcs), field="barcode", what="the barcodes"):
        barcodes = pd.read_csv(bcs, sep="\t", header=None, dtype=str, compression="infer")[0].tolist()
    with reading(slide=slide, file=display(feats), field="features", what="the features"):
        fdf = pd.read_csv(feats, sep="\t", header=None, dtype=str, compression="infer", keep_default_na=False)
    ids = fdf[0].tolist()
    names = fdf[1].tolist() if fdf.shape[1] > 1 else ids
    types = fdf[2].tolist() if fdf.shape[1] > 2 else [_GEX] * len(ids)
    with reading(slide=slide, file=display(mtx), field="matrix", what="the Matrix Market counts"):
        M = sp.csr_matrix(mmread(str(mtx)))
    if M.shape != (len(ids), len(barcodes)):
        raise SlideError(f"matrix is {M.shape[0]}×{M.shape[1]} but there are {len(ids)} features and "
                         f"{len(barcodes)} barcodes", slide=slide, file=display(mtx), field="matrix")
    return M.T.tocsr(), barcodes, names, ids, types, mtx


def _read_positions(spatial: Path, slide: str) -> tuple[pd.DataFrame, Path]:
    """Spot positions indexed by barcode from tissue_positions.csv (v2, header) or
    tissue_positions_list.csv (v1, no header)."""
    v2 = spatial / "tissue_positions.csv"
    v1 = spatial / "tissue_positions_list.csv"
    path = v2 if v2.is_file() else v1
    if not path.is_file():
        raise SlideError("no spot positions: neither tissue_positions.csv nor tissue_positions_list.csv",
                         slide=slide, file=display(v2), field="positions")
    file = display(path)
    with reading(slide=slide, file=file, field="positions", what="the spot positions"):
        with open_text(path) as fh:
            first = fh.readline().split(",")[0].strip().strip('"')
        has_header = first == "barcode"
        df = pd.read_csv(path, header=0 if has_header else None, dtype={0: str} if not has_header else None)
    if has_header:
        df.columns = [str(c).strip() for c in df.columns]
    else:
        if df.shape[1] != len(POSITION_COLUMNS):
            raise SlideError(f"expected {len(POSITION_COLUMNS)} columns without header "
                             f"({', '.join(POSITION_COLUMNS)}), found {df.shape[1]}", slide=slide, file=file,
                             field="positions")
        df.columns = POSITION_COLUMNS
    require_columns(df, POSITION_COLUMNS, slide=slide, file=file)
    barcodes = pd.Index(df["barcode"].astype(str).str.strip(), dtype=object)
    if barcodes.has_duplicates:
        dup = barcodes[barcodes.duplicated()].unique()
        raise SlideError(f"{len(dup)} duplicate barcode(s), first {dup[0]!r}", slide=slide, file=file,
                         field="barcode")
    out = pd.DataFrame(index=barcodes)
    for col in ("in_tissue", "array_row", "array_col"):
        out[col] = numeric_column(df, col, slide=slide, file=file, integer=True, key=barcodes).astype(np.int64)
    for col in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
        out[col] = numeric_column(df, col, slide=slide, file=file, key=barcodes)
    return out, path


#: the scale factors the reader uses: each must be a positive number (a numeric string is accepted)
_SCALE_KEYS = ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef")


def _read_scalefactors(spatial: Path, slide: str) -> tuple[dict, Path]:
    path = need_file(spatial / "scalefactors_json.json", slide=slide, field="scalefactors",
                     what="scale factor file")
    with reading(slide=slide, file=display(path), field="scalefactors", what="the scale factors"):
        with open(path, encoding="utf-8") as fh:
            sf = json.load(fh)
        if not isinstance(sf, dict):
            raise ValueError("not a JSON object")
    out = {}
    for k, v in sf.items():
        if isinstance(v, str):  # "0.05": a number written as text is read as that number
            try:
                v = float(v.strip())
            except ValueError:
                pass
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
        elif str(k) in _SCALE_KEYS:  # a scale factor that is not a number would silently drop the image
            raise SlideError(f"{k!r} must be a number, got {v!r}", slide=slide, file=display(path), field=str(k))
    for k in _SCALE_KEYS:
        if k in out and not (np.isfinite(out[k]) and out[k] > 0):
            raise SlideError(f"{k!r} must be a positive number, got {out[k]!r}", slide=slide, file=display(path),
                             field=k)
    if "spot_diameter_fullres" not in out:
        raise SlideError("missing 'spot_diameter_fullres'", slide=slide, file=display(path),
                         field="spot_diameter_fullres")
    return out, path


def _read_barcode_labels(path: Path, slide: str, barcodes: pd.Index) -> pd.Series:
    """``barcode<TAB>label`` (a header row is recognised by its first cell not being a barcode)."""
    file = display(path)
    with reading(slide=slide, file=file, field="labels", what="the label file"):
        df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, compression="infer")
    if df.shape[1] < 2:
        raise SlideError("expected two tab-separated columns: barcode, label", slide=slide, file=file,
                         field="label")
    if len(df) and df.iat[0, 0].strip() not in set(barcodes) and df.iat[0, 0].strip().lower() in (
            "barcode", "barcodes", "spot", "spot_id", "", "cell", "index"):
        df = df.iloc[1:]
    keys = pd.Index(df[0].str.strip(), dtype=object)
    if keys.has_duplicates:
        dup = keys[keys.duplicated()].unique()
        raise SlideError(f"{len(dup)} duplicate barcode(s), first {dup[0]!r}", slide=slide, file=file,
                         field="barcode")
    return pd.Series(df[1].str.strip().to_numpy(), index=keys, dtype=object)


def read_visium(
    path: str | Path,
    *,
    image: str | Path | None = None,
    labels: str | Path | None = None,
    slide_id: str | None = None,
    patient_id: str | None = None,
) -> AnnData:
    """Read one Space Ranger output folder into one AnnData.

    Reads ``filtered_feature_bc_matrix.h5`` (own h5py reader, v2 or v3 schema; falls back to the
    ``filtered_feature_bc_matrix/`` MEX folder when the h5 is absent), ``spatial/tissue_positions.csv``
    (v2, header) or ``spatial/tissue_positions_list.csv`` (v1, no header) and
    ``spatial/scalefactors_json.json``; keeps the ``in_tissue == 1`` spots that are in the matrix, and only
    "Gene Expression" features.

    The image: ``image`` given → that file; it is treated as the full-resolution image (scale 1) unless it is
    the folder's own ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` (their scale factor then).
    ``image=None`` → the best image present: ``spatial/tissue_hires_image.png`` > ``tissue_lowres_image.png``;
    none → no image, coordinates stay in full-resolution pixels and ``image_path`` is absent.

    Writes ``X`` / ``layers["counts"]`` (csr float32), ``obs_names`` = barcodes, ``obs["array_row"]``,
    ``obs["array_col"]``, ``obsm["spatial"]`` = (pxl_col, pxl_row)_in_fullres × scale (x = column, y = row),
    ``var_names`` = the feature names made unique, ``var["gene_ids"]``, ``var["feature_types"]``,
    ``obs["label"]`` / ``obs["label_scored"]`` when ``labels`` (``barcode<TAB>label``; 'NA' is not scored)
    is given, and ``uns["senca"]`` (platform "visium", grid "hex", spot_diameter_px = spot_diameter_fullres ×
    scale, scalefactors = the JSON's numbers + ``image_scale`` (the scale used), source_files, join
    {n_counts_only: matrix barcodes not in tissue, n_spots_only: in-tissue spots not in the matrix},
    labels_join, n_zero_spots_dropped). ``slide_id`` defaults to the folder name; ``patient_id`` to slide_id.
    """
    folder = Path(path)
    slide = str(slide_id) if slide_id is not None else (folder.resolve().name or str(folder))
    patient = str(patient_id) if patient_id is not None else slide
    if not folder.is_dir():
        raise SlideError("Space Ranger folder not found" if not folder.exists() else
                         "not a folder (expected a Space Ranger output folder)",
                         slide=slide, file=display(folder), field="path")
    if labels is not None:
        need_file(labels, slide=slide, field="labels", what="label file")
    if image is not None:
        need_file(image, slide=slide, field="image", what="image file")

    h5 = folder / "filtered_feature_bc_matrix.h5"
    mex = folder / "filtered_feature_bc_matrix"
    if h5.exists():
        need_file(h5, slide=slide, field="counts", what="counts file")
        X, barcodes, names, ids, types = _read_h5(h5, slide)
        counts_file = h5
    elif mex.is_dir():
        X, barcodes, names, ids, types, counts_file = _read_mex(mex, slide)
    else:
        raise SlideError("no counts: neither filtered_feature_bc_matrix.h5 nor filtered_feature_bc_matrix/",
                         slide=slide, file=display(h5), field="counts")

    gex = np.array([t == _GEX for t in types], dtype=bool)
    if not gex.any():
        raise SlideError("no 'Gene Expression' features", slide=slide, file=display(counts_file),
                         field="feature_type")
    if not gex.all():
        X = X[:, np.flatnonzero(gex)]
        names = [n for n, g in zip(names, gex) if g]
        ids = [i for i, g in zip(ids, gex) if g]
    barcodes_idx = pd.Index(barcodes, dtype=object)
    if barcodes_idx.has_duplicates:
        dup = barcodes_idx[barcodes_idx.duplicated()].unique()
        raise SlideError(f"{len(dup)} duplicate barcode(s), first {dup[0]!r}", slide=slide,
                         file=display(counts_file), field="barcode")

    spatial_dir = folder / "spatial"
    pos, pos_file = _read_positions(spatial_dir, slide)
    sf, sf_file = _read_scalefactors(spatial_dir, slide)

    tissue = pos.index[pos["in_tissue"] == 1]
    keep_mask = barcodes_idx.isin(tissue)
    n_match = int(keep_mask.sum())
    n_counts_only = int(len(barcodes_idx) - n_match)
    n_spots_only = int((~tissue.isin(barcodes_idx)).sum())
    if n_match == 0 or n_match < 0.5 * len(barcodes_idx):
        raise SlideError(f"counts/spot-file mismatch: only {n_match} of {len(barcodes_idx)} matrix barcodes are "
                         f"in-tissue spots of the positions file", slide=slide, file=display(pos_file),
                         field="barcode")
    keep = np.flatnonzero(keep_mask)
    bcs = barcodes_idx[keep]
    adata = make_adata(X[keep], bcs, names, gene_ids=ids)
    adata.var["feature_types"] = _GEX
    p = pos.loc[bcs]
    adata.obs["array_row"] = p["array_row"].to_numpy(dtype=np.int64)
    adata.obs["array_col"] = p["array_col"].to_numpy(dtype=np.int64)
    full = np.column_stack([p["pxl_col_in_fullres"].to_numpy(), p["pxl_row_in_fullres"].to_numpy()])

    hires = spatial_dir / "tissue_hires_image.png"
    lowres = spatial_dir / "tissue_lowres_image.png"
    scale, img = 1.0, None
    if image is not None:
        img = Path(image)
        resolved = img.resolve()
        if resolved == hires.resolve():
            scale = sf.get("tissue_hires_scalef")
        elif resolved == lowres.resolve():
            scale = sf.get("tissue_lowres_scalef")
        if scale is None:
            raise SlideError(f"image {img.name} needs a scale factor the JSON lacks", slide=slide,
                             file=display(sf_file), field="tissue_hires_scalef" if resolved == hires.resolve()
                             else "tissue_lowres_scalef")
    elif hires.is_file() and "tissue_hires_scalef" in sf:
        img, scale = hires, sf["tissue_hires_scalef"]
    elif lowres.is_file() and "tissue_lowres_scalef" in sf:
        img, scale = lowres, sf["tissue_lowres_scalef"]
    warns = []
    if img is None:  # an image is there but cannot be placed: never drop it without a word
        for im, key in ((hires, "tissue_hires_scalef"), (lowres, "tissue_lowres_scalef")):
            if im.is_file():
                warns.append(f"image: {display(im)} is there but {display(sf_file)} has no {key!r}: the slide is "
                             "read WITHOUT its image (no histology features)")
    spatial = full.astype(np.float64) * float(scale)
    adata.obsm["spatial"] = spatial

    source_files = {"counts": abspath(counts_file), "positions": abspath(pos_file), "scalefactors": abspath(sf_file)}
    senca: dict = {
        "slide_id": slide,
        "patient_id": patient,
        "platform": "visium",
        "grid": "hex",
        "spot_diameter_px": float(sf["spot_diameter_fullres"]) * float(scale),
        "scalefactors": {**sf, "image_scale": float(scale)},
        "join": {"n_counts_only": n_counts_only, "n_spots_only": n_spots_only},
    }
    if img is not None:
        if image is not None:
            scale_field = "image"
        else:
            scale_field = "tissue_hires_scalef" if img == hires else "tissue_lowres_scalef"
        senca["image_path"] = check_image(img, spatial, slide=slide, scale_field=scale_field)
        source_files["image"] = senca["image_path"]
    if labels is not None:
        lab = _read_barcode_labels(Path(labels), slide, bcs)
        senca["labels_join"] = attach_labels(adata, lab)
        warns += label_warnings(senca["labels_join"], file=display(labels), n_keys=len(lab))
        source_files["labels"] = abspath(labels)
    senca["warnings"] = warns or None
    senca["source_files"] = source_files
    return finish(adata, senca, slide=slide, counts_file=display(counts_file))
