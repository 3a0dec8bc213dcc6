"""SENCA-st model: it learns, it attends only within N(i), it round-trips, it refuses bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData
from scipy.spatial import cKDTree

import senca_core as sc
from senca_core.errors import ConfigError, SlideError
from senca_core.model import SencaConfig, SencaModel, SlideBatch, embed, fit, load_model, make_batch, save_model

FAST = dict(epochs=60, hidden=32, embed_dim=8, n_heads=2, n_prototypes=4)


def _grid_slide(n_side=14, n_expr=10, n_hist=6, seed=0, with_hist=True, slide_id="toy"):
    """Two halves with different expression; histology features correlate with the halves."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xy = np.c_[xx.ravel(), yy.ravel()].astype(float) * 10
    region = (xy[:, 0] > xy[:, 0].mean()).astype(int)
    expr = rng.normal(size=(len(xy), n_expr)) + 2.0 * region[:, None] * (np.arange(n_expr) < 3)
    a = AnnData(np.zeros((len(xy), 1), dtype=np.float32))
    a.obs_names = [f"s{i}" for i in range(len(xy))]
    a.obsm["spatial"] = xy
    a.obsm["X_pca"] = expr.astype(np.float32)
    if with_hist:
        a.obsm["X_hist"] = (rng.normal(size=(len(xy), n_hist)) + region[:, None]).astype(np.float32)
    a.obsm["spatial_neighbors"] = cKDTree(xy).query(xy, k=9)[1].astype(np.int64)
    a.obs["label"] = region.astype(str)
    a.obs["label_scored"] = True
    a.uns["senca"] = {"slide_id": slide_id, "grid": "square"}
    return a


def test_loss_decreases():
    a = _grid_slide()
    _, history = fit(a, SencaConfig(**FAST, mask_rate=0.0, dropout=0.0))
    # the data has irreducible noise: compare the learnable parts' decrease, not an absolute level
    # (alignment can only tell spots apart up to their region: its floor is high with two regions)
    for part, ratio in (("rec_expr", 0.85), ("rec_hist", 0.85), ("align", 0.95), ("loss", 0.85)):
        first = np.mean([h[part] for h in history[:5]])
        last = np.mean([h[part] for h in history[-5:]])
        assert last < ratio * first, (part, first, last)


def test_deterministic_with_seed():
    a = _grid_slide()
    z1 = embed(fit(a, SencaConfig(**FAST, seed=3))[0], a)
    z2 = embed(fit(a, SencaConfig(**FAST, seed=3))[0], a)
    np.testing.assert_array_equal(z1, z2)


def _batch_and_model(seed=0, **config):
    a = _grid_slide(seed=seed)
    model, _ = fit(a, SencaConfig(**{**FAST, **config}))
    model.eval()
    return make_batch(a, model.config), model


def _receptive_field(neighbors: torch.Tensor, i: int, hops: int) -> set[int]:
    field = {i}
    for _ in range(hops):
        field = {int(j) for k in field for j in neighbors[k].tolist()}
    return field


@torch.no_grad()
@pytest.mark.parametrize("hops", [1, 2])
def test_cross_attention_sees_its_hops_and_nothing_outside(hops):
    """One hop sees N(i); the second hop N(N(i)) - and nothing beyond either."""
    batch, model = _batch_and_model(attention_hops=hops)
    z = model(batch)
    i = 100
    field = _receptive_field(batch.neighbors, i, hops)
    outside = [j for j in range(batch.n_spots) if j not in field]

    # Changing every spot outside the receptive field, in both modalities, leaves z_i exactly unchanged.
    expr, hist = batch.expr.clone(), batch.hist.clone()
    expr[outside] = torch.randn_like(expr[outside]) * 5
    hist[outside] = torch.randn_like(hist[outside]) * 5
    z_out = model(SlideBatch(expr, hist, batch.neighbors))
    torch.testing.assert_close(z_out[i], z[i], rtol=0, atol=1e-6)
    assert not torch.allclose(z_out[outside[0]], z[outside[0]])

    # The outermost ring is used: replacing the spots the last hop adds changes z_i.
    ring = sorted(field - _receptive_field(batch.neighbors, i, hops - 1))
    expr = batch.expr.clone()
    expr[ring] = batch.expr[outside[: len(ring)]]
    z_swap = model(SlideBatch(expr, batch.hist, batch.neighbors))
    assert (z_swap[i] - z[i]).abs().max() > 1e-4
    if hops == 1:
        # ...and only as a set: attention is permutation-invariant over N(i), so relabelling within N(i) does
        # nothing (with a second hop the neighbours' own neighbourhoods would change too).
        others = [j for j in batch.neighbors[i].tolist() if j != i]
        perm = others[1:] + others[:1]
        expr, hist = batch.expr.clone(), batch.hist.clone()
        expr[others], hist[others] = batch.expr[perm], batch.hist[perm]
        z_perm = model(SlideBatch(expr, hist, batch.neighbors))
        torch.testing.assert_close(z_perm[i], z[i], rtol=0, atol=1e-5)


