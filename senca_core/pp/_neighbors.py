"""``spatial_neighbors``: the k nearest spots of each spot on the array (grid-aware k)."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from scipy.spatial import cKDTree

from ..errors import ConfigError, SlideError
from ._utils import senca_uns, slide_name

#: neighbours (self excluded) of an interior spot: the 6 around a spot on a hexagonal (Visium)
#: array, the 8 (4 edge + 4 diagonal) on a square (legacy ST) array.
GRID_K = {"hex": 6, "square": 8}


def spatial_neighbors(adata: AnnData, k: int | None = None, *, grid: str | None = None) -> None:
    """Index of each spot's ``k`` nearest spots by ``obsm["spatial"]``, the spot itself first.

    ``k`` counts the neighbours, not the spot: the default is 6 on a hexagonal grid and 8 on a
    square grid (the adjacent spots of an interior spot), so the array has 7 / 9 columns. The grid
    comes from ``grid``, else ``uns["senca"]["grid"]``, else it is inferred from the geometry
    (median number of spots within 1.2 × the nearest-neighbour spacing: ~6 → hex, ~4 → square).
    Ties at equal distance are broken by spot order (cKDTree). Column 0 is always the spot itself,
    even when another spot sits at the same position.

    Writes
    ------
    ``obsm["spatial_neighbors"]`` int64 (n, k + 1), column 0 = the spot itself, columns 1.. by
    increasing distance; ``uns["spatial_neighbors"]`` = ``{"k", "grid", "spacing_px"}`` where
    ``spacing_px`` is the median centre-to-centre distance of nearest spots.

    Raises
    ------
    SlideError
        no / malformed ``obsm["spatial"]``, non-finite coordinates, or ``n_spots <= k``.
    """
    slide = slide_name(adata)
    coords = spatial_coords(adata)
    if grid is None:
        grid = senca_uns(adata).get("grid")
    if grid is not None and grid not in GRID_K:
        raise ConfigError("grid", f"unknown grid {grid!r} (hex or square)")
    spacing = grid_spacing(coords)
    if grid is None:
        grid = infer_grid(coords, spacing)
    if k is None:
        k = GRID_K[grid]
    if int(k) < 1:
        raise ConfigError("k", f"must be a positive integer, got {k!r}")
    k = int(k)
    if adata.n_obs <= k:
        raise SlideError(f"{adata.n_obs} spots are too few for {k} spatial neighbours per spot",
                         slide=slide, field="spatial")
    adata.obsm["spatial_neighbors"] = knn_with_self(coords, k)
    adata.uns["spatial_neighbors"] = {"k": k, "grid": str(grid), "spacing_px": float(spacing)}
    return None


def spatial_coords(adata: AnnData) -> np.ndarray:
    """``obsm["spatial"]`` as float64 (n, 2), validated (SlideError otherwise)."""
    slide = slide_name(adata)
    if "spatial" not in adata.obsm:
        raise SlideError("no spot coordinates", slide=slide, field="obsm['spatial']")
    c = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 2:
        raise SlideError(f"expected (n, 2) coordinates, got shape {c.shape}", slide=slide,
                         field="obsm['spatial']")
    c = c[:, :2]
    if not np.isfinite(c).all():
        raise SlideError(f"{int((~np.isfinite(c)).any(axis=1).sum())} spots have non-finite coordinates",
                         slide=slide, field="obsm['spatial']")
    return c


def knn_with_self(coords: np.ndarray, k: int) -> np.ndarray:
    """(n, k+1) int64: each row the spot itself, then its k nearest other spots."""
    n = coords.shape[0]
    _, idx = cKDTree(coords).query(coords, k=k + 1)
    idx = np.asarray(idx, dtype=np.int64).reshape(n, k + 1)
    me = np.arange(n, dtype=np.int64)
    bad = np.flatnonzero(idx[:, 0] != me)
    for i in bad:  # duplicate positions: force self to column 0
        row = idx[i][idx[i] != i][:k]
        idx[i] = np.concatenate(([i], row))
    return idx


def grid_spacing(coords: np.ndarray) -> float:
    """Median distance from a spot to its nearest other spot (the array pitch in coordinate units)."""
    if coords.shape[0] < 2:
        return 1.0
    d, _ = cKDTree(coords).query(coords, k=2)
    d = d[:, 1]
    d = d[d > 0]
    return float(np.median(d)) if d.size else 1.0


def infer_grid(coords: np.ndarray, spacing: float | None = None) -> str:
    """``"hex"`` or ``"square"`` from how many spots lie within 1.2 pitches of a spot."""
    if spacing is None:
        spacing = grid_spacing(coords)
    tree = cKDTree(coords)
    counts = np.array([len(r) - 1 for r in tree.query_ball_point(coords, 1.2 * spacing)])
    return "hex" if np.median(counts) >= 5 else "square"


def adjacency_edges(adata: AnnData, max_dist: float = 1.5) -> tuple[np.ndarray, np.ndarray, float]:
    """Edges (i, j) of the spot-adjacency graph, both directions, and the pitch.

    Uses ``obsm["spatial_neighbors"]`` (computed on the fly, not stored, when absent) and keeps only
    pairs closer than ``max_dist`` × the pitch, so that spots on a tissue edge are not tied to far
    spots. Symmetric.
    """
    coords = spatial_coords(adata)
    if "spatial_neighbors" in adata.obsm:
        nb = np.asarray(adata.obsm["spatial_neighbors"], dtype=np.int64)
    else:
        grid = adata.uns.get("senca", {}).get("grid") if isinstance(adata.uns.get("senca"), dict) else None
        grid = grid if grid in GRID_K else infer_grid(coords)
        k = min(GRID_K[grid], max(adata.n_obs - 1, 1))
        nb = knn_with_self(coords, k)
    spacing = adata.uns.get("spatial_neighbors", {}).get("spacing_px") if "spatial_neighbors" in adata.obsm else None
    spacing = float(spacing) if spacing else grid_spacing(coords)
    i = np.repeat(np.arange(nb.shape[0]), nb.shape[1] - 1)
    j = nb[:, 1:].ravel()
    d = np.linalg.norm(coords[i] - coords[j], axis=1)
    keep = (d <= max_dist * spacing) & (i != j)
    i, j = i[keep], j[keep]
    ii = np.concatenate([i, j])
    jj = np.concatenate([j, i])
    pairs = np.unique(np.stack([ii, jj], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], spacing
