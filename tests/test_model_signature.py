"""The registered pyfunc's output schema: built from the embeddings' width (the driver loads no torch to log the
model), equal to what MLflow infers from a prediction; without the run's embeddings the model itself is run."""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import infer_signature

import senca_core as sc
from senca_core.model import SencaConfig
from senca_platform.tracking_model import _output_schema, output_schema
from test_model import FAST, _grid_slide


def _example(a, n=20):
    nb = np.asarray(a.obsm["spatial_neighbors"][:n], dtype=np.int64)
    return {"X_pca": a.obsm["X_pca"][:n].astype(np.float32), "X_hist": a.obsm["X_hist"][:n].astype(np.float32),
            "spatial_neighbors": np.where(nb < n, nb, np.arange(n)[:, None])}


def test_the_output_schema_is_what_mlflow_infers_from_a_prediction():
    out = pd.DataFrame(np.zeros((5, 3), dtype=np.float32), columns=["z_0", "z_1", "z_2"])
    out.insert(0, "region", np.zeros(5, dtype=np.int64))
    assert output_schema(3) == infer_signature({"X_pca": np.zeros((5, 2), np.float32)}, out).outputs


def test_from_the_latent_files_or_else_from_the_model(tmp_path):
    a = _grid_slide()
    model = sc.tl.senca(a, SencaConfig(**dict(FAST, epochs=2)))
    path = sc.model.save_model(model, tmp_path / "model.pt")
    width = a.obsm["X_senca_latent"].shape[1]
    example = _example(a)
    # no embeddings written: the model is run on the example
    assert _output_schema(tmp_path, {"model": str(path)}, example) == output_schema(width)
    latent = tmp_path / "infer" / "latent"
    latent.mkdir(parents=True)
    np.save(latent / "S.npy", np.zeros((7, width), dtype=np.float32))
    assert _output_schema(tmp_path, {"model": str(tmp_path / "absent.pt")}, example) == output_schema(width)  # not read