@torch.no_grad()
def test_histology_steers_expression_attention():
    """Attention weights of the expression side come from histology similarity (values stay expression)."""
    batch, model = _batch_and_model()
    _, parts = model.encode(batch, return_parts=True)
    hist = batch.hist.clone()
    hist = hist[torch.randperm(hist.shape[0], generator=torch.Generator().manual_seed(0))]
    _, parts2 = model.encode(SlideBatch(batch.expr, hist, batch.neighbors), return_parts=True)
    assert not torch.allclose(parts["attention"]["expr"], parts2["attention"]["expr"])


def test_save_load_round_trip(tmp_path):
    a = _grid_slide()
    model, _ = fit(a, SencaConfig(**FAST))
    path = save_model(model, tmp_path / "m.pt")
    again = load_model(path)
    np.testing.assert_array_equal(embed(model, a), embed(again, a))
    assert again.config == model.config


def test_load_rejects_foreign_file(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="model"):
        load_model(p)


@pytest.mark.parametrize("ablation", ["senca", "expr_only", "image_only", "concat", "separate_encoders",
                                      "no_hierarchy", "one_hop"])
def test_every_ablation_trains_and_separates_the_halves(ablation):
    a = _grid_slide()
    cfg = SencaConfig(**FAST).ablation(ablation)
    sc.tl.senca(a, cfg)
    sc.tl.cluster(a, 2, seed=0)
    assert sc.metrics.ari(a) > 0.6, ablation


def test_expression_only_slide_in_a_model_with_image_branch():
    with_img, without = _grid_slide(slide_id="img"), _grid_slide(seed=1, with_hist=False, slide_id="noimg")
    model = sc.tl.senca([with_img, without], SencaConfig(**FAST))
    assert model.n_hist == 6
    assert without.obsm["X_senca_latent"].shape == (without.n_obs, 8)
    # readout: measured + reconstructed expression + imputed histology (the model has an image branch)
    assert without.obsm["X_senca"].shape == (without.n_obs, 2 * 10 + 6)
    assert np.isfinite(without.obsm["X_senca"]).all()


def test_bad_input_names_the_slide():
    a = _grid_slide(with_hist=False, slide_id="B1")
    with pytest.raises(SlideError, match="B1"):
        fit(a, SencaConfig(**FAST).ablation("image_only"))
    nan = _grid_slide(slide_id="nanny")
    nan.obsm["X_pca"][3, 2] = np.nan
    with pytest.raises(SlideError, match="nanny.*NaN"):
        fit(nan, SencaConfig(**FAST))
    small = _grid_slide(slide_id="tiny")
    small.obsm["X_senca"] = np.zeros((small.n_obs, 2), dtype=np.float32)
    with pytest.raises(SlideError, match="tiny.*k=500"):
        sc.tl.cluster(small, 500)
    no_nb = _grid_slide(slide_id="C9")
    del no_nb.obsm["spatial_neighbors"]
    with pytest.raises(SlideError, match="C9.*spatial_neighbors"):
        fit(no_nb, SencaConfig(**FAST))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="n_heads"):
        SencaConfig(hidden=30, n_heads=4).validate()
    with pytest.raises(ConfigError, match="use_expr"):
        SencaConfig(use_expr=False, use_hist=False).validate()
    with pytest.raises(ConfigError, match="bogus"):
        SencaConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="attention_hops"):
        SencaConfig(attention_hops=3).validate()


