"""Shared helpers of the slide readers (not a verb; nothing here is re-exported).

- :func:`reading` turns any low-level failure while parsing one file (OSError, EOFError, a truncated gzip,
  a pandas ParserError, a KeyError from h5py, a UnicodeDecodeError …) into one :class:`SlideError` that names
  the slide, the file and the field.
- :func:`need_file` raises "file not found" up front, so that a missing file never reaches a parser.
- :func:`grid_geometry` / :func:`guess_grid` derive the grid pitch and kind (hex / square) from spot centres.
- :func:`check_image` opens only an image's header to check that the spots fall on it.
- :func:`attach_labels` writes ``obs["label"]`` / ``obs["label_scored"]``; :func:`label_warnings` says which
  label rows found no spot (``uns["senca"]["warnings"]``).
- :func:`finish` builds the AnnData of the contract (X csr float32 + layers["counts"], uns["senca"]) and runs
  :func:`validate_counts`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideError

#: label values that are kept in ``obs["label"]`` but never scored (compared lower-case)
UNSCORED_LABELS = frozenset({"undetermined", "na", "nan", "none", ""})

#: a spot centre that lies in the first shell of neighbours is at most this many times the nearest distance away
_SHELL = 1.25


def display(path: str | Path) -> str:
    """How a file is named in error messages: the path as the caller gave it."""
    return str(path)


def need_file(path: str | Path, *, slide: str | None, field: str | None = None, what: str = "file") -> Path:
    """``Path(path)`` if it is an existing regular file, else ``SlideError("... not found")``."""
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{what} not found", slide=slide, file=display(path), field=field)
    if not p.is_file():
        raise SlideError(f"{what} is not a regular file", slide=slide, file=display(path), field=field)
    return p


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"truncated or corrupt compressed file ({type(exc).__name__}: {exc})"
    if isinstance(exc, UnicodeDecodeError):
        return "not a text file (bytes that do not decode as text)"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "file is empty"
    if isinstance(exc, pd.errors.ParserError):
        return f"malformed table ({exc})".replace("\n", " ")
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc})"
    if isinstance(exc, KeyError):
        return f"missing entry {exc}"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"unreadable ({type(exc).__name__}: {exc})".replace("\n", " ")


@contextmanager
def reading(*, slide: str | None, file: str | Path, field: str | None = None, what: str = "") -> Iterator[None]:
    """Context manager: any exception but SlideError raised inside becomes a SlideError naming slide/file/field."""
    try:
        yield
    except SlideError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - deliberately broad: bad input must never escape raw
        problem = _describe(exc)
        if what:
            problem = f"cannot read {what}: {problem}"
        raise SlideError(problem, slide=slide, file=display(file), field=field) from exc


def compression_of(path: Path) -> str | None:
    """"gzip" when the file starts with the gzip magic bytes (whatever its name says), else None."""
    with open(path, "rb") as fh:
        return "gzip" if fh.read(2) == b"\x1f\x8b" else None


def open_text(path: Path):
    """Open a (possibly gzipped, sniffed by content) text file for reading."""
    if compression_of(path) == "gzip":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def require_columns(df: pd.DataFrame, columns: list[str], *, slide: str | None, file: str | Path) -> None:
    """SlideError naming the first of ``columns`` that ``df`` lacks."""
    for col in columns:
        if col not in df.columns:
            have = ", ".join(map(str, df.columns[:12]))
            raise SlideError(f"missing column {col!r} (columns present: {have})", slide=slide,
                             file=display(file), field=col)


def numeric_column(df: pd.DataFrame, col: str, *, slide: str | None, file: str | Path,
                   integer: bool = False, key: pd.Index | None = None) -> np.ndarray:
    """``df[col]`` as float64, with a SlideError naming the column and the first bad row when a value is
    missing, not a number, infinite or (``integer=True``) not a whole number."""
    raw = df[col]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals)
    what = "a finite number"
    if integer and not bad.any():
        bad = vals != np.round(vals)
        what = "a whole number"
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"row {i + 1}" if key is None else f"row {key[i]!r}"
        shown = raw.iloc[i]
        shown = repr(shown) if isinstance(shown, str) else str(shown)
        raise SlideError(f"{int(bad.sum())} value(s) are not {what}, first {shown} at {where}",
                         slide=slide, file=display(file), field=col)
    return vals


# --------------------------------------------------------------------------------------------- geometry
def grid_geometry(xy: np.ndarray) -> tuple[float, np.ndarray]:
    """Grid pitch and first-shell neighbour counts of spot centres ``xy`` (n, 2).

    The pitch is the median distance over ALL first-shell neighbour pairs (neighbours closer than
    1.25 × the median nearest-neighbour distance), not the median nearest-neighbour distance itself: the
    latter is the minimum of 4 (square) or 6 (hex) jittered distances and reads ~7 % short on legacy ST
    (HER2ST A1: 58.2 px against a 62.7 px pitch). Returns ``(nan, zeros)`` for fewer than two spots.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if n < 2:
        return float("nan"), np.zeros(n, dtype=np.int64)
    k = min(n, 9)
    dist, _ = cKDTree(xy).query(xy, k=k)
    dist = dist[:, 1:]
    positive = dist[:, 0][dist[:, 0] > 0]
    if positive.size == 0:
        return float("nan"), np.zeros(n, dtype=np.int64)
    nn = float(np.median(positive))
    shell = (dist > 0) & (dist <= _SHELL * nn)
    pitch = float(np.median(dist[shell])) if shell.any() else nn
    return pitch, shell.sum(axis=1)


