"""senca_core.hist: the CNN patch encoder (local weights only, never a download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import senca_core.hist as hist
from senca_core.errors import ConfigError

from _hist_helpers import MARKERS, hand_adata


# ----------------------------------------------------------------------------------------------
# CNN encoder (local weights only)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18_random.pt"
    torch.save(hist.CNNEncoder.network().state_dict(), path)
    return path


def test_cnn_encoder_loads_local_weights_and_is_deterministic(cnn_weights, tmp_path):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    enc = hist.CNNEncoder(cnn_weights, batch_size=4)
    f1 = enc(patches)
    f2 = hist.CNNEncoder(cnn_weights)(patches)
    assert f1.shape == (6, 512) and f1.dtype == np.float32 and len(enc.names) == 512
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)  # same weights, same features
    assert np.abs(f1[0] - f1[1]).max() > 1e-4  # different patches, different features
    # a differently initialised network gives different features: the file is really used
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(hist.CNNEncoder.network().state_dict(), other)
    assert np.abs(hist.CNNEncoder(other)(patches) - f1).max() > 1e-4
    # torchvision-style checkpoint: "module." prefix, a classifier head, wrapped in {"state_dict"}
    sd = {f"module.{k}": v for k, v in torch.load(cnn_weights, weights_only=True).items()}
    sd["module.fc.weight"], sd["module.fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": sd}, wrapped)
    np.testing.assert_allclose(hist.CNNEncoder(wrapped)(patches), f1, rtol=1e-5, atol=1e-6)


def test_cnn_encoder_bad_weights(tmp_path, pyramid):
    with pytest.raises(ConfigError, match="not found") as err:
        hist.CNNEncoder(tmp_path / "missing.pt")
    assert err.value.field == "weights"
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="ResNet-18 layout"):
        hist.CNNEncoder(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot load"):
        hist.CNNEncoder(junk)
    a = hand_adata([(1000, 1200)], image_path=pyramid)
    with pytest.raises(ConfigError) as err:
        hist.patch_features(a, encoder="cnn")
    assert err.value.field == "weights"
    with pytest.raises(ConfigError):
        hist.patch_features(a, encoder="vit")


def test_patch_features_with_cnn(pyramid, cnn_weights):
    xy = list(MARKERS)
    a = hand_adata(xy, image_path=pyramid, diameter=64.0)
    hist.patch_features(a, encoder="cnn", weights=cnn_weights, context=1.0, size=64)
    X = a.obsm["X_hist"]
    info = a.uns["senca"]["hist_features"]
    assert X.shape == (4, 512) and X.dtype == np.float32
    assert info["encoder"] == "cnn" and info["weights"] == str(cnn_weights) and len(info["names"]) == 512
    assert a.obs["patch_in_image"].all()
    # the red and the blue marker patches are encoded differently
    assert np.abs(X[0] - X[2]).max() > 1e-4
