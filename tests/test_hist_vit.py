"""The ViT histology encoder (pathology foundation models in timm / HF layout, local weights only): small randomly
initialised ViTs of the same layout stand in for UNI / Phikon."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import senca_core.hist as hist
from senca_core.errors import ConfigError
from _hist_helpers import hand_adata

# ----------------------------------------------------------------------------------------------
# ViT encoder (pathology foundation models in timm / HF layout; local weights only)
# ----------------------------------------------------------------------------------------------
def _small_vit(seed=0, **kw) -> dict:
    torch.manual_seed(seed)
    args = dict(embed_dim=64, depth=2, num_heads=2, patch_size=16, img_size=64) | kw
    return hist.ViTEncoder.network(**args).state_dict()


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vit") / "vit_small_random.pt"
    torch.save(_small_vit(), path)
    return path


@pytest.fixture(scope="module")
def vit_slide(tmp_path_factory, vit_weights):
    from senca_core.datasets import synthetic_slide

    a = synthetic_slide(400, seed=0, n_genes=100, out_dir=tmp_path_factory.mktemp("vit_slide"))
    hist.patch_features(a, encoder="vit", weights=vit_weights, batch_size=64)
    return a


def _patches(n=6, side=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, side, side, 3), dtype=np.uint8)


def test_vit_encoder_reads_the_architecture_from_the_file(tmp_path, vit_weights):
    enc = hist.ViTEncoder(vit_weights, num_heads=2, batch_size=4)
    assert {k: enc.arch[k] for k in ("embed_dim", "depth", "patch_size", "img_size", "reg_tokens",
                                     "layerscale", "mlp_hidden")} == \
        {"embed_dim": 64, "depth": 2, "patch_size": 16, "img_size": 64, "reg_tokens": 0,
         "layerscale": False, "mlp_hidden": 256}
    assert hist.ViTEncoder(vit_weights).arch["num_heads"] == 1  # default head dim 64
    p = _patches()
    f1, f2 = enc(p), hist.ViTEncoder(vit_weights, num_heads=2)(p)
    assert f1.shape == (6, 64) and f1.dtype == np.float32 and np.isfinite(f1).all() and len(enc.names) == 64
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-5)  # deterministic, batch-independent
    assert np.abs(f1[0] - f1[1]).max() > 1e-3
    other = tmp_path / "other.pt"
    torch.save(_small_vit(seed=1), other)
    assert np.abs(hist.ViTEncoder(other, num_heads=2)(p) - f1).max() > 1e-3  # the file is really used
    mean = hist.ViTEncoder(vit_weights, num_heads=2, pool="mean")(p)
    assert mean.shape == (6, 64) and np.abs(mean - f1).max() > 1e-3
    # registers + LayerScale (UNI-style init_values / DINOv2-reg) are read from the keys
    reg = tmp_path / "reg.pt"
    sd = _small_vit(reg_tokens=4, layerscale=True, depth=3)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, reg)
    e = hist.ViTEncoder(reg, num_heads=2)
    assert (e.arch["reg_tokens"], e.arch["layerscale"], e.arch["depth"], e.arch["pos_prefix"]) == (4, True, 3, 5)
    assert np.isfinite(e(p)).all()


def test_vit_pos_embed_layouts_are_equivalent(tmp_path, vit_weights):
    """timm's default, timm's no_embed_class and DINOv2's register layout encode the same network."""
    p = _patches()
    ref = hist.ViTEncoder(vit_weights, num_heads=2)(p)
    sd = torch.load(vit_weights, weights_only=True)
    folded = dict(sd, cls_token=sd["cls_token"] + sd["pos_embed"][:, :1], pos_embed=sd["pos_embed"][:, 1:])
    torch.save(folded, tmp_path / "no_embed_class.pt")
    enc = hist.ViTEncoder(tmp_path / "no_embed_class.pt", num_heads=2)
    assert enc.arch["pos_prefix"] == 0
    np.testing.assert_allclose(enc(p), ref, rtol=1e-4, atol=1e-5)
    sd = _small_vit(reg_tokens=2)
    torch.save(sd, tmp_path / "timm_reg.pt")
    ref = hist.ViTEncoder(tmp_path / "timm_reg.pt", num_heads=2)(p)
    dino = dict(sd, pos_embed=torch.cat([sd["pos_embed"][:, :1], sd["pos_embed"][:, 3:]], 1),
                mask_token=torch.zeros(1, 64))  # DINOv2 hub names
    dino["register_tokens"] = dino.pop("reg_token") + sd["pos_embed"][:, 1:3]
    torch.save(dino, tmp_path / "dino_reg.pt")
    enc = hist.ViTEncoder(tmp_path / "dino_reg.pt", num_heads=2)
    assert enc.arch["pos_prefix"] == 1
    np.testing.assert_allclose(enc(p), ref, rtol=1e-4, atol=1e-5)