def guess_grid(xy: np.ndarray) -> str | None:
    """"hex" when a typical interior spot has 6 neighbours at the grid pitch, "square" when it has 4;
    None when there are too few spots to tell."""
    _, counts = grid_geometry(xy)
    if len(counts) < 3 or counts.max() == 0:
        return None
    return "hex" if np.percentile(counts, 90) >= 5 else "square"


# --------------------------------------------------------------------------------------------- images
_PIL_LOCK = threading.Lock()


def image_size(path: Path, *, slide: str | None) -> tuple[int, int]:
    """(width, height) of an image, reading only its header (PIL, then tifffile, then openslide)."""
    errors = []
    try:
        from PIL import Image

        with _PIL_LOCK:
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # we read the header only; whole-slide images are legitimately huge
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(path) as im:
                        return int(im.size[0]), int(im.size[1])
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Exception as exc:  # noqa: BLE001
        errors.append(f"PIL: {type(exc).__name__}")
    log = logging.getLogger("tifffile")
    was_disabled = log.disabled
    try:
        import tifffile

        log.disabled = True  # tifffile logs a warning for a broken file before it raises: one error only
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
            axes = tif.pages[0].axes
            return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
    except Exception as exc:  # noqa: BLE001
        errors.append(f"tifffile: {type(exc).__name__}")
    finally:
        log.disabled = was_disabled
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as osl:
            w, h = osl.dimensions
            return int(w), int(h)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"openslide: {type(exc).__name__}")
    raise SlideError(f"unreadable image: not an image Pillow, tifffile or OpenSlide can open, or its header is "
                     f"corrupt ({'; '.join(errors)})", slide=slide, file=display(path), field="image")


def check_image(image: str | Path, spatial: np.ndarray, *, slide: str | None, scale_field: str) -> str:
    """Check that an image exists, is readable and that most spot centres fall on it.

    More than half of the spots outside the image means the wrong image or the wrong scale: SlideError
    naming ``scale_field``. A few spots off the edge are allowed (``hist`` flags them). Returns the
    image's absolute path as str (for ``uns["senca"]["image_path"]``).
    """
    p = need_file(image, slide=slide, field="image", what="image file")
    w, h = image_size(p, slide=slide)
    x, y = spatial[:, 0], spatial[:, 1]
    outside = (x < 0) | (y < 0) | (x >= w) | (y >= h)
    if len(spatial) and outside.mean() > 0.5:
        raise SlideError(
            f"{int(outside.sum())} of {len(spatial)} spot centres fall outside the {w}×{h} image "
            f"(spots span x {x.min():.0f}–{x.max():.0f}, y {y.min():.0f}–{y.max():.0f}): wrong image or scale?",
            slide=slide, file=display(image), field=scale_field)
    return str(p.resolve())


