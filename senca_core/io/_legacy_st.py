"""``read_legacy_st``: one legacy Spatial Transcriptomics slide (HER2ST layout) as one AnnData."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import SlideError
from ._utils import (
    abspath,
    attach_labels,
    check_image,
    compression_of,
    display,
    finish,
    grid_geometry,
    label_warnings,
    make_adata,
    need_file,
    numeric_column,
    open_text,
    reading,
    require_columns,
)

_KEY = re.compile(r"^\s*(-?\d+)x(-?\d+)\s*$")
SPOT_COLUMNS = ["x", "y", "pixel_x", "pixel_y"]
LABEL_COLUMNS = ["x", "y", "label"]


def _default_slide_id(counts: Path) -> str:
    name = counts.name
    for suffix in (".tsv.gz", ".csv.gz", ".txt.gz", ".tsv", ".csv", ".txt", ".gz"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return counts.stem


def _read_counts(path: Path, slide: str) -> tuple[pd.Index, list[str], np.ndarray]:
    """Spots × genes counts from a (gzipped) TSV whose header row names the genes (with or without an
    empty first cell) and whose first column holds "{x}x{y}" spot keys. Returns keys, genes, float32 values."""
    file = display(path)
    with reading(slide=slide, file=file, field="header", what="the header row"):
        with open_text(path) as fh:
            header = fh.readline().rstrip("\r\n")
    if not header.strip():
        raise SlideError("file is empty or has an empty header row", slide=slide, file=file, field="header")
    names = header.split("\t")
    with reading(slide=slide, file=file, field="counts", what="the count table"):
        try:
            df = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0,
                             compression=compression_of(path), low_memory=False)
        except pd.errors.EmptyDataError:  # a header row and nothing else
            df = pd.DataFrame()
    if df.shape[0] == 0:
        n_genes = len(names) - (0 if names[0].strip() else 1)
        raise SlideError(f"empty count matrix (0 spots × {n_genes} genes)", slide=slide, file=file,
                         field="counts")
    n_cols = df.shape[1]
    if len(names) == n_cols + 1:  # first cell heads the row-name column (empty in HER2ST)
        genes = names[1:]
    elif len(names) == n_cols and names[0].strip():  # R write.table style: no cell above the row names
        genes = names
    else:
        raise SlideError(f"header names {len(names)} columns but the rows have {n_cols} counts (+ row name)",
                         slide=slide, file=file, field="header")
    if n_cols == 0:
        raise SlideError(f"empty count matrix ({df.shape[0]} spots × 0 genes)", slide=slide, file=file,
                         field="counts")
    genes = [g.strip().strip('"') for g in genes]

    keys = df.index
    if keys.isna().any():
        i = int(np.flatnonzero(keys.isna())[0])
        raise SlideError(f"row {i + 2} has no row name (expected '{{x}}x{{y}}')", slide=slide, file=file,
                         field="row names")
    keys = pd.Index([str(k).strip().strip('"') for k in keys], dtype=object)
    for k in keys:
        if not _KEY.match(k):
            raise SlideError(f"row name {k!r} is not a spot key '{{x}}x{{y}}'", slide=slide, file=file,
                             field="row names")
    keys = pd.Index([f"{int(m.group(1))}x{int(m.group(2))}" for m in map(_KEY.match, keys)], dtype=object)
    if keys.has_duplicates:
        dup = keys[keys.duplicated()].unique()
        raise SlideError(f"{len(dup)} duplicate spot key(s), first {dup[0]!r}", slide=slide, file=file,
                         field="spot key")

    numeric = np.array([dtype.kind in "biuf" for dtype in df.dtypes.to_numpy()], dtype=bool)
    non_numeric = list(df.columns[~numeric])  # (one dtype per column: never one column lookup per gene)
    for c in non_numeric:
        coerced = pd.to_numeric(df[c], errors="coerce")
        bad = coerced.isna() & df[c].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise SlideError(f"non-numeric count {df[c].iloc[i]!r} at spot {keys[i]!r}, gene "
                             f"{genes[df.columns.get_loc(c)]!r}", slide=slide, file=file, field="counts")
        df[c] = coerced
    values = df.to_numpy(dtype=np.float32)
    return keys, genes, values


#: a join that keeps fewer than this share of the count rows is refused (the wrong spot file)
MIN_JOIN_FRACTION = 0.5
#: a join that leaves more than this share of the count rows without a spot row is said in the warnings
WARN_UNJOINED_FRACTION = 0.02


def _transposed(keys: pd.Index) -> pd.Index:
    """``"{x}x{y}"`` keys as ``"{y}x{x}"``: what the keys would be with the spot file's x / y columns exchanged."""
    parts = keys.str.split("x", n=1, regex=False)
    return pd.Index([f"{b}x{a}" for a, b in parts], dtype=object) if len(keys) else keys


