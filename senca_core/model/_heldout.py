"""``heldout_r2``: how well a trained model predicts the expression of spots it is not shown (no labels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anndata import AnnData

from ._batch import make_batch
from ._ensemble import members
from ._network import SencaModel


@torch.no_grad()
def heldout_r2(model: SencaModel, adata: AnnData | Sequence[AnnData], *, fraction: float = 0.2,
               seed: int = 12345) -> float:
    """R² of the expression features of a fixed random ``fraction`` of spots, hidden behind the mask token and
    predicted from the spot's histology and its neighbours (pooled over the slides given).

    The same spots are hidden for every model (``seed``), so models trained with different settings are compared
    on one task; 1 is perfect, 0 is no better than the mean spot. Uses no label. NaN for an image-only model.
    """
    core = getattr(model, "module", model)
    nets = members(core)
    if nets[0].decode_e is None:
        return float("nan")
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    err = total = 0.0
    generator = torch.Generator().manual_seed(int(seed))
    for a in [adata] if isinstance(adata, AnnData) else list(adata):
        batch = make_batch(a, core.config).to(device)
        hidden = (torch.rand(batch.n_spots, generator=generator) < fraction).to(device)
        if batch.expr is None or not hidden.any():
            continue
        truth = batch.expr[hidden]
        for net in nets:  # an ensemble: every member predicts the same hidden spots (its R² is their mean)
            z = net.encode(batch, masks=(hidden, None))
            err += float(((net.decode_e(z)[hidden] - truth) ** 2).sum()) / len(nets)
        total += float(((truth - batch.expr.mean(0)) ** 2).sum())
    if was_training:
        core.train()
    return 1.0 - err / total if total > 0 else float("nan")