def test_vit_hf_vitmodel_keys_load_the_same_network(tmp_path, vit_weights):
    sd = torch.load(vit_weights, weights_only=True)
    hf = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
          "vit.embeddings.mask_token": torch.zeros(1, 1, 64),
          "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
          "vit.pooler.dense.weight": torch.zeros(64, 64), "vit.pooler.dense.bias": torch.zeros(64)}
    for kind in ("weight", "bias"):
        hf[f"vit.embeddings.patch_embeddings.projection.{kind}"] = sd[f"patch_embed.proj.{kind}"]
        for i in range(2):
            pre, b = f"vit.encoder.layer.{i}.", f"blocks.{i}."
            for name, t in zip(("query", "key", "value"), sd[b + f"attn.qkv.{kind}"].chunk(3, 0)):
                hf[pre + f"attention.attention.{name}.{kind}"] = t.clone()
            for h, t in [("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                         ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                         ("output.dense", "mlp.fc2")]:
                hf[pre + f"{h}.{kind}"] = sd[b + f"{t}.{kind}"]
    torch.save(hf, tmp_path / "hf.bin")
    p = _patches()
    ref = hist.ViTEncoder(vit_weights, num_heads=2)(p)
    same = hist.ViTEncoder(tmp_path / "hf.bin", num_heads=2, layer_norm_eps=1e-6)
    assert same.arch["eps"] == 1e-6 and hist.ViTEncoder(tmp_path / "hf.bin").arch["eps"] == 1e-12
    np.testing.assert_allclose(same(p), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hist.ViTEncoder(tmp_path / "hf.bin", num_heads=2)(p), ref, atol=1e-2)  # eps 1e-12
    del hf["vit.encoder.layer.1.attention.attention.value.bias"]  # incomplete q/k/v -> named in the error
    torch.save(hf, tmp_path / "hf_bad.bin")
    with pytest.raises(ConfigError, match=r"hf_bad\.bin.*missing key 'blocks\.1\.attn\.qkv\.bias'"):
        hist.ViTEncoder(tmp_path / "hf_bad.bin", num_heads=2)


def test_vit_pos_embed_is_interpolated_for_other_input_sizes(tmp_path, vit_weights):
    p64 = _patches(4, 64)
    enc_in = hist.ViTEncoder(vit_weights, num_heads=2, img_size="input")
    np.testing.assert_allclose(enc_in(p64), hist.ViTEncoder(vit_weights, num_heads=2)(p64), atol=1e-6)
    f96 = enc_in(_patches(4, 96))  # 6 x 6 grid from the native 4 x 4 one
    assert f96.shape == (4, 64) and np.isfinite(f96).all()
    assert enc_in.net._pos(6, 6).shape == (1, 37, 64)
    # geometry of the resampling (timm: bicubic, align_corners=False): a pos_embed that is the row index
    # in channel 0, the column index in channel 1 and constant in channel 2, on a native 8 x 8 grid,
    # read on a 4 x 12 grid (64 x 192 px input) gives the old-grid coordinates of the new patch centres
    sd = _small_vit(img_size=128)
    r, c = np.mgrid[0:8, 0:8]
    sd["pos_embed"][0, 1:, 0] = torch.tensor(r.ravel(), dtype=torch.float32)
    sd["pos_embed"][0, 1:, 1] = torch.tensor(c.ravel(), dtype=torch.float32)
    sd["pos_embed"][0, 1:, 2] = 0.25
    torch.save(sd, tmp_path / "ramp.pt")
    enc = hist.ViTEncoder(tmp_path / "ramp.pt", num_heads=2, img_size="input")
    assert np.isfinite(enc(np.zeros((2, 64, 192, 3), np.uint8))).all()
    pos = enc.net._pos(4, 12)[0].numpy()
    np.testing.assert_allclose(pos[0], sd["pos_embed"][0, 0].numpy())  # the class token's entry is kept
    grid = pos[1:].reshape(4, 12, -1)
    rows, cols = (np.arange(4) + 0.5) * 8 / 4 - 0.5, (np.arange(12) + 0.5) * 8 / 12 - 0.5
    np.testing.assert_allclose(grid[:, :, 0], np.repeat(rows[:, None], 12, 1), atol=0.1)
    np.testing.assert_allclose(grid[:, :, 1], np.repeat(cols[None, :], 4, 0), atol=0.15)
    np.testing.assert_allclose(grid[:, 2:-2, 1], np.repeat(cols[None, 2:-2], 4, 0), atol=1e-4)  # interior exact
    np.testing.assert_allclose(grid[:, :, 2], 0.25, atol=1e-5)
    flat = {s: np.full((1, s, s, 3), (200, 120, 160), np.uint8) for s in (64, 128)}
    # "native" resizes any patch size to the trained 64 px; an int to that size
    np.testing.assert_allclose(hist.ViTEncoder(vit_weights, num_heads=2)(flat[128]),
                               hist.ViTEncoder(vit_weights, num_heads=2)(flat[64]), atol=1e-4)
    assert np.isfinite(hist.ViTEncoder(vit_weights, num_heads=2, img_size=80)(p64)).all()
    with pytest.raises(ConfigError, match="smaller than its patch size"):
        enc_in(_patches(1, 8))


def test_vit_encoder_bad_weights_name_file_and_key(tmp_path, vit_weights, pyramid):
    with pytest.raises(ConfigError, match="not found.*nothing is downloaded") as err:
        hist.ViTEncoder(tmp_path / "uni.bin")
    assert err.value.field == "weights"
    sd = torch.load(vit_weights, weights_only=True)
    cases = {
        "missing.pt": ({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"},
                       r"missing\.pt.*missing key 'blocks\.1\.mlp\.fc2\.bias'"),
        "unexpected.pt": (dict(sd, **{"blocks.0.attn.q_norm.weight": torch.ones(32)}),
                          r"unexpected\.pt.*unexpected key 'blocks\.0\.attn\.q_norm\.weight'"),
        "shape.pt": (dict(sd, **{"blocks.1.norm2.weight": torch.ones(32)}),
                     r"shape\.pt.*'blocks\.1\.norm2\.weight' has shape \(32,\), expected \(64,\)"),
        "no_pos.pt": ({k: v for k, v in sd.items() if k != "pos_embed"}, r"no_pos\.pt.*missing key 'pos_embed'"),
        "resnet.pt": (hist.CNNEncoder.network().state_dict(), r"resnet\.pt.*missing key 'patch_embed"),
        "grid.pt": (dict(sd, pos_embed=torch.zeros(1, 20, 64)), r"grid\.pt.*20 tokens, not a square"),
        "list.pt": ([1, 2, 3], r"list\.pt.*does not hold a state_dict"),
    }
    for name, (obj, pattern) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ConfigError, match=pattern) as err:
            hist.ViTEncoder(tmp_path / name, num_heads=2)
        assert err.value.field == "weights", name
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"cannot load '.*junk\.pt'"):
        hist.ViTEncoder(tmp_path / "junk.pt")
    with pytest.raises(ConfigError) as err:
        hist.ViTEncoder(vit_weights, num_heads=3)
    assert err.value.field == "num_heads"
    a = hand_adata([(1000, 1200)], image_path=pyramid)
    with pytest.raises(ConfigError, match="encoder='vit' needs weights") as err:
        hist.patch_features(a, encoder="vit")
    assert err.value.field == "weights"


def test_patch_features_with_vit_separates_histology_classes(vit_slide, vit_weights):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    a = vit_slide
    X, info = a.obsm["X_hist"], a.uns["senca"]["hist_features"]
    assert X.shape == (a.n_obs, 64) and X.dtype == np.float32 and np.isfinite(X).all()
    assert info["encoder"] == "vit" and info["weights"] == str(vit_weights) and info["names"][-1] == "vit_63"
    y = a.obs["true_region"].astype(str).to_numpy()
    cv = StratifiedKFold(5, shuffle=True, random_state=0)

    def bal_acc(pair):
        m = np.isin(y, pair)
        return cross_val_score(LogisticRegression(max_iter=3000), X[m], y[m], cv=cv,
                               scoring="balanced_accuracy").mean()

    # stroma / adipose: same expression, different histology -> a random ViT already separates them;
    # tumour_A / tumour_B share their rendered texture -> histology features cannot (a control)
    acc_sa, acc_ab = bal_acc(["stroma", "adipose"]), bal_acc(["tumour_A", "tumour_B"])
    print(f"\nrandom small ViT, balanced accuracy: stroma/adipose {acc_sa:.3f}, tumour_A/B {acc_ab:.3f}")
    assert acc_sa > 0.85 and acc_sa > acc_ab + 0.2
    # a ready encoder gives the same features
    b = a.copy()
    hist.patch_features(b, encoder=hist.ViTEncoder(vit_weights, batch_size=100))
    np.testing.assert_allclose(b.obsm["X_hist"], X, atol=1e-5)


def test_spec_and_preprocess_pass_the_vit_encoder_through(tmp_path, vit_weights, vit_slide):
    from jobs.preprocess import prepare_slide
    from senca_platform.spec import PreprocessSpec

    spec = PreprocessSpec(encoder="vit", encoder_weights=str(vit_weights))
    assert spec.encoder == "vit" and spec.encoder_weights == vit_weights
    with pytest.raises(ValueError):
        PreprocessSpec(encoder="uni")
    a = vit_slide.copy()
    del a.obsm["X_hist"]
    prepare_slide(a, {"encoder": spec.encoder, "encoder_weights": str(spec.encoder_weights)})
    assert a.uns["senca"]["hist_features"]["encoder"] == "vit"
    np.testing.assert_allclose(a.obsm["X_hist"], vit_slide.obsm["X_hist"][vit_slide.obs_names.get_indexer(a.obs_names)],
                               atol=1e-5)