def _read_spots(path: Path, slide: str) -> tuple[pd.DataFrame, pd.Index]:
    """The spot-selection table indexed by "{x}x{y}" (rows with ``selected == 0`` dropped) and the keys of the
    unselected rows."""
    file = display(path)
    with reading(slide=slide, file=file, field="spots", what="the spot file"):
        df = pd.read_csv(path, sep="\t", compression=compression_of(path), keep_default_na=False,
                         na_values=[""])
    df.columns = [str(c).strip().strip('"') for c in df.columns]
    require_columns(df, SPOT_COLUMNS, slide=slide, file=file)
    if len(df) == 0:
        raise SlideError("spot file has no rows", slide=slide, file=file, field="x")
    x = numeric_column(df, "x", slide=slide, file=file, integer=True).astype(np.int64)
    y = numeric_column(df, "y", slide=slide, file=file, integer=True).astype(np.int64)
    out = pd.DataFrame({
        "array_col": x,
        "array_row": y,
        "pixel_x": numeric_column(df, "pixel_x", slide=slide, file=file),
        "pixel_y": numeric_column(df, "pixel_y", slide=slide, file=file),
    })
    out.index = pd.Index([f"{a}x{b}" for a, b in zip(x, y)], dtype=object)
    unselected = pd.Index([], dtype=object)
    if "selected" in df.columns:
        sel = numeric_column(df, "selected", slide=slide, file=file) != 0
        unselected = out.index[~sel]
        out = out[sel]
    if out.index.has_duplicates:
        dup = out.index[out.index.duplicated()].unique()
        raise SlideError(f"{len(dup)} duplicate spot key(s) (x, y), first {dup[0]!r}", slide=slide, file=file,
                         field="x,y")
    return out, unselected


