"""The neighbourhood attention's two kernels (``senca_core.model._neighbour_attention``: sparse rows on CPU, the
gathered kernel on CUDA and for repeated neighbours) against autograd's own derivation of the same formula, and the
network's dropout."""

from __future__ import annotations

import math

import pytest
import torch

from senca_core.model import _neighbour_attention as kernel
from senca_core.model._neighbour_attention import neighbour_attention
from senca_core.model._network import Dropout


def _reference(q, keys, values, nb, keep):
    """The formula as broadcast products, differentiated by autograd (the network's code before the kernel)."""
    n, k = nb.shape
    kg, vg = keys[nb], values[nb]  # (n, k, h, d)
    weights = torch.softmax((q.unsqueeze(1) * kg).sum(-1).transpose(1, 2), dim=-1)  # (n, h, k)
    dropped = weights if keep is None else weights * keep
    return (dropped.transpose(1, 2).unsqueeze(-1) * vg).sum(1), weights


def _assert_is_the_formula(q, keys, values, nb, keep):
    """The kernel's outputs and gradients are the formula's, as autograd derives them (float64 inputs)."""
    assert torch.autograd.gradcheck(lambda a, b, c: neighbour_attention(a, b, c, nb, keep), (q, keys, values))
    pooled, weights = neighbour_attention(q, keys, values, nb, keep)
    ref_pooled, ref_weights = _reference(q, keys, values, nb, keep)
    assert torch.allclose(pooled, ref_pooled) and torch.allclose(weights, ref_weights)  # nb's order
    g = torch.Generator().manual_seed(1)
    up_p, up_w = torch.randn(pooled.shape, dtype=torch.double, generator=g), torch.randn(weights.shape,
                                                                                        dtype=torch.double, generator=g)
    mine = torch.autograd.grad((pooled * up_p).sum() + (weights * up_w).sum(), (q, keys, values))
    theirs = torch.autograd.grad((ref_pooled * up_p).sum() + (ref_weights * up_w).sum(), (q, keys, values))
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.fixture
def gathered(monkeypatch):
    """The gathered kernel on CPU too (the tests below that time or compare it as such)."""
    monkeypatch.setattr(kernel, "SPARSE_ON_CPU", False)


def _inputs(n=11, m=13, k=4, h=2, d=3, masked=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, keys, values = (torch.randn(size, dtype=torch.double, generator=g, requires_grad=True)
                       for size in ((n, h, d), (m, h, d), (m, h, d)))
    nb = torch.randint(0, m, (n, k), generator=g)
    nb[:, 0] = torch.arange(n)  # repeated indices too: several spots share a neighbour
    keep = ((torch.rand(n, h, k, generator=g, dtype=torch.double) > 0.3).double() / 0.7) if masked else None
    return q, keys, values, nb, keep


@pytest.mark.parametrize("rows_per_block", [None, 1, 4])  # None: all spots in one block
@pytest.mark.parametrize("masked", [True, False])
def test_the_written_out_backward_is_autograds(masked, rows_per_block, monkeypatch, gathered):
    q, keys, values, nb, keep = _inputs(masked=masked)
    if rows_per_block is not None:  # blocks of that many spots (a gathered row: k * h * d doubles)
        monkeypatch.setattr(kernel, "BLOCK_BYTES", rows_per_block * 4 * 2 * 3 * 8)
        monkeypatch.setattr(kernel, "ONE_BLOCK_UP_TO", 0)
        assert kernel.block_rows(q, nb.shape[1]) == rows_per_block
    _assert_is_the_formula(q, keys, values, nb, keep)


@pytest.mark.parametrize("masked", [True, False])
def test_blocks_of_spots_give_the_one_block_results_to_the_last_bit(masked, monkeypatch, gathered):
    """On CPU the kernel runs over blocks of spots (cache-sized); every output and gradient is the one-block
    computation's, bit for bit, whatever the block size (float32, as training runs)."""
    n, m, k, h, d = 50, 50, 7, 4, 8
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(n, h, d, generator=g) for _ in range(3)]
    nb = torch.randint(0, m, (n, k), generator=g)
    nb[:, 0] = torch.arange(n)
    keep = ((torch.rand(n, h, k, generator=g) > 0.1).float() / 0.9) if masked else None
    up = torch.randn(n, h, d, generator=g), torch.randn(n, h, k, generator=g)

    monkeypatch.setattr(kernel, "ONE_BLOCK_UP_TO", 0)  # blocks on a slide this small too

    def run(block_bytes):
        monkeypatch.setattr(kernel, "BLOCK_BYTES", block_bytes)
        q, keys, values = (t.clone().requires_grad_(True) for t in base)
        pooled, weights = neighbour_attention(q, keys, values, nb, keep)
        grads = torch.autograd.grad((pooled * up[0]).sum() + (weights * up[1]).sum(), (q, keys, values))
        return (pooled.detach(), weights.detach(), *grads)

    row = k * h * d * 4
    whole = run(n * row)
    for rows in (1, 3, 16, 49):
        blocked = run(rows * row)
        assert kernel.block_rows(base[0], k) == rows  # the setting took: n / rows blocks
        for a, b in zip(blocked, whole):
            assert torch.equal(a, b)


