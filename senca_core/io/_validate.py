"""``validate_counts``: the checks every reader runs on a slide's count matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideError


def _first_cell(adata: AnnData, rows: np.ndarray, cols: np.ndarray) -> str:
    return f"spot {adata.obs_names[int(rows[0])]!r}, gene {adata.var_names[int(cols[0])]!r}"


def _bad_cells(X, mask_fn) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(number of cells where mask_fn(values) is True, their rows, cols, values) over the stored entries."""
    if sp.issparse(X):
        coo = X.tocoo()
        mask = mask_fn(coo.data)
        return int(mask.sum()), coo.row[mask], coo.col[mask], coo.data[mask]
    arr = np.asarray(X)
    mask = mask_fn(arr)
    rows, cols = np.nonzero(mask)
    return int(mask.sum()), rows, cols, arr[rows, cols]


#: more than this share of non-integer stored counts: the matrix looks normalised, not raw counts (warning)
NON_INTEGER_WARN_FRACTION = 0.01
#: a slide whose spots share pixel positions this much (share of spots not at a position of their own) is refused
MAX_SHARED_POSITION_FRACTION = 0.1


def add_warning(adata: AnnData, message: str) -> None:
    """Append ``message`` to ``uns["senca"]["warnings"]`` (once: a message already there is not repeated)."""
    senca = adata.uns.get("senca")
    if not isinstance(senca, dict):
        senca = adata.uns["senca"] = {}
    have = [str(w) for w in np.ravel(senca.get("warnings", []) if senca.get("warnings") is not None else [])]
    if message not in have:
        senca["warnings"] = have + [message]


