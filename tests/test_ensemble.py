"""An ensemble of SENCA-st networks (``SencaConfig.n_models``): independent members, a readout of one block per
member, one consensus over every member's cuts, and the same files and predictions as one network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import senca_core as sc
from senca_core.errors import ConfigError
from senca_core.model import (SencaConfig, SencaEnsemble, SencaModel, heldout_r2, load_model, make_batch, members,
                              readout, save_model, train_step)
from senca_core.model import build_model, make_optimizer, seed_everything
from test_model import FAST, _grid_slide

ENS = dict(FAST, epochs=20, n_models=3)


def test_one_network_is_the_plain_model_and_an_ensemble_has_independent_members():
    a = _grid_slide()
    batch = make_batch(a, SencaConfig(**FAST))
    assert type(build_model(SencaConfig(**FAST), [batch])) is SencaModel
    torch.manual_seed(0)
    model = build_model(SencaConfig(**ENS), [batch])
    assert isinstance(model, SencaEnsemble) and len(members(model)) == 3
    assert (model.n_expr, model.n_hist) == (10, 6)
    w = [m.encoder_e.ff[0].weight for m in members(model)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # drawn one after the other

    # each member's gradient is its own: a step moves every member, and a member's loss alone gives its gradient
    gen = seed_everything(0)
    opt = make_optimizer(model, model.config)
    before = [p.detach().clone() for p in model.parameters()]
    parts = train_step(model, batch, opt, generator=gen)
    assert {"loss", "rec_expr", "rec_hist"} <= set(parts)
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert sum(moved) > 0.9 * len(moved)
    model.zero_grad()
    first, _ = members(model)[0].loss(batch, generator=seed_everything(1))
    first.backward()
    assert all(p.grad is None or not p.grad.abs().any() for m in members(model)[1:] for p in m.parameters())


def test_ensemble_readout_clusters_by_member_blocks_and_round_trips(tmp_path):
    a = _grid_slide()
    model = sc.tl.senca(a, SencaConfig(**ENS))
    one = _grid_slide()
    sc.tl.senca(one, SencaConfig(**dict(ENS, n_models=1)))
    width = one.obsm["X_senca"].shape[1]
    assert a.obsm["X_senca"].shape == (a.n_obs, 3 * width) and a.uns["senca"]["readout_blocks"] == {"X_senca": 3}
    assert a.obsm["X_senca_latent"].shape == (a.n_obs, 3 * 8)
    assert not np.allclose(a.obsm["X_senca"][:, width:2 * width], a.obsm["X_senca"][:, :width])

    region_model = sc.tl.cluster(a, 2, seed=0, return_model=True)
    # each network's block gets its own consensus of the family's cuts; the regions are the consensus of those
    assert len(region_model.members) == 3 and all(len(m.members) == 2 for m in region_model.members)
    assert [{c.columns for c in m.members} for m in region_model.members] == [
        {(0, width)}, {(width, 2 * width)}, {(2 * width, 3 * width)}]
    assert (region_model.predict(a) == a.obs["region"].astype(int).to_numpy()).all()
    assert sc.metrics.ari(a) > 0.5
    # the blocks belong to the readout only: another representation of the same slide is cut whole
    pca_model = sc.tl.cluster(a, 2, use_rep="X_pca", seed=0, return_model=True, key_added="pca_region")
    assert len(pca_model.members) == 2 and {m.columns for m in pca_model.members} == {None}

    path = save_model(model, tmp_path / "model.pt")
    loaded = load_model(path)
    assert isinstance(loaded, SencaEnsemble)
    np.testing.assert_allclose(readout(loaded, a)[1], a.obsm["X_senca"], rtol=1e-5, atol=1e-5)
    assert np.isfinite(heldout_r2(loaded, a))


def test_blocks_that_do_not_fit_the_readout_are_refused():
    a = _grid_slide()
    sc.tl.senca(a, SencaConfig(**dict(ENS, n_models=2)))
    b = _grid_slide(seed=1, slide_id="other")
    sc.tl.senca(b, SencaConfig(**dict(ENS, n_models=1)))
    with pytest.raises(ConfigError, match="different models"):
        sc.tl.cluster([a, b], 2)
    with pytest.raises(ConfigError, match="equal blocks"):
        sc.tl.cluster(a, 2, blocks=5)
    with pytest.raises(ConfigError, match="n_models"):
        SencaConfig(n_models=0).validate()
