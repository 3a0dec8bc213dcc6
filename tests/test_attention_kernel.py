"""The neighbourhood attention's written-out backward (``senca_core.model._neighbour_attention``) against autograd's
own derivation of the same formula, and the network's dropout."""

from __future__ import annotations

import math

import pytest
import torch

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


@pytest.mark.parametrize("masked", [True, False])
def test_the_written_out_backward_is_autograds(masked):
    q, keys, values, nb, keep = _inputs(masked=masked)
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
