"""The neighbourhood attention's written-out backward (``senca_core.model._neighbour_attention``) against autograd's
own derivation of the same formula, and the network's dropout."""

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
def test_the_written_out_backward_is_autograds(masked, rows_per_block, monkeypatch):
    q, keys, values, nb, keep = _inputs(masked=masked)
    if rows_per_block is not None:  # blocks of that many spots (a gathered row: k * h * d doubles)
        monkeypatch.setattr(kernel, "BLOCK_BYTES", rows_per_block * 4 * 2 * 3 * 8)
        monkeypatch.setattr(kernel, "ONE_BLOCK_UP_TO", 0)
        assert kernel.block_rows(q, nb.shape[1]) == rows_per_block
    assert torch.autograd.gradcheck(lambda a, b, c: neighbour_attention(a, b, c, nb, keep), (q, keys, values))
    pooled, weights = neighbour_attention(q, keys, values, nb, keep)
    ref_pooled, ref_weights = _reference(q, keys, values, nb, keep)
    assert torch.allclose(pooled, ref_pooled) and torch.allclose(weights, ref_weights)
    g = torch.Generator().manual_seed(1)
    up_p, up_w = torch.randn(pooled.shape, dtype=torch.double, generator=g), torch.randn(weights.shape,
                                                                                        dtype=torch.double, generator=g)
    mine = torch.autograd.grad((pooled * up_p).sum() + (weights * up_w).sum(), (q, keys, values))
    theirs = torch.autograd.grad((ref_pooled * up_p).sum() + (ref_weights * up_w).sum(), (q, keys, values))
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("masked", [True, False])
def test_blocks_of_spots_give_the_one_block_results_to_the_last_bit(masked, monkeypatch):
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
