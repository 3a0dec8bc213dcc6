"""A tiny slide with expression and histology features on a square grid, and a tiny model configuration: for tests
of the training loop itself (seconds, no real data)."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from scipy.spatial import cKDTree

#: a network small enough to train in a fraction of a second
TINY = dict(epochs=3, hidden=16, embed_dim=8, n_heads=2, n_prototypes=4)


def toy_slide(n_side: int = 8) -> AnnData:
    """``n_side`` x ``n_side`` spots: 6 expression and 4 histology features (random), 8 neighbours each."""
    rng = np.random.default_rng(0)
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xy = np.c_[xx.ravel(), yy.ravel()].astype(float)
    a = AnnData(np.zeros((len(xy), 1), dtype=np.float32))
    a.obsm["spatial"] = xy
    a.obsm["X_pca"] = rng.normal(size=(len(xy), 6)).astype(np.float32)
    a.obsm["X_hist"] = rng.normal(size=(len(xy), 4)).astype(np.float32)
    a.obsm["spatial_neighbors"] = cKDTree(xy).query(xy, k=9)[1].astype(np.int64)
    a.uns["senca"] = {"slide_id": "toy", "grid": "square"}
    return a