# --------------------------------------------------------------------------------------------- labels
def attach_labels(adata: AnnData, labels: pd.Series) -> dict[str, int]:
    """Write ``obs["label"]`` (categorical of str; NaN where a spot has no label) and ``obs["label_scored"]``
    (False for 'undetermined', 'NA', empty and missing labels) from ``labels`` indexed by spot key.
    Returns ``{"n_labels_only": labels without a spot, "n_unlabelled": spots without a label}``."""
    labels = labels.astype(object)
    labels = labels.where(labels.notna(), None)
    joined = labels.reindex(adata.obs_names)
    text = joined.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())
    is_missing = text.map(lambda v: v is None or v.lower() in ("na", "nan", "none", ""))
    values = text.where(~is_missing, None)
    cats = sorted({v for v in values if v is not None})
    adata.obs["label"] = pd.Categorical(values.to_numpy(dtype=object), categories=cats)
    scored = values.map(lambda v: v is not None and v.lower() not in UNSCORED_LABELS)
    adata.obs["label_scored"] = scored.to_numpy(dtype=bool)
    n_labels_only = int((~labels.index.isin(adata.obs_names)).sum())
    n_unlabelled = int((~adata.obs_names.isin(labels.index)).sum())
    return {"n_labels_only": n_labels_only, "n_unlabelled": n_unlabelled}


def label_warnings(join: dict[str, int], *, file: str, n_keys: int) -> list[str]:
    """The slide's warnings about its label file (``uns["senca"]["warnings"]``) from the counts of
    :func:`attach_labels` (+ the reader's ``n_no_coordinates`` / ``n_ambiguous``); ``n_keys``: the labelled spot
    keys that were joined. Empty when every label row found its spot."""
    out = []
    if join.get("n_no_coordinates"):
        out.append(f"labels: {join['n_no_coordinates']} row(s) of {file} have no spot coordinates (x/y 'NA' or "
                   "not a number): skipped")
    if join.get("n_ambiguous"):
        out.append(f"labels: {join['n_ambiguous']} row(s) of {file} give one spot different labels: skipped "
                   "(those spots are unlabelled)")
    if n_keys and join.get("n_labels_only", 0) >= n_keys:
        out.append(f"labels: none of the {n_keys} labelled spots of {file} is a spot of this slide (the label file "
                   "of another slide?): the slide has no labels")
    elif join.get("n_labels_only"):
        out.append(f"labels: {join['n_labels_only']} of {n_keys} labelled spots of {file} are not spots of this "
                   "slide: skipped")
    return out


# --------------------------------------------------------------------------------------------- assembly
def make_adata(X: sp.spmatrix | np.ndarray, obs_names, var_names, *, gene_ids=None) -> AnnData:
    """AnnData with X as csr float32 (NaN / negatives kept for :func:`validate_counts` to report)."""
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sort_indices()
    obs = pd.DataFrame(index=pd.Index([str(o) for o in obs_names], dtype=object))
    var = pd.DataFrame(index=pd.Index([str(v) for v in var_names], dtype=object))
    if gene_ids is not None:
        var["gene_ids"] = [str(g) for g in gene_ids]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate gene names: made unique by finish()
        adata = AnnData(X=X, obs=obs, var=var)
    return adata


def finish(adata: AnnData, senca: dict, *, slide: str, counts_file: str | Path) -> AnnData:
    """Validate counts, then set ``layers["counts"]`` (a copy of X) and ``uns["senca"]``.

    ``senca`` values that are None are left out (h5ad cannot store None; absent means unknown)."""
    from ._validate import validate_counts

    adata.uns["senca"] = {k: v for k, v in senca.items() if v is not None}
    if adata.var_names.has_duplicates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.var_names_make_unique()
    adata = validate_counts(adata, slide=slide, file=counts_file)
    adata.layers["counts"] = adata.X.copy()
    return adata


def abspath(p: str | Path) -> str:
    return os.path.abspath(str(p))