def test_a_model_file_from_before_the_second_hop_still_loads(tmp_path):
    """Files written before ``attention_hops`` existed hold one-hop models and no such key: they load as one hop."""
    a = _grid_slide()
    model, _ = fit(a, SencaConfig(**FAST, attention_hops=1))
    path = save_model(model, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["attention_hops"]
    del payload["config"]["readout_expr_weight"]
    torch.save(payload, path)
    again = load_model(path)
    assert again.config.attention_hops == 1
    assert again.config.readout_expr_weight == 1.0  # read out as it was: the full reconstruction block
    np.testing.assert_array_equal(embed(model, a), embed(again, a))


def test_the_readout_weighs_the_reconstructed_expression_block():
    """``r = [x, v * x_hat, w * h_hat]``: the reconstruction at ``readout_expr_weight`` of the measured scale."""
    from senca_core.model import readout

    a = _grid_slide()
    model, _ = fit(a, SencaConfig(**FAST))
    z, r = readout(model, a)
    n = model.n_expr
    half = model.config.readout_expr_weight
    assert half == 0.5
    full, r_full = readout(model_with(model, readout_expr_weight=1.0), a)
    np.testing.assert_allclose(z, full)
    np.testing.assert_allclose(r[:, :n], r_full[:, :n])  # the measured expression, untouched
    np.testing.assert_allclose(r[:, n:2 * n], half * r_full[:, n:2 * n], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r[:, 2 * n:], r_full[:, 2 * n:])  # the histology block keeps its own weight


def model_with(model, **changes):
    import copy

    other = copy.deepcopy(model)
    other.config = other.config.replace(**changes)
    return other


@pytest.fixture(scope="module")
def synthetic():
    a = sc.datasets.synthetic_slide(1500, seed=1)
    sc.pp.preprocess(a)
    sc.hist.patch_features(a)
    return a


def test_recovers_known_regions_on_a_synthetic_slide(synthetic):
    a = synthetic
    # half the default epochs, half the time. 0.76 here with the default cut (the consensus of two HMRF-EM cuts,
    # which rounds this slide's sharp-edged regions: 0.90 with the six-cut family it replaced, chosen on real
    # sections; docs/BENCHMARKS.md "The consensus of two HMRF-EM cuts")
    sc.tl.senca(a, SencaConfig(seed=0, epochs=100))
    sc.tl.cluster(a, 6)
    full = sc.metrics.ari(a)
    sc.tl.senca(a, SencaConfig(seed=0, epochs=100).ablation("image_only"))
    sc.tl.cluster(a, 6)
    image_only = sc.metrics.ari(a)
    print(f"synthetic ARI: senca {full:.3f}, image-only {image_only:.3f}")
    assert full >= 0.72
    # the two tumour sub-clones look alike: histology alone cannot split them
    assert image_only < full - 0.15


@pytest.mark.parametrize("method", ["gmm", "kmeans", "leiden"])
def test_region_model_reassigns_the_same_regions(synthetic, tmp_path, method):
    import pickle

    a = synthetic
    if "X_senca" not in a.obsm:
        sc.tl.senca(a, SencaConfig(seed=0, epochs=40))
    rm = sc.tl.cluster(a, 6, method=method, return_model=True)
    fitted = a.obs["region"].copy()
    (tmp_path / "rm.pkl").write_bytes(pickle.dumps(rm))
    again = pickle.loads((tmp_path / "rm.pkl").read_bytes())
    b = a.copy()
    del b.obs["region"]
    sc.tl.assign_regions(b, again)
    agree = (b.obs["region"].astype(str).to_numpy() == fitted.astype(str).to_numpy()).mean()
    assert agree == 1.0 if method != "leiden" else agree > 0.9


def test_automatic_k_finds_the_number_of_regions(synthetic):
    a = synthetic.copy()  # the full model's readout (the fixture may hold an ablation's from an earlier test)
    sc.tl.senca(a, SencaConfig(seed=0, epochs=40))
    k = sc.tl.cluster(a, None)
    assert 5 <= k <= 7  # six true regions; the knee of the BIC curve, not the cap (12)
