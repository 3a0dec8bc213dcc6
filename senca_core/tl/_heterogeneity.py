"""``heterogeneity``: how many regions, how mixed, how the tumour is split and spread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.sparse.csgraph import connected_components

from ..errors import SlideError
from ..pp._neighbors import adjacency_edges, spatial_coords
from ._markers import DEFAULT_TUMOUR_GENES, _groups, _slide, resolve_tumour_regions


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def heterogeneity(
    adata: AnnData,
    key: str = "region",
    *,
    tumour_regions: Sequence[str] | None = None,
    tumour_genes: Sequence[str] = DEFAULT_TUMOUR_GENES,
    tumour_threshold: float = 0.5,
    min_component: int = 3,
) -> dict[str, Any]:
    """Summary numbers of one slide's regions in ``obs[key]`` (NA spots are left out).

    Composition: ``proportions`` {region: fraction}, ``shannon`` (nats, -Σ p ln p),
    ``shannon_evenness`` (shannon / ln R), ``simpson`` (Gini-Simpson, 1 - Σ p²),
    ``inverse_simpson`` (1 / Σ p², the effective number of regions).

    Spatial mixing, on the spot adjacency graph (``obsm["spatial_neighbors"]``, computed on the
    fly when absent, keeping only neighbours within 1.5 grid pitches so that tissue edges do not
    link far spots): ``neighbour_mixing`` = mean over spots of the fraction of adjacent spots in
    another region; ``mixing_per_region`` the same per region; ``neighbour_entropy`` = mean over
    spots of the Shannon entropy (nats) of the region composition of the spot + its adjacent spots.

    Tumour: ``tumour_regions`` are given by the caller, else chosen by
    :func:`senca_core.tl.tumour_like_regions` (``tumour_genes``, ``tumour_threshold``; rule recorded
    in ``tumour_rule``). ``tumour_fraction``; ``n_tumour_regions`` (tumour-like sub-regions =
    labels); ``tumour_components`` = connected components of tumour spots on the adjacency graph
    with at least ``min_component`` spots (``n_tumour_components``, ``tumour_component_sizes``
    sorted descending, ``n_tumour_fragments`` = all components incl. smaller ones);
    ``tumour_spread`` = mean distance of tumour spots to the tumour centroid in grid pitches
    (centre-to-centre spot distances; ``tumour_spread_px`` in pixels), and per tumour region
    ``tumour_subregions`` {region: {n_spots, fraction, n_components, largest_component, spread}}.

    Returns a JSON-friendly dict (floats, ints, str, lists, dicts). Nothing is written to adata.
    """
    groups = _groups(adata, key)
    valid = groups.notna().to_numpy()
    if not valid.any():
        raise SlideError(f"obs[{key!r}] has no value", slide=_slide(adata), field=f"obs['{key}']")
    lab = groups.to_numpy(dtype=object)
    counts = pd.Series(lab[valid]).value_counts()
    regions = [str(r) for r in counts.index]
    p = (counts / counts.sum()).to_numpy(dtype=np.float64)
    R = len(regions)
    out: dict[str, Any] = {
        "key": key,
        "n_spots": int(valid.sum()),
        "n_regions": R,
        "proportions": {r: float(x) for r, x in zip(regions, p)},
        "shannon": _entropy(p),
        "shannon_evenness": _entropy(p) / np.log(R) if R > 1 else 0.0,
        "simpson": float(1.0 - (p**2).sum()),
        "inverse_simpson": float(1.0 / (p**2).sum()),
    }

    # ---- mixing on the adjacency graph --------------------------------------------------------
    coords = spatial_coords(adata)
    i, j, pitch = adjacency_edges(adata)
    code = {r: k for k, r in enumerate(regions)}
    y = np.array([code.get(str(v), -1) if v is not pd.NA and v is not None else -1 for v in lab])
    both = (y[i] >= 0) & (y[j] >= 0)
    i2, j2 = i[both], j[both]
    n = adata.n_obs
    deg = np.bincount(i2, minlength=n).astype(np.float64)
    diff = np.bincount(i2, weights=(y[i2] != y[j2]).astype(np.float64), minlength=n)
    has = (deg > 0) & (y >= 0)
    frac_other = np.divide(diff, deg, out=np.zeros(n), where=deg > 0)
    out["neighbour_mixing"] = float(frac_other[has].mean()) if has.any() else 0.0
    out["mixing_per_region"] = {r: float(frac_other[has & (y == code[r])].mean())
                                if (has & (y == code[r])).any() else 0.0 for r in regions}
    comp = sp.csr_matrix((np.ones(len(i2)), (i2, y[j2])), shape=(n, R)).toarray()
    comp[np.flatnonzero(y >= 0), y[y >= 0]] += 1.0  # the spot itself
    tot = comp.sum(axis=1, keepdims=True)
    q = np.divide(comp, tot, out=np.zeros_like(comp), where=tot > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
    out["neighbour_entropy"] = float(ent[y >= 0].mean())

    # ---- tumour --------------------------------------------------------------------------------
    tum, how = resolve_tumour_regions(adata, key, tumour_regions, tumour_genes, tumour_threshold)
    out["tumour_regions"] = list(tum)
    out["tumour_rule"] = how
    out["pitch_px"] = float(pitch)
    is_t = np.isin(y, [code[r] for r in tum if r in code])
    out["tumour_fraction"] = float(is_t.sum() / valid.sum())
    out["n_tumour_regions"] = len(tum)
    sizes, n_frag = _components(is_t, i2, j2, n)
    big = [s for s in sizes if s >= min_component]
    out["n_tumour_components"] = len(big)
    out["n_tumour_fragments"] = int(n_frag)
    out["tumour_component_sizes"] = [int(s) for s in big]
    out["min_component"] = int(min_component)
    if is_t.any():
        c = coords[is_t]
        d = np.linalg.norm(c - c.mean(axis=0), axis=1)
        out["tumour_spread_px"] = float(d.mean())
        out["tumour_spread"] = float(d.mean() / pitch)
    else:
        out["tumour_spread_px"] = 0.0
        out["tumour_spread"] = 0.0
    sub: dict[str, Any] = {}
    for r in tum:
        m = y == code[r]
        s_sizes, _ = _components(m, i2, j2, n)
        c = coords[m]
        sub[r] = {
            "n_spots": int(m.sum()),
            "fraction": float(m.sum() / valid.sum()),
            "n_components": int(sum(1 for s in s_sizes if s >= min_component)),
            "largest_component": int(s_sizes[0]) if s_sizes else 0,
            "spread": float(np.linalg.norm(c - c.mean(axis=0), axis=1).mean() / pitch) if m.any() else 0.0,
        }
    out["tumour_subregions"] = sub
    return out


def _components(mask: np.ndarray, i: np.ndarray, j: np.ndarray, n: int) -> tuple[list[int], int]:
    """Sizes (descending) of connected components of the spots in ``mask`` on edges (i, j)."""
    if not mask.any():
        return [], 0
    keep = mask[i] & mask[j]
    g = sp.csr_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    sizes = np.bincount(lab[mask])
    sizes = np.sort(sizes[sizes > 0])[::-1]
    return [int(s) for s in sizes], int(len(sizes))
