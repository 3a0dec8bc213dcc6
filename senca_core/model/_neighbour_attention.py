"""The neighbourhood attention's core, forward and backward written out: each spot pools its neighbours' values.

``pooled[i] = sum_j keep[i, :, j] * softmax_j(<q[i], K[nb[i, j]]>) * V[nb[i, j]]`` per head, over the ``k``
neighbours of spot ``i`` (``nb``: (n, k) indices; ``keep``: the attention dropout's scaled mask or None).

Autograd derives the same backward from the broadcast products of ``NeighbourhoodCrossAttention`` but lays its
intermediate gradients out transposed, so every step copied four (n, k, heads, head width) tensors back into shape
and multiplied the others at strides that defeat vectorisation: on DLPFC 151673 (3,639 spots, 7 neighbours) the
gradients of the attention's products, their copies and the neighbour gathers' scatters were over half an epoch.
Here each (n, k, h, d) product is formed once in (n, k, h, d) order, the softmax's backward is the closed form,
and the gathers' backward is one row sum per input (``_sum_rows``). Same mathematics, other floating-point summation order
(differences ~1e-6 on one call); measured in docs/BENCHMARKS.md (platform section, "2026-12-06, thirteenth stop").
"""

from __future__ import annotations

import torch


def _sum_rows(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``target[index[r]] += rows[r]`` for every r, in a fixed order: ``index_add_`` on CPU (serial over the index);
    on CUDA, where ``index_add_`` adds atomically in any order, the sort-based accumulating ``index_put_`` that
    torch's deterministic mode (on while training) chooses."""
    if target.is_cuda:
        return target.index_put_((index,), rows, accumulate=True)
    return target.index_add_(0, index, rows)


class _NeighbourAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, keys, values, nb, keep):  # q (n, h, d) already scaled; keys, values (m, h, d)
        n, k = nb.shape
        flat = nb.reshape(-1)
        kg = keys.index_select(0, flat).view(n, k, *keys.shape[1:])  # (n, k, h, d)
        vg = values.index_select(0, flat).view(n, k, *values.shape[1:])
        w = torch.softmax((kg * q.unsqueeze(1)).sum(-1), dim=1)  # (n, k, h)
        wd = w if keep is None else w * keep.transpose(1, 2)
        pooled = (wd.unsqueeze(-1) * vg).sum(1)  # (n, h, d)
        ctx.save_for_backward(q, kg, vg, nb, w, keep)
        ctx.sources = (keys.shape[0], values.shape[0])
        return pooled, w.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_pooled, grad_weights):
        q, kg, vg, nb, w, keep = ctx.saved_tensors
        n, k = nb.shape
        flat = nb.reshape(-1)
        gp = grad_pooled.contiguous().unsqueeze(1)  # (n, 1, h, d)
        mask = None if keep is None else keep.transpose(1, 2)
        gw = (vg * gp).sum(-1)  # d pooled / d (dropped) weights: (n, k, h)
        if mask is not None:
            gw = gw * mask
        if grad_weights is not None:  # the weights handed out (diagnostics) are rarely part of a loss
            gw = gw + grad_weights.transpose(1, 2)
        gs = w * (gw - (gw * w).sum(1, keepdim=True))  # through the softmax
        gq = gk = gv = None
        if ctx.needs_input_grad[0]:
            gq = (gs.unsqueeze(-1) * kg).sum(1)
        if ctx.needs_input_grad[1]:
            gk = _sum_rows(q.new_zeros((ctx.sources[0],) + tuple(q.shape[1:])), flat,
                           (gs.unsqueeze(-1) * q.unsqueeze(1)).view(n * k, *q.shape[1:]))
        if ctx.needs_input_grad[2]:
            wd = w if mask is None else w * mask
            gv = _sum_rows(gp.new_zeros((ctx.sources[1],) + tuple(gp.shape[2:])), flat,
                           (wd.unsqueeze(-1) * gp).view(n * k, *gp.shape[2:]))
        return gq, gk, gv, None, None


def neighbour_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, neighbors: torch.Tensor,
                        keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (n, h, d), weights (n, h, k))``: ``q`` (n, h, d), scaled by the caller; ``keys``, ``values``
    (m, h, d); ``neighbors`` (n, k) row indices into them; ``keep`` (n, h, k): the attention dropout's mask
    (0 or 1 / (1 - p)) or None. The weights are the softmax before dropout."""
    return _NeighbourAttention.apply(q, keys, values, neighbors, keep)
