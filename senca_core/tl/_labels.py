"""Label-level steps shared by the region cuts: a Potts spatial prior, majority refinement, size-ordered ids."""

from __future__ import annotations

import numpy as np
import pandas as pd


def spatial_prior_labels(log_post: np.ndarray, neighbors: np.ndarray, beta: float, iters: int = 10) -> np.ndarray:
    """Labels under a Potts spatial prior (iterated conditional modes, as HMRF / BayesSpace-style methods do):
    each spot takes the component maximising its log posterior plus ``beta`` per spatial neighbour (row 0 of
    ``neighbors`` is the spot itself, excluded) already in that component; all spots update together, until
    nothing changes or ``iters`` rounds. ``beta = 0`` is the plain arg-max."""
    labels = log_post.argmax(1)
    if beta <= 0:
        return labels
    nb = np.asarray(neighbors)[:, 1:]
    rows = np.arange(len(labels))
    for _ in range(iters):
        counts = np.zeros_like(log_post)
        for j in range(nb.shape[1]):  # one neighbour column at a time: each row once, no repeated index
            counts[rows, labels[nb[:, j]]] += 1.0
        new = (log_post + beta * counts).argmax(1)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def refine_labels(labels: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Spatial refinement: a spot whose neighbours (excluding itself) mostly agree on another region takes it."""
    nb = neighbors[:, 1:]
    out = labels.copy()
    for i in range(len(labels)):
        vals, counts = np.unique(labels[nb[i]], return_counts=True)
        top = counts.argmax()
        if vals[top] != labels[i] and counts[top] > nb.shape[1] / 2:
            out[i] = vals[top]
    return out


def order_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber regions 0..k-1 by decreasing pooled size (stable, reproducible ids)."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = {old: new for new, old in enumerate(order)}
    return np.array([remap[x] for x in labels])


def write_regions(adatas, raw: np.ndarray, *, refine: bool, key_added: str) -> tuple[dict, list[str]]:
    """Pooled raw labels -> each slide refined over its ``obsm['spatial_neighbors']`` (when ``refine``), ids
    ordered by pooled size, written to ``obs[key_added]`` (categorical) of every slide. Returns the raw -> id map
    and the categories."""
    start, per_slide = 0, []
    for a in adatas:
        lab = raw[start:start + a.n_obs]
        start += a.n_obs
        if refine and "spatial_neighbors" in a.obsm:
            lab = refine_labels(lab, np.asarray(a.obsm["spatial_neighbors"]))
        per_slide.append(lab)
    raw = np.concatenate(per_slide)
    pooled = order_by_size(raw)
    categories = [str(i) for i in range(int(pooled.max()) + 1)]
    start = 0
    for a in adatas:
        a.obs[key_added] = pd.Categorical(pooled[start:start + a.n_obs].astype(str), categories=categories)
        start += a.n_obs
    return {int(r): int(p) for r, p in zip(raw, pooled)}, categories
