"""Which spots are scored, shared by the partition metrics."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from ..errors import SlideError

UNSCORED = {"undetermined", "na", "nan", "", "none"}


def scored_pairs(adata: AnnData, key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, truth) over spots with a usable label (``obs['label_scored']`` when present)."""
    slide = adata.uns.get("senca", {}).get("slide_id")
    for name in (key, label_key):
        if name not in adata.obs:
            raise SlideError(f"no column {name!r} in obs", slide=slide, field=f"obs['{name}']")
    truth = adata.obs[label_key].astype(str).to_numpy()
    if "label_scored" in adata.obs and label_key == "label":
        mask = adata.obs["label_scored"].to_numpy(dtype=bool)
    else:
        mask = np.array([t.strip().lower() not in UNSCORED for t in truth])
    if mask.sum() < 2:
        raise SlideError("fewer than 2 labelled spots to score", slide=slide, field=f"obs['{label_key}']")
    return adata.obs[key].astype(str).to_numpy()[mask], truth[mask]