def _read_labels(path: Path, slide: str) -> tuple[pd.Series, dict[str, int]]:
    """Labels indexed by f"{round(x)}x{round(y)}" (round half up) from a ``x y ... label`` TSV, and what was
    skipped: ``n_no_coordinates`` (rows whose ``x``/``y`` are ``NA``, empty or not finite numbers: the
    published HER2ST files hold annotation rows that belong to no spot) and ``n_ambiguous`` (rows of a spot key
    that other rows label differently; rows repeating a spot's label are merged). The file's structure (a
    missing column, bytes that are not a table) is still a SlideError."""
    file = display(path)
    with reading(slide=slide, file=file, field="labels", what="the label file"):
        df = pd.read_csv(path, sep="\t", compression=compression_of(path), dtype={"label": str},
                         keep_default_na=False)
    df.columns = [str(c).strip().strip('"') for c in df.columns]
    require_columns(df, LABEL_COLUMNS, slide=slide, file=file)
    x = pd.to_numeric(df["x"], errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(df["y"], errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (np.abs(x) < 2**52) & (np.abs(y) < 2**52)
    x = np.floor(x[ok] + 0.5).astype(np.int64)
    y = np.floor(y[ok] + 0.5).astype(np.int64)
    keys = pd.Index([f"{a}x{b}" for a, b in zip(x, y)], dtype=object)
    values = pd.Series(df["label"].astype(str).str.strip().to_numpy()[ok], index=keys, dtype=object)
    n_ambiguous = 0
    if keys.has_duplicates:
        n_labels = values.groupby(level=0, sort=False).nunique()
        conflicting = values.index.isin(n_labels.index[n_labels > 1])
        n_ambiguous = int(conflicting.sum())
        values = values[~conflicting]
        values = values[~values.index.duplicated()]
    return values, {"n_no_coordinates": int((~ok).sum()), "n_ambiguous": n_ambiguous}


def read_legacy_st(
    counts: str | Path,
    spots: str | Path,
    *,
    labels: str | Path | None = None,
    image: str | Path | None = None,
    image_scale: float = 1.0,
    slide_id: str | None = None,
    patient_id: str | None = None,
) -> AnnData:
    """Read one legacy ST slide (HER2ST layout) into one AnnData.

    Parameters
    ----------
    counts
        gzip (or plain) TSV, spots × genes raw counts; header row = gene symbols (optionally after an empty
        first cell); row names ``"{x}x{y}"``.
    spots
        spot-selection TSV with columns ``x y pixel_x pixel_y`` (``new_x new_y selected`` optional; rows with
        ``selected == 0`` are dropped). ``pixel_*`` are spot centres in the full-resolution H&E.
    labels
        optional TSV with columns ``x y label`` (fractional array coordinates; key
        ``f"{round(x)}x{round(y)}"``, rounding half up). Its other columns are ignored.
    image, image_scale
        the H&E this slide is shown on and the factor from ``pixel_*`` to that image's pixels.
    slide_id, patient_id
        default: the counts file name without ``.tsv.gz``; ``patient_id`` defaults to ``slide_id``.

    Writes
    ------
    ``X`` and ``layers["counts"]`` (csr float32 raw counts), ``obs_names`` = ``"{x}x{y}"``,
    ``obs["array_col"]`` = x, ``obs["array_row"]`` = y, ``obsm["spatial"]`` = (pixel_x, pixel_y) × image_scale
    (float64), ``obs["label"]`` / ``obs["label_scored"]`` when labels are given, ``uns["senca"]`` with
    slide_id, patient_id, platform "legacy_st", grid "square", image_path (only with an image),
    spot_diameter_px (0.5 × the grid pitch measured on the spots: 100 µm spots on a 200 µm grid),
    scalefactors {"image_scale"}, source_files, join {n_counts_only, n_spots_only, n_unselected},
    labels_join {n_labels_only, n_unlabelled, n_no_coordinates, n_ambiguous} and warnings (with labels; see
    below), n_zero_spots_dropped.

    Count rows without a spot row and spot rows without a count row are dropped and counted in
    ``uns["senca"]["join"]`` (count rows of unselected spot rows are expected to go); an empty join, or one
    where fewer than half of the count rows have a spot row, is a SlideError ("counts/spot-file mismatch"), and
    so is a spot file whose ``x``/``y`` names are swapped (more count rows join with x and y exchanged); more
    than 2 % of the count rows without a spot row is said in ``uns["senca"]["warnings"]``. Label rows that cannot be joined to a spot (``NA`` / non-finite
    coordinates, coordinates of no spot, one spot labelled two ways) are skipped, counted in
    ``uns["senca"]["labels_join"]`` and said in ``uns["senca"]["warnings"]``: only the counts and spot files
    are strict. Every other bad input raises :class:`SlideError`.
    """
    counts = Path(counts)
    if slide_id is None:
        slide_id = _default_slide_id(counts)
    slide = str(slide_id)
    patient = str(patient_id) if patient_id is not None else slide
    try:
        image_scale = float(image_scale)
    except (TypeError, ValueError):
        raise SlideError(f"image_scale must be a number, got {image_scale!r}", slide=slide,
                         file=None if image is None else display(image), field="image_scale") from None
    if not np.isfinite(image_scale) or image_scale <= 0:
        raise SlideError(f"image_scale must be a positive number, got {image_scale!r}", slide=slide,
                         file=None if image is None else display(image), field="image_scale")

    need_file(counts, slide=slide, field="counts", what="counts file")
    need_file(spots, slide=slide, field="spots", what="spot file")
    if labels is not None:
        need_file(labels, slide=slide, field="labels", what="label file")
    if image is not None:
        need_file(image, slide=slide, field="image", what="image file")

    keys, genes, values = _read_counts(counts, slide)
    spot_df, unselected = _read_spots(Path(spots), slide)
    n_unselected = int(len(unselected))

    in_spots = keys.isin(spot_df.index)
    n_match = int(in_spots.sum())
    n_counts_only = int(len(keys) - n_match)
    n_spots_only = int((~spot_df.index.isin(keys)).sum())
    # count rows of unselected spots (off the tissue) are meant to go; the rest must find their spot row
    all_spots = spot_df.index.append(unselected)
    n_known = int(keys.isin(all_spots).sum())
    n_swapped = int(_transposed(keys).isin(all_spots).sum())
    if n_swapped > n_known:  # the join works better with x and y exchanged: the column names are swapped
        raise SlideError(
            f"the x/y columns of the spot file look swapped: {n_swapped} of {len(keys)} count rows of "
            f"{display(counts)!r} find their spot row with x and y exchanged, only {n_known} as written (a join "
            "as written would put spots at the wrong places); exchange the 'x' and 'y' header names",
            slide=slide, file=display(spots), field="x,y")
    if n_match == 0 or n_known < MIN_JOIN_FRACTION * len(keys):
        example_c = keys[~keys.isin(all_spots)][0] if n_known < len(keys) else None
        example_s = spot_df.index[~spot_df.index.isin(keys)][0] if n_spots_only else None
        raise SlideError(
            f"counts/spot-file mismatch: only {n_known} of {len(keys)} count rows of {display(counts)!r} have a "
            f"spot row (x, y) (at least {MIN_JOIN_FRACTION:.0%} must; e.g. count row {example_c!r}, spot row "
            f"{example_s!r})", slide=slide, file=display(spots), field="x,y")
    warns = []
    if len(keys) - n_known > WARN_UNJOINED_FRACTION * len(keys):
        warns.append(f"spots: {len(keys) - n_known} of {len(keys)} count rows of {display(counts)} have no spot "
                     f"row in {display(spots)}: dropped (wrong or partial spot file?)")

    keep = np.flatnonzero(in_spots)
    keys = keys[keep]
    adata = make_adata(values[keep], keys, genes)
    s = spot_df.loc[keys]
    adata.obs["array_row"] = s["array_row"].to_numpy(dtype=np.int64)
    adata.obs["array_col"] = s["array_col"].to_numpy(dtype=np.int64)
    spatial = np.column_stack([s["pixel_x"].to_numpy(), s["pixel_y"].to_numpy()]).astype(np.float64) * image_scale
    adata.obsm["spatial"] = spatial

    source_files = {"counts": abspath(counts), "spots": abspath(spots)}
    senca: dict = {
        "slide_id": slide,
        "patient_id": patient,
        "platform": "legacy_st",
        "grid": "square",
        "scalefactors": {"image_scale": image_scale},
        "join": {"n_counts_only": n_counts_only, "n_spots_only": n_spots_only, "n_unselected": n_unselected},
    }
    pitch, _ = grid_geometry(spatial)
    if np.isfinite(pitch):
        senca["spot_diameter_px"] = 0.5 * pitch
    if image is not None:
        senca["image_path"] = check_image(image, spatial, slide=slide, scale_field="image_scale")
        source_files["image"] = senca["image_path"]
    if labels is not None:
        lab, skipped = _read_labels(Path(labels), slide)
        senca["labels_join"] = {**attach_labels(adata, lab), **skipped}
        warns += label_warnings(senca["labels_join"], file=display(labels), n_keys=len(lab))
        source_files["labels"] = abspath(labels)
    senca["warnings"] = warns or None
    senca["source_files"] = source_files
    return finish(adata, senca, slide=slide, counts_file=display(counts))
