"""The region readout: what regions are clustered on.

A spot's fused embedding ``z`` is decoded back to expression (``x_hat = D_e(z)``): that reconstruction carries the
spatial context (neighbourhood attention) and, where there is an image, the histology guidance. Clustering only on
``x_hat`` smooths regions away; clustering only on the measured ``x`` drowns in ST noise. The readout keeps both,
side by side, the reconstruction at half the measured expression's scale (``SencaConfig.readout_expr_weight``,
0.5: chosen by leave one section out together with the spatially autocorrelated genes, docs/BENCHMARKS.md "Genes
chosen by spatial autocorrelation"), and adds the embedding's histology reconstruction ``h_hat = D_h(z)`` at a
fixed weight (``SencaConfig.readout_hist_weight``) where the slide has an image:
``r(i) = [x(i), v * x_hat(i), w * h_hat(i)]`` (image-only ablation: ``[h(i), h_hat(i)]``). This is our
interpretation of SENCA-st's "keep both modalities, neither drowned in noise nor smoothed away": regions alike in
histology but not in expression separate on ``x``/``x_hat``, regions alike in expression but not in histology on
``h_hat``.

The weight of ``h_hat`` is where the two labelled image sections disagree (docs/BENCHMARKS.md, "Tried on
2026-12-06, eleventh stop"): without the block (``readout_hist_weight`` 0) DLPFC 151673's lowres image (4 px per
spot) lifts its layers over the expression-only ablation (0.555 against 0.512) while HER2ST A1 (31 px per spot)
loses what its image adds (0.438 -> 0.419). Leave one section out keeps 0.25. The weight enters only the readout,
not the training: the same trained network gives both.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from ._batch import make_batch
from ._ensemble import members
from ._network import SencaModel


@torch.no_grad()
def readout(model: SencaModel, adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    """``(z, r)``: the fused embedding (n, embed_dim) and the region readout (see the module docstring). An
    ensemble (``SencaConfig.n_models`` > 1): its members' ``z`` and ``r`` side by side, member by member
    (``readout_blocks`` equal blocks, which ``tl.cluster``'s consensus cuts one by one)."""
    core = getattr(model, "module", model)
    core.eval()
    device = next(core.parameters()).device
    batch = make_batch(adata, core.config).to(device)
    parts = [_one(member, batch) for member in members(core)]
    z = torch.cat([p[0] for p in parts], dim=1)
    r = torch.cat([p[1] for p in parts], dim=1)
    return z.cpu().numpy().astype(np.float32), r.cpu().numpy().astype(np.float64)


def readout_blocks(model: SencaModel) -> int:
    """How many equal blocks the readout of ``model`` has: one per network."""
    return len(members(model))


def _one(model: SencaModel, batch) -> tuple[torch.Tensor, torch.Tensor]:
    z = model(batch)
    if model.decode_e is not None and batch.expr is not None:
        blocks = [batch.expr, model.config.readout_expr_weight * model.decode_e(z)]
        if model.decode_h is not None and model.config.readout_hist_weight > 0:
            # a slide without image gets the histology the model imputes from its expression and neighbours
            blocks.append(model.config.readout_hist_weight * model.decode_h(z))
    else:
        blocks = [batch.hist, model.decode_h(z)]
    return z, torch.cat(blocks, dim=1)
