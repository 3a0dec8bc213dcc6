"""SlideBatch: one slide's model inputs as tensors (the unit of a training step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from anndata import AnnData

from ..errors import SlideError
from ._config import SencaConfig


@dataclass
class SlideBatch:
    """Tensors of one slide.

    ``expr`` (n, de) scaled expression features, ``hist`` (n, dh) standardised histology features or ``None``
    (no image for this slide, or the image branch is off), ``neighbors`` (n, k+1) indices of each spot's spatial
    neighbourhood N(i), column 0 being the spot itself.
    """

    expr: torch.Tensor | None
    hist: torch.Tensor | None
    neighbors: torch.Tensor
    slide_id: str = "?"
    _neighbourhood_means: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_spots(self) -> int:
        return int(self.neighbors.shape[0])

    def neighbourhood_mean(self, name: str) -> torch.Tensor:
        """The mean input over each spot's N(i) of one modality (``"expr"`` or ``"hist"``): the hierarchy's
        neighbourhood-scale target, a constant of the slide, so computed once and kept."""
        if name not in self._neighbourhood_means:
            self._neighbourhood_means[name] = getattr(self, name)[self.neighbors].mean(dim=1)
        return self._neighbourhood_means[name]

    def to(self, device: str | torch.device) -> "SlideBatch":
        move = (lambda t: None if t is None else t.to(device))
        return SlideBatch(move(self.expr), move(self.hist), self.neighbors.to(device), self.slide_id)


def _slide_id(adata: AnnData) -> str:
    return str(adata.uns.get("senca", {}).get("slide_id", "?"))


def _finite(values: np.ndarray, *, slide: str, field: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise SlideError(f"{len(rows)} spots have NaN/inf features (first rows: {rows[:5].tolist()})",
                         slide=slide, field=field)
    return values


def scale_expression(values: np.ndarray) -> np.ndarray:
    """Centre and divide by one global scale, so the PCA geometry (relative variances) is kept."""
    values = values - values.mean(axis=0, keepdims=True)
    scale = float(np.sqrt((values ** 2).sum(axis=1).mean())) or 1.0
    return (values / scale * np.sqrt(values.shape[1])).astype(np.float32)


def standardise_histology(values: np.ndarray) -> np.ndarray:
    """Per-slide z-score per feature (removes stain and scanner offsets between slides), clipped to +-5."""
    sd = values.std(axis=0, keepdims=True)
    sd[sd < 1e-6] = 1.0
    return np.clip((values - values.mean(axis=0, keepdims=True)) / sd, -5.0, 5.0).astype(np.float32)


def make_batch(adata: AnnData, config: SencaConfig) -> SlideBatch:
    """Turn one preprocessed slide into a :class:`SlideBatch` (on the CPU; ``.to(device)`` moves it)."""
    slide = _slide_id(adata)
    if config.neighbors_key not in adata.obsm:
        raise SlideError("spatial neighbourhoods missing: run senca_core.pp.spatial_neighbors first",
                         slide=slide, field=f"obsm['{config.neighbors_key}']")
    neighbors = np.asarray(adata.obsm[config.neighbors_key])
    n = adata.n_obs
    if neighbors.ndim != 2 or neighbors.shape[0] != n or neighbors.shape[1] < 2:
        raise SlideError(f"expected an (n_spots, k+1) index array with k >= 1, got shape {neighbors.shape}",
                         slide=slide, field=f"obsm['{config.neighbors_key}']")
    if neighbors.min() < 0 or neighbors.max() >= n:
        raise SlideError("neighbour index out of range", slide=slide, field=f"obsm['{config.neighbors_key}']")

    expr = None
    if config.use_expr:
        if config.expr_key not in adata.obsm:
            raise SlideError("expression features missing: run senca_core.pp.preprocess first",
                             slide=slide, field=f"obsm['{config.expr_key}']")
        expr = torch.from_numpy(scale_expression(_finite(adata.obsm[config.expr_key], slide=slide,
                                                          field=f"obsm['{config.expr_key}']")))
    hist = None
    if config.use_hist and config.hist_key in adata.obsm:
        hist = torch.from_numpy(standardise_histology(_finite(adata.obsm[config.hist_key], slide=slide,
                                                               field=f"obsm['{config.hist_key}']")))
    if expr is None and hist is None:
        raise SlideError("the image branch is on but this slide has no histology features (no image?)",
                         slide=slide, field=f"obsm['{config.hist_key}']")
    return SlideBatch(expr=expr, hist=hist,
                      neighbors=torch.from_numpy(neighbors.astype(np.int64)), slide_id=slide)
