"""The neighbourhood attention's core, forward and backward written out: each spot pools its neighbours' values.

``pooled[i] = sum_j keep[i, :, j] * softmax_j(<q[i], K[nb[i, j]]>) * V[nb[i, j]]`` per head, over the ``k``
neighbours of spot ``i`` (``nb``: (n, k) indices; ``keep``: the attention dropout's scaled mask or None).

Two kernels compute it; :func:`neighbour_attention` picks one.

**On CPU, sparse rows** (:class:`_SparseNeighbourAttention`). The neighbourhoods are an (n h) x (m h) sparse
matrix, one row per spot and head, built once per neighbour tensor (:class:`_Pattern`). The scores and the
weights' gradient are dense products sampled at its entries (``torch.sparse.sampled_addmm``); the pooling and the
other three gradients are sparse x dense products (the transposed pattern for the keys' and values' gradients).
No (n, k, h, d) tensor is gathered or multiplied.
- Computed in float32 even inside the training's bfloat16 autocast: CPU sparse products have no bfloat16. The
  inputs are cast on entry and the results cast back.
- Deterministic, with the same bits at any torch thread count: each sum runs over one row's entries in order.
- Measured (docs/BENCHMARKS.md, platform section, "twenty-eighth stop"; ``bench/bench_attention.py``), one torch
  thread: the kernel 2.8x faster on DLPFC 151673's shape and 2.4x on a HER2ST section's, a training epoch 22 %
  shorter on DLPFC and 14 % on HER2ST A1.

**The gathered kernel** (:class:`_NeighbourAttention`): on CUDA (any device but the CPU), and on CPU for a neighbour
tensor in which a spot lists the same neighbour twice (a sparse row holds each column once) or with
:data:`SPARSE_ON_CPU` off.

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

import warnings

import torch

#: torch's sparse rows are a beta API, and it says so once per process; this module uses only their stable core
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

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


class _Pattern:
    """One neighbour tensor's attention as sparse rows: row ``(i, head)`` of an (n h) x (m h) matrix holds spot
    ``i``'s ``k`` neighbours ``(nb[i, j], head)``, each row's columns sorted (the layout compressed sparse rows
    require); the transposed pattern's rows list each key's queries. Built once per neighbour tensor and head count
    (:func:`_pattern`), since a slide's neighbourhoods do not change while it trains."""

    def __init__(self, nb: torch.Tensor, h: int, m: int, order: torch.Tensor, sorted_nb: torch.Tensor) -> None:
        n, k = nb.shape
        self.n, self.m, self.h, self.k = n, m, h, k
        self.order = order.unsqueeze(1).expand(n, h, k)  # sorted position -> the caller's neighbour column
        self.inverse = torch.argsort(order, dim=1).unsqueeze(1).expand(n, h, k)
        heads = torch.arange(h, device=nb.device).view(1, h, 1)
        col = (sorted_nb.unsqueeze(1) * h + heads).reshape(-1)
        self.t_perm = torch.argsort(col, stable=True)  # the transposed rows' entries, queries in order
        t_crow = torch.cat([col.new_zeros(1), torch.cumsum(torch.bincount(col, minlength=m * h), 0)])
        index = torch.int32 if max(n, m) * h * k < 2**31 else torch.int64  # int32: what the sparse library takes
        self.col, self.t_crow = col.to(index), t_crow.to(index)
        self.crow = torch.arange(0, n * h * k + 1, k, device=nb.device, dtype=index)
        self.t_col = torch.arange(n * h, device=nb.device, dtype=index).repeat_interleave(k)[self.t_perm]
        self.ones = self.rows(torch.ones(n * h * k, device=nb.device))

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """The (n h, m h) sparse matrix with ``values`` (n, h, k) at the pattern's entries."""
        return torch.sparse_csr_tensor(self.crow, self.col, values.reshape(-1), size=(self.n * self.h, self.m * self.h),
                                       check_invariants=False)

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """The (m h, n h) transpose of :meth:`rows` with the same ``values``."""
        return torch.sparse_csr_tensor(self.t_crow, self.t_col, values.reshape(-1).index_select(0, self.t_perm),
                                       size=(self.m * self.h, self.n * self.h), check_invariants=False)

    def products(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``<a[i, head], b[nb[i, j], head]>`` at every entry: (n, h, k), neighbours in sorted order."""
        d = a.shape[-1]
        out = torch.sparse.sampled_addmm(self.ones.to(a.dtype), a.reshape(-1, d), b.reshape(-1, d).t(), beta=0.0)
        return out.values().view(self.n, self.h, self.k)


#: sparse patterns per neighbour tensor (weakly held: a slide's batch going away frees its patterns)
_PATTERNS = torch.utils.weak.WeakIdKeyDictionary()

#: the sparse kernel on CPU (``bench/bench_attention.py`` sets it False to time the gathered kernel beside it)
SPARSE_ON_CPU = True


def _pattern(nb: torch.Tensor, h: int, m: int) -> _Pattern | None:
    """``nb``'s cached :class:`_Pattern` for ``h`` heads over ``m`` keys; None where a spot lists a neighbour twice
    (sparse rows hold each column once: the gathered kernel takes such a tensor)."""
    per_tensor = _PATTERNS.setdefault(nb, {})
    key = (h, m, nb._version)
    if key not in per_tensor:
        per_tensor.clear()
        if nb.numel() and (int(nb.min()) < 0 or int(nb.max()) >= m):  # never handed to the sparse library
            raise IndexError(f"neighbour index out of range [0, {m}): {int(nb.min())}..{int(nb.max())}")
        order = torch.argsort(nb, dim=1)
        sorted_nb = nb.gather(1, order)
        repeated = bool((sorted_nb[:, 1:] == sorted_nb[:, :-1]).any()) if nb.shape[1] > 1 else False
        per_tensor[key] = None if repeated else _Pattern(nb, h, m, order, sorted_nb)
    return per_tensor[key]


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, written out: over k = 7-9 entries 5x faster than ``torch.softmax``'s
    kernel, which vectorises along that short dimension."""
    e = (scores - scores.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


class _SparseNeighbourAttention(torch.autograd.Function):
    """The same formula through sparse rows on CPU: the scores and the weights' gradient are sampled dense products
    at the pattern's entries, the pooling and the three other gradients sparse x dense products. Nothing of size
    (n, k, h, d) is formed; computed in float32 (float64 for float64 inputs), whatever the inputs' dtype (CPU sparse
    products have no bfloat16), and handed back in the inputs' dtypes."""

    @staticmethod
    def forward(ctx, q, keys, values, pattern, keep):
        with torch.autocast(q.device.type, enabled=False):  # the training forward's bfloat16 autocast: not here
            return _SparseNeighbourAttention._forward(ctx, q, keys, values, pattern, keep)

    @staticmethod
    def _forward(ctx, q, keys, values, pattern, keep):
        work = torch.promote_types(q.dtype, torch.float32)
        qf, kf, vf = q.to(work), keys.to(work), values.to(work)
        w = _softmax(pattern.products(qf, kf))  # (n, h, k), neighbours sorted
        keep_s = None if keep is None else keep.to(work).gather(2, pattern.order)
        wd = w if keep_s is None else w * keep_s
        pooled = (pattern.rows(wd) @ vf.reshape(-1, vf.shape[-1])).view(q.shape)
        ctx.pattern, ctx.dtypes = pattern, (q.dtype, keys.dtype, values.dtype)
        ctx.save_for_backward(qf, kf, vf, w, wd, keep_s)
        return pooled.to(values.dtype), w.gather(2, pattern.inverse).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_pooled, grad_weights):
        with torch.autocast(grad_pooled.device.type, enabled=False):
            return _SparseNeighbourAttention._backward(ctx, grad_pooled, grad_weights)

    @staticmethod
    def _backward(ctx, grad_pooled, grad_weights):
        qf, kf, vf, w, wd, keep_s = ctx.saved_tensors
        pattern, (q_dtype, k_dtype, v_dtype) = ctx.pattern, ctx.dtypes
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        gp = grad_pooled.to(qf.dtype).contiguous()
        gw = pattern.products(gp, vf)  # d pooled / d (dropped) weights
        if keep_s is not None:
            gw = gw * keep_s
        if grad_weights is not None:
            gw = gw + grad_weights.to(qf.dtype).gather(2, pattern.order)
        gs = w * (gw - (gw * w).sum(-1, keepdim=True))  # through the softmax
        d = qf.shape[-1]
        gq = (pattern.rows(gs) @ kf.reshape(-1, d)).view(qf.shape).to(q_dtype) if need_q else None
        gk = (pattern.transposed(gs) @ qf.reshape(-1, d)).view(kf.shape).to(k_dtype) if need_k else None
        gv = (pattern.transposed(wd) @ gp.reshape(-1, d)).view(vf.shape).to(v_dtype) if need_v else None
        return gq, gk, gv, None, None


def neighbour_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, neighbors: torch.Tensor,
                        keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (n, h, d), weights (n, h, k))``: ``q`` (n, h, d), scaled by the caller; ``keys``, ``values``
    (m, h, d); ``neighbors`` (n, k) row indices into them; ``keep`` (n, h, k): the attention dropout's mask
    (0 or 1 / (1 - p)) or None. The weights are the softmax before dropout."""
    if SPARSE_ON_CPU and q.device.type == "cpu":
        pattern = _pattern(neighbors, q.shape[1], keys.shape[0])
        if pattern is not None:
            return _SparseNeighbourAttention.apply(q, keys, values, pattern, keep)
    return _NeighbourAttention.apply(q, keys, values, neighbors, keep)
