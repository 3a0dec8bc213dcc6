"""``microenvironment``: what surrounds the tumour, ring by ring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError
from ..pp._neighbors import adjacency_edges
from ._markers import DEFAULT_TUMOUR_GENES, _groups, resolve_tumour_regions


def microenvironment(
    adata: AnnData,
    key: str = "region",
    *,
    tumour_regions: Sequence[str] | None = None,
    rings: int = 2,
    tumour_genes: Sequence[str] = DEFAULT_TUMOUR_GENES,
    tumour_threshold: float = 0.5,
) -> pd.DataFrame:
    """Region composition of the rings of spots around the tumour.

    Ring ``r`` (1..``rings``) = the non-tumour spots at ``r`` adjacency steps from the nearest
    tumour spot (ring 1: touching the tumour; ring 2: neighbours of ring 1 not in the tumour or
    ring 1, …), on the adjacency graph of ``obsm["spatial_neighbors"]`` (neighbours within 1.5
    grid pitches; computed on the fly when absent). The row ``"beyond"`` holds the non-tumour spots
    further away (or not connected), ``"all_non_tumour"`` all of them, for comparison.
    Tumour regions: ``tumour_regions`` or, when None, :func:`senca_core.tl.tumour_like_regions`.
    NA spots are ignored.

    Returns
    -------
    DataFrame indexed by ``ring1``, ``ring2``, …, ``beyond``, ``all_non_tumour`` with columns
    ``n_spots`` then one column per non-tumour region (fraction of the row's spots; rows with no
    spot are 0). ``df.attrs`` holds ``tumour_regions``, ``tumour_rule``, ``key`` and
    ``enrichment`` (ring1 fractions / all_non_tumour fractions, a dict). Nothing is written to adata.
    """
    if int(rings) < 1:
        raise ConfigError("rings", f"must be >= 1, got {rings}")
    rings = int(rings)
    groups = _groups(adata, key)
    tum, how = resolve_tumour_regions(adata, key, tumour_regions, tumour_genes, tumour_threshold)
    lab = groups.astype(object).where(groups.notna(), None).to_numpy()
    valid = np.array([v is not None for v in lab])
    is_t = valid & np.isin(lab.astype(str), tum)
    i, j, _ = adjacency_edges(adata)
    n = adata.n_obs
    hop = np.full(n, np.inf)
    g = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    hop[is_t] = 0.0
    reached = is_t.copy()
    for r in range(1, rings + 1):  # breadth-first, ring by ring
        new = (np.asarray(g @ reached.astype(np.float64)).ravel() > 0) & ~reached
        hop[new] = r
        reached |= new
    others = sorted({str(v) for v, ok in zip(lab, valid) if ok} - set(tum))
    rows = {}
    non_t = valid & ~is_t
    for r in range(1, rings + 1):
        rows[f"ring{r}"] = non_t & (hop == r)
    rows["beyond"] = non_t & ~(hop <= rings)
    rows["all_non_tumour"] = non_t
    data = []
    labs = lab.astype(str)
    for name, m in rows.items():
        tot = int(m.sum())
        rec = {"n_spots": tot}
        for reg in others:
            rec[reg] = float((labs[m] == reg).sum() / tot) if tot else 0.0
        data.append(rec)
    df = pd.DataFrame(data, index=list(rows), columns=["n_spots", *others])
    base = df.loc["all_non_tumour", others]
    ring1 = df.loc["ring1", others]
    df.attrs["tumour_regions"] = list(tum)
    df.attrs["tumour_rule"] = how
    df.attrs["key"] = key
    df.attrs["enrichment"] = {reg: float(ring1[reg] / base[reg]) if base[reg] > 0 else 0.0 for reg in others}
    return df