def _distinct_neighbours(n, m, k, generator):
    """(n, k): each spot itself (where it is a key), then k - 1 other keys, no repeats within a row."""
    rows = []
    for i in range(n):
        others = [j for j in torch.randperm(m, generator=generator).tolist() if j != i]
        rows.append(([i] if i < m else []) + others[:k - (1 if i < m else 0)])
    return torch.tensor(rows)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("n, m", [(11, 11), (9, 13)])
def test_the_sparse_kernel_is_the_formula_and_its_gradients(masked, n, m):
    q, keys, values, _, keep = _inputs(n=n, m=m, k=4, masked=masked)
    nb = _distinct_neighbours(n, m, 4, torch.Generator().manual_seed(5))
    pattern = kernel._pattern(nb, q.shape[1], m)
    assert pattern is not None  # the sparse kernel runs
    with torch.sparse.check_sparse_tensor_invariants():  # sorted, distinct columns: a valid sparse layout
        for matrix in (pattern.rows(torch.ones(n, 2, 4)), pattern.transposed(torch.ones(n, 2, 4))):
            torch.sparse_csr_tensor(matrix.crow_indices(), matrix.col_indices(), matrix.values(), matrix.shape)
    _assert_is_the_formula(q, keys, values, nb, keep)


def test_repeated_neighbours_take_the_gathered_kernel_and_patterns_follow_their_tensor():
    g = torch.Generator().manual_seed(2)
    nb = _distinct_neighbours(20, 20, 5, g)
    assert kernel._pattern(nb, 4, 20) is kernel._pattern(nb, 4, 20)  # built once per neighbour tensor
    assert kernel._pattern(nb, 2, 20) is not kernel._pattern(nb, 4, 20)
    nb[3, 2] = nb[3, 1]  # changed in place: a spot lists a neighbour twice
    assert kernel._pattern(nb, 4, 20) is None
    with pytest.raises(IndexError, match="out of range"):  # an index past the keys: an error, never a bad read
        kernel._pattern(nb, 4, 19)
    q, keys, values, _, keep = _inputs(n=20, m=20, k=5)
    pooled, weights = neighbour_attention(q, keys, values, nb, keep)  # the gathered kernel: still the formula
    ref_pooled, ref_weights = _reference(q, keys, values, nb, keep)
    assert torch.allclose(pooled, ref_pooled) and torch.allclose(weights, ref_weights)


