"""Synthetic slides of a few tissue states in embedding space (no spatial layout), for the region-cut tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

#: tissue states 0..3: the origin and 4 along each of the first three axes
CENTRES = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0]])


def state_slide(sid: str, props, offset, *, scale: float = 1.0, noise: float = 0.5, n: int = 300,
                seed: int = 0) -> AnnData:
    """A slide whose spots are tissue states (rows of CENTRES) mixed in ``props``, the states' distances and the
    noise times ``scale``, all shifted by ``offset``; ``obsm["X_senca"]``, ``obs["truth"]``."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(len(props), size=n, p=props)
    X = scale * CENTRES[truth] + rng.normal(0, noise * scale, size=(n, 4)) + np.asarray(offset, dtype=float)
    a = AnnData(X=sp.csr_matrix((n, 0), dtype=np.float32))
    a.obsm["X_senca"] = X
    a.obs["truth"] = pd.Categorical(truth.astype(str))
    a.uns["senca"] = {"slide_id": sid}
    return a