def _non_integer_warning(X, n_obs: int) -> str | None:
    """The warning for a float matrix whose stored values are mostly not whole numbers (normalised / log data)."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    data = data[data != 0]
    if data.size == 0:
        return None
    frac = np.abs(data - np.round(data)) > 1e-4
    share = float(frac.mean())
    if share <= NON_INTEGER_WARN_FRACTION:
        return None
    totals = np.asarray(X.sum(axis=1)).ravel()
    return (f"counts: {share:.0%} of the non-zero counts are not whole numbers (e.g. {data[frac][0]:g}; median "
            f"spot total {np.median(totals):.3g}, largest value {data.max():.3g}): these look normalised or "
            "log-transformed, not raw counts; SENCA normalises them again, so the results may be wrong")


def check_spatial(adata: AnnData, *, slide: str | None = None, file: str | None = None) -> None:
    """Refuse spot positions ``obsm["spatial"]`` that cannot be a slide (:class:`SlideError`, field ``spatial``):
    not finite, all spots on one pixel, or more than 10 % of the spots sharing their position with another spot;
    a few shared positions are said in ``uns["senca"]["warnings"]``. No ``obsm["spatial"]``: nothing checked."""
    if "spatial" not in adata.obsm or adata.n_obs < 2:
        return
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise SlideError(f"spot positions must be (n, 2), got shape {xy.shape}", slide=slide, file=file,
                         field="spatial")
    xy = xy[:, :2]
    if not np.isfinite(xy).all():
        raise SlideError(f"{int((~np.isfinite(xy)).any(axis=1).sum())} spot position(s) are NaN/infinite",
                         slide=slide, file=file, field="spatial")
    uniq, counts = np.unique(xy, axis=0, return_counts=True)
    n = len(xy)
    if len(uniq) == 1:
        raise SlideError(f"all {n} spots are at the same pixel ({uniq[0][0]:g}, {uniq[0][1]:g}): the spot "
                         "positions are missing or wrong", slide=slide, file=file, field="spatial")
    shared = int(counts[counts > 1].sum())
    if shared > MAX_SHARED_POSITION_FRACTION * n:
        raise SlideError(f"{shared} of {n} spots share their pixel position with another spot (only "
                         f"{len(uniq)} distinct positions): the spot positions are wrong", slide=slide, file=file,
                         field="spatial")
    if shared:
        add_warning(adata, f"spatial: {shared} of {n} spots share their pixel position with another spot")


def validate_counts(adata: AnnData, *, slide: str | None = None, file: str | None = None) -> AnnData:
    """Check a slide's raw count matrix ``adata.X`` (spots × genes); raise :class:`SlideError` on bad input.

    Checks, each an error naming slide, file and field:

    - empty matrix (no spots or no genes) — field ``counts``;
    - non-numeric cells (an object / string matrix) — field ``counts``, first bad spot and gene named;
    - NaN or ±inf counts — field ``counts``;
    - negative counts — field ``counts``;
    - duplicate spot keys (``obs_names``) — field ``barcode`` on Visium, ``spot key`` otherwise;
    - every spot with zero total counts — field ``counts``.

    Spots with zero total counts when others have counts are **dropped** (a spot with no molecules carries
    no expression and breaks library-size normalisation); their number is written to
    ``uns["senca"]["n_zero_spots_dropped"]`` (always written, 0 when none; added to a stored value, so
    validating again, or reading back a written slide, keeps the original number). Because dropping spots makes a
    new AnnData, use the return value: it is ``adata`` itself when nothing was dropped, else a subset copy.

    ``slide`` / ``file`` default to ``uns["senca"]["slide_id"]`` / ``uns["senca"]["source_files"]["counts"]``.
    Non-integer counts are accepted (e.g. ambient-corrected counts); nothing is rounded, but more than 1 % of
    non-integer values (normalised / log data given as counts) is said in ``uns["senca"]["warnings"]``.
    Spot positions are checked too (:func:`check_spatial`: all spots on one pixel is an error, field
    ``spatial``).
    """
    senca = dict(adata.uns.get("senca", {}) or {})
    if slide is None:
        slide = senca.get("slide_id")
    if file is None:
        file = (senca.get("source_files") or {}).get("counts")
    key_field = "barcode" if senca.get("platform") == "visium" else "spot key"

    def fail(problem: str, field: str = "counts") -> SlideError:
        return SlideError(problem, slide=slide, file=file, field=field)

    n_obs, n_vars = adata.n_obs, adata.n_vars
    if n_obs == 0 or n_vars == 0 or adata.X is None:
        raise fail(f"empty count matrix ({n_obs} spots × {n_vars} genes)")

    X = adata.X
    dtype = X.dtype
    if dtype.kind == "c":
        raise fail("complex-valued counts (expected real, non-negative numbers)")
    check = getattr(X, "check_format", None) if sp.issparse(X) else None
    if check is not None:
        try:  # a corrupt stored sparse matrix (indices out of range …) would fail far from its file
            check(full_check=True)
        except ValueError as exc:
            raise fail(f"corrupt sparse count matrix ({exc})") from None
    if dtype.kind not in "biuf":
        flat = pd.Series(np.asarray(X.toarray() if sp.issparse(X) else X, dtype=object).ravel())
        coerced = pd.to_numeric(flat, errors="coerce")
        bad = (coerced.isna() & flat.notna()).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            r, c = divmod(i, n_vars)
            raise fail(f"{int(bad.sum())} non-numeric count(s), first {flat.iloc[i]!r} at "
                       f"{_first_cell(adata, np.array([r]), np.array([c]))}")
        X = sp.csr_matrix(coerced.to_numpy(dtype=np.float32).reshape(n_obs, n_vars))
        adata.X = X
    if dtype.kind == "f":
        n, rows, cols, vals = _bad_cells(X, lambda v: ~np.isfinite(v))
        if n:
            raise fail(f"{n} NaN/infinite count(s), first {vals[0]} at {_first_cell(adata, rows, cols)}")
    if dtype.kind in "if":
        n, rows, cols, vals = _bad_cells(X, lambda v: v < 0)
        if n:
            raise fail(f"{n} negative count(s), first {vals[0]:g} at {_first_cell(adata, rows, cols)}")

    names = adata.obs_names
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise fail(f"{len(dup)} duplicate {key_field}(s), first {dup[0]!r}", field=key_field)

    totals = np.asarray(X.sum(axis=1)).ravel()
    zero = totals == 0
    n_zero = int(zero.sum())
    if n_zero == n_obs:
        raise fail(f"all {n_obs} spots have zero counts")
    if n_zero:
        adata = adata[~zero].copy()
        senca = dict(adata.uns.get("senca", {}) or {})
    before = senca.get("n_zero_spots_dropped", 0)
    if isinstance(before, (bool, np.bool_)) or not isinstance(before, (int, np.integer)) or before < 0:
        raise SlideError(f"must be a non-negative integer, got {before!r}", slide=slide, file=file,
                         field="uns['senca']['n_zero_spots_dropped']")
    senca["n_zero_spots_dropped"] = int(before) + n_zero
    adata.uns["senca"] = senca
    if adata.X.dtype.kind == "f":
        warning = _non_integer_warning(adata.X, adata.n_obs)
        if warning:
            add_warning(adata, warning)
    check_spatial(adata, slide=slide, file=(senca.get("source_files") or {}).get("spots")
                  or (senca.get("source_files") or {}).get("positions") or file)
    return adata
