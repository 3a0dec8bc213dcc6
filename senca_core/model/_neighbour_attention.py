"""The neighbourhood attention's core, forward and backward written out: each spot pools its neighbours' values.

``pooled[i] = sum_j keep[i, :, j] * softmax_j(<q[i], K[nb[i, j]]>) * V[nb[i, j]]`` per head, over the ``k``
neighbours of spot ``i`` (``nb``: (n, k) indices; ``keep``: the attention dropout's scaled mask or None).

Autograd derives the same backward from the broadcast products of ``NeighbourhoodCrossAttention`` but lays its
intermediate gradients out transposed, so every step copied four (n, k, heads, head width) tensors back into shape
and multiplied the others at strides that defeat vectorisation: on DLPFC 151673 (3,639 spots, 7 neighbours) the
gradients of the attention's products, their copies and the neighbour gathers' scatters were over half an epoch.
Here each (n, k, h, d) product is formed once in (n, k, h, d) order, the softmax's backward is the closed form,
and the gathers' backward is one row sum per input (``_sum_rows``). Same mathematics, other floating-point
summation order (differences ~1e-6 on one call); measured in docs/BENCHMARKS.md (platform section, "2026-12-06,
thirteenth stop").

On CPU the spots are taken in blocks (:func:`block_rows`: about 1 MB per gathered (rows, k, h, d) tensor), so
each block's gathers and products stay in the core's cache instead of streaming 13 MB tensors through memory
(DLPFC: 3,639 x 7 x 128 floats each); the backward gathers its block again rather than keeping the whole gathered
tensors. Every output element is computed by the same operations in the same order as over all spots at once, and
the row sums run over the index in the same order, so the results are identical to the last bit (checked by
``tests/test_attention_kernel.py``). On DLPFC's shape the kernel takes half its time at one torch thread (a DLPFC
epoch 9-12 % less) and a few percent less at two (``bench/bench_attention.py``; docs/BENCHMARKS.md, "2026-12-07,
twenty-third stop"). On CUDA one block is all spots.
"""

from __future__ import annotations

import torch

#: bytes of one gathered (rows, k, h, d) float tensor per block on CPU: a core's share of cache
BLOCK_BYTES = 1 << 20

#: a gathered tensor up to this many blocks' bytes is one block: on a HER2ST section (346 spots, 1.6 MB) two blocks
#: cost more in per-call overhead than they save (the kernel 1.0 -> 1.2 ms at two threads)
ONE_BLOCK_UP_TO = 4


def block_rows(q: torch.Tensor, k: int) -> int:
    """Spots per block: all of them on CUDA and on small slides; on CPU as many as keep one gathered tensor near
    :data:`BLOCK_BYTES`."""
    n = q.shape[0]
    per_row = max(k * q.shape[1] * q.shape[2] * q.element_size(), 1)
    if q.is_cuda or n * per_row <= ONE_BLOCK_UP_TO * BLOCK_BYTES:
        return max(n, 1)
    return max(1, BLOCK_BYTES // per_row)


def _sum_rows(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``target[index[r]] += rows[r]`` for every r, in a fixed order: ``index_add_`` on CPU (serial over the index);
    on CUDA, where ``index_add_`` adds atomically in any order, the sort-based accumulating ``index_put_`` that
    torch's deterministic mode (on while training) chooses."""
    if target.is_cuda:
        return target.index_put_((index,), rows, accumulate=True)
    return target.index_add_(0, index, rows)


def _gather(source: torch.Tensor, flat: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    return source.index_select(0, flat).view(rows, k, *source.shape[1:])


class _NeighbourAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, keys, values, nb, keep):  # q (n, h, d) already scaled; keys, values (m, h, d)
        n, k = nb.shape
        pooled = q.new_empty(q.shape)
        w_all = q.new_empty((n, k, q.shape[1]))
        step = block_rows(q, k)
        for s in range(0, n, step):
            e = min(n, s + step)
            flat = nb[s:e].reshape(-1)
            kg, vg = _gather(keys, flat, e - s, k), _gather(values, flat, e - s, k)  # (rows, k, h, d)
            w = torch.softmax((kg * q[s:e].unsqueeze(1)).sum(-1), dim=1)  # (rows, k, h)
            w_all[s:e] = w
            wd = w if keep is None else w * keep[s:e].transpose(1, 2)
            pooled[s:e] = (wd.unsqueeze(-1) * vg).sum(1)  # (rows, h, d)
        ctx.save_for_backward(q, keys, values, nb, w_all, keep)
        return pooled, w_all.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_pooled, grad_weights):
        q, keys, values, nb, w_all, keep = ctx.saved_tensors
        n, k = nb.shape
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        gq = q.new_empty(q.shape) if need_q else None
        gk = q.new_zeros(keys.shape) if need_k else None
        gv = q.new_zeros(values.shape) if need_v else None
        grad_pooled = grad_pooled.contiguous()
        step = block_rows(q, k)
        for s in range(0, n, step):
            e = min(n, s + step)
            rows, flat, w = e - s, nb[s:e].reshape(-1), w_all[s:e]
            gp = grad_pooled[s:e].unsqueeze(1)  # (rows, 1, h, d)
            mask = None if keep is None else keep[s:e].transpose(1, 2)
            gw = (_gather(values, flat, rows, k) * gp).sum(-1)  # d pooled / d (dropped) weights: (rows, k, h)
            if mask is not None:
                gw = gw * mask
            if grad_weights is not None:  # the weights handed out (diagnostics) are rarely part of a loss
                gw = gw + grad_weights[s:e].transpose(1, 2)
            gs = w * (gw - (gw * w).sum(1, keepdim=True))  # through the softmax
            if need_q:
                gq[s:e] = (gs.unsqueeze(-1) * _gather(keys, flat, rows, k)).sum(1)
            if need_k:
                _sum_rows(gk, flat, (gs.unsqueeze(-1) * q[s:e].unsqueeze(1)).view(rows * k, *q.shape[1:]))
            if need_v:
                wd = w if mask is None else w * mask
                _sum_rows(gv, flat, (wd.unsqueeze(-1) * gp).view(rows * k, *gp.shape[2:]))
        return gq, gk, gv, None, None


def neighbour_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, neighbors: torch.Tensor,
                        keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (n, h, d), weights (n, h, k))``: ``q`` (n, h, d), scaled by the caller; ``keys``, ``values``
    (m, h, d); ``neighbors`` (n, k) row indices into them; ``keep`` (n, h, k): the attention dropout's mask
    (0 or 1 / (1 - p)) or None. The weights are the softmax before dropout."""
    return _NeighbourAttention.apply(q, keys, values, neighbors, keep)