def test_the_sparse_kernel_in_bfloat16_autocast_computes_in_float32_and_hands_back_the_inputs_dtypes():
    g = torch.Generator().manual_seed(4)
    n, h, d, k = 60, 4, 8, 7
    base = [torch.randn(n, h, d, generator=g) for _ in range(3)]
    nb = _distinct_neighbours(n, n, k, g)
    up = torch.randn(n, h, d, generator=g)

    def run(dtype, threads=1):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                q, keys, values = (t.to(dtype).requires_grad_(True) for t in base)
                pooled, weights = neighbour_attention(q, keys, values, nb)
                grads = torch.autograd.grad((pooled.float() * up).sum(), (q, keys, values))
        finally:
            torch.set_num_threads(before)
        return pooled, weights, grads

    pooled, weights, grads = run(torch.bfloat16)
    assert pooled.dtype == weights.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    float_inputs = run(torch.float32)
    assert float_inputs[0].dtype == torch.float32  # float32 in, float32 out, under the same autocast
    base = [t.to(torch.bfloat16).float() for t in base]  # the same bfloat16 inputs, computed in float32
    exact = run(torch.float32)
    assert torch.allclose(pooled.float(), exact[0], atol=1e-2, rtol=1e-2)
    again = run(torch.float32, threads=2)  # the same bits at another thread count
    assert torch.equal(again[0], exact[0]) and all(torch.equal(a, b) for a, b in zip(again[2], exact[2]))


def test_the_network_attention_matches_the_formula_in_float():
    from senca_core.model import NeighbourhoodCrossAttention

    torch.manual_seed(0)
    att = NeighbourhoodCrossAttention(16, 4, dropout=0.0).eval()
    x = torch.randn(30, 16)
    nb = torch.randint(0, 30, (30, 5))
    out, weights = att(x, x, x, x, nb)
    q = att.q(x).view(30, 4, 4) / math.sqrt(4)
    pooled, ref_weights = _reference(q, att.k(x).view(30, 4, 4), att.v(x).view(30, 4, 4), nb, None)
    assert torch.allclose(weights, ref_weights, atol=1e-6)
    assert torch.allclose(out, att.norm(x + att.out(pooled.reshape(30, 16))), atol=1e-5)


def test_dropout_keeps_the_expected_share_scaled_and_is_off_in_eval():
    drop = Dropout(0.25)
    x = torch.ones(200, 500)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert drop.eval()(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_masks_from_64_bit_draws_use_every_lane_alike_and_repeat_under_a_seed():
    """Each 64-bit draw makes four elements: every lane (position mod 4) drops its share, neighbouring lanes are
    independent, a size that is no multiple of four works, and the global seed repeats the mask."""
    from senca_core.model._network import draw_keep_mask

    torch.manual_seed(3)
    mask = draw_keep_mask((1001, 397), 0.3, torch.float32, torch.device("cpu"))
    kept = (mask != 0).flatten()[: 1001 * 396].view(-1, 4).float()  # whole draws of four lanes
    for lane in range(4):
        assert abs(kept[:, lane].mean().item() - 0.7) < 0.006, lane
    both = (kept[:, :3] * kept[:, 1:]).mean().item()
    assert abs(both - 0.49) < 0.006  # independent neighbours: 0.7 x 0.7
    assert torch.allclose(mask[mask != 0], torch.full_like(mask[mask != 0], 1 / 0.7))
    torch.manual_seed(3)
    assert torch.equal(mask, draw_keep_mask((1001, 397), 0.3, torch.float32, torch.device("cpu")))
    half = draw_keep_mask((7, 3, 5), 0.1, torch.bfloat16, torch.device("cpu"))
    assert half.shape == (7, 3, 5) and half.dtype == torch.bfloat16
    # p within 2^-17 of 1 rounds to every lane: everything dropped (not kept at a huge scale)
    assert not draw_keep_mask((40,), 0.999999, torch.float32, torch.device("cpu")).any()
    assert not draw_keep_mask((40,), 1 - 2 ** -15, torch.float32, torch.device("cpu")).isinf().any()
