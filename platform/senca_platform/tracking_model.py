"""The model as MLflow sees it: SENCA-st wrapped as a pyfunc, and the input example its signature is cut from."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from .tracking_log import model_description, selection_tags


class SencaEmbedder(mlflow.pyfunc.PythonModel):
    """SENCA-st as an MLflow pyfunc: the preprocessed features of one slide → its spots' regions and embedding.

    Input (a dict of arrays, one slide): ``X_pca`` float32 (n, n_pca) in the cohort's shared PCA basis,
    ``X_hist`` float32 (n, F) histology features (width 0 when the slide has no image), ``spatial_neighbors``
    int64 (n, k+1), column 0 = the spot itself.

    Output: a DataFrame, one row per spot: ``region`` (the training cohort's region id, from its fitted region
    model; -1 when the model was logged without one) and ``z_0 .. z_{d-1}`` (the fused embedding).
    """

    #: the input is a dict of arrays, checked by the logged signature: no type-hint validation (and no warning)
    _skip_type_hint_validation = True

    def load_context(self, context):
        import pickle

        from senca_core.model import load_model

        self.model = load_model(context.artifacts["model"], device="cpu")
        path = context.artifacts.get("region_model")
        self.region_model = pickle.loads(Path(path).read_bytes()) if path else None

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import scipy.sparse as sp
        from anndata import AnnData
        from senca_core.model import readout

        X = np.asarray(model_input["X_pca"], dtype=np.float32)
        a = AnnData(X=sp.csr_matrix((X.shape[0], 0), dtype=np.float32))
        a.obsm["X_pca"] = X
        neighbors = np.asarray(model_input["spatial_neighbors"], dtype=np.int64)
        a.obsm["spatial_neighbors"] = neighbors
        hist = model_input.get("X_hist") if hasattr(model_input, "get") else None
        if hist is not None and np.asarray(hist).ndim == 2 and np.asarray(hist).shape[1] > 0:
            a.obsm["X_hist"] = np.asarray(hist, dtype=np.float32)
        a.uns["senca"] = {"slide_id": "pyfunc"}
        z, r = readout(self.model, a)
        regions = np.full(len(z), -1, dtype=np.int64)
        if getattr(self, "region_model", None) is not None:
            regions = np.asarray(self.region_model.labels(r, neighbors), dtype=np.int64)
        out = pd.DataFrame(z, columns=[f"z_{i}" for i in range(z.shape[1])])
        out.insert(0, "region", regions)
        return out


def _pyfunc_class():
    return SencaEmbedder


def model_example(slide_h5ad: str | Path, n: int = 64) -> dict[str, np.ndarray]:
    """A small input example cut from one preprocessed slide (neighbours re-indexed into the cut)."""
    import anndata as ad

    a = ad.read_h5ad(slide_h5ad)
    n = min(n, a.n_obs)
    nb = np.asarray(a.obsm["spatial_neighbors"][:n], dtype=np.int64)
    nb = np.where(nb < n, nb, np.arange(n)[:, None])
    hist = np.asarray(a.obsm["X_hist"][:n], dtype=np.float32) if "X_hist" in a.obsm \
        else np.zeros((n, 0), dtype=np.float32)
    return {"X_pca": np.asarray(a.obsm["X_pca"][:n], dtype=np.float32), "X_hist": hist, "spatial_neighbors": nb}


def input_schema(n_pca: int):
    """The pyfunc's input: ``X_pca`` (n, n_pca), ``X_hist`` (n, any width: 0 for a slide without image),
    ``spatial_neighbors`` (n, any k+1)."""
    from mlflow.types.schema import Schema, TensorSpec

    return Schema([TensorSpec(np.dtype(np.float32), (-1, int(n_pca)), "X_pca"),
                   TensorSpec(np.dtype(np.float32), (-1, -1), "X_hist"),
                   TensorSpec(np.dtype(np.int64), (-1, -1), "spatial_neighbors")])


def output_schema(width: int):
    """The pyfunc's output: ``region`` (int64) and ``z_0 .. z_{width-1}`` (float32), as MLflow infers it from
    ``SencaEmbedder.predict``'s DataFrame."""
    from mlflow.types.schema import ColSpec, Schema

    return Schema([ColSpec("long", "region")] + [ColSpec("float", f"z_{i}") for i in range(int(width))])


def _output_schema(out: Path, artifacts: dict[str, str], example: dict[str, np.ndarray]):
    """The output schema from the width of the embeddings the infer stage wrote (``OUT/infer/latent/*.npy``): the
    driver needs no torch for it (its import, ~2 s of CPU, was most of the model's logging). Without them (a run
    whose outputs were moved), the model is loaded from ``artifacts`` as MLflow will load it, and run on the
    example."""
    latent = sorted((out / "infer" / "latent").glob("*.npy"))
    if latent:
        return output_schema(np.load(latent[0], mmap_mode="r").shape[1])
    from types import SimpleNamespace

    import torch
    from mlflow.models import infer_signature

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with warnings.catch_warnings():  # "add type hints to predict": the input is a dict of arrays, on purpose
        warnings.simplefilter("ignore")
        embedder = _pyfunc_class()()
    embedder.load_context(SimpleNamespace(artifacts=artifacts))
    return infer_signature(example, embedder.predict(None, example)).outputs


def log_pyfunc(self, model_path: str | Path, example_slide: str | Path,
              selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """``MlflowTracker.log_model`` (``self``: the tracker): log the model as a pyfunc with a signature, register it under the spec's name, set the alias; the
    version carries how it was chosen (``selection``, a tuned run: ``jobs.stage_model.selection_rule``)."""
    import mlflow
    from mlflow.models import ModelSignature

    name = self.spec.model_name
    sha = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    registered = _registered_with(self, name, sha) if self.spec.tracking.register_model else None
    if registered is not None:  # the same weights are registered already (a cached re-run): reuse
        self.client.set_registered_model_alias(name, self.spec.tracking.alias, str(registered.version))
        self.client.set_tag(self.run_id, "senca.model_version_reused", str(registered.version))
        return {"name": name, "uri": registered.source, "version": int(registered.version),
                "alias": self.spec.tracking.alias, "registered_uri": f"models:/{name}@{self.spec.tracking.alias}",
                "reused": True}
    example = model_example(example_slide)
    artifacts = {"model": str(model_path)}
    region_model = self.out / "infer" / "region_model.pkl"  # jobs.infer.cluster_cohort's, this run's
    if region_model.is_file():
        artifacts["region_model"] = str(region_model)
    # slides without an image send X_hist of width 0: its feature axis is free (input_schema)
    signature = ModelSignature(inputs=input_schema(example["X_pca"].shape[1]),
                               outputs=_output_schema(self.out, artifacts, example))
    # the model is logged at the training curve's last step, so the metrics MLflow links to it are the final ones
    # (at step 0 it took the first epoch's train_loss); the cohort's scalars (step 0) are linked as well
    curve = self.client.get_metric_history(self.run_id, "train_loss")
    last = max((m.step for m in curve), default=0)
    with mlflow.start_run(run_id=self.run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(CODE_PATH), artifacts=artifacts,
            signature=signature, step=last,
            pip_requirements=["torch", "anndata", "numpy", "scipy", "senca-platform"],
        )
    if last:
        _link_scalars(self.client, self.run_id, info.model_id)
    self.client.update_run(self.run_id, status="RUNNING")  # leaving start_run() ended it: finish() does
    result = {"name": name, "uri": info.model_uri, "version": None, "alias": None}
    if self.spec.tracking.register_model:
        # registered with its identifying tags in one request: a version never exists without its sha256, so a
        # re-run / resume / sync after a kill at any point finds it and never registers the weights twice
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mv = mlflow.register_model(info.model_uri, name, await_registration_for=60,
                                       tags={"senca.cohort": self.spec.name, "senca.model_sha256": sha,
                                             **selection_tags(selection)})
        version = int(mv.version)
        self.client.update_model_version(name, str(version), description=model_description(selection, self))
        self.client.set_registered_model_alias(name, self.spec.tracking.alias, str(version))
        result.update(version=version, alias=self.spec.tracking.alias,
                      registered_uri=f"models:/{name}@{self.spec.tracking.alias}")
    return result

def _registered_with(self, name: str, sha: str):
    try:
        versions = self.client.search_model_versions(f"name = '{name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return None
    for v in sorted(versions, key=lambda v: -int(v.version)):
        if (v.tags or {}).get("senca.model_sha256") == sha:
            return v
    return None


def _link_scalars(client, run_id: str, model_id: str) -> None:
    """The run's one-value metrics (``mean_ari``, ``k``, ``ari_<slide>``, ...) linked to the logged model, as MLflow
    links the metrics of the model's own step. One read of the run: the platform logs every one-value metric at
    step 0 and every curve at its epoch, so a metric whose latest value sits at step 0 has no other step."""
    from mlflow.entities import Metric

    latest = client.get_run(run_id).data.to_proto().metrics  # key, value, timestamp and step of each latest value
    scalars = [Metric(key=m.key, value=m.value, timestamp=m.timestamp, step=m.step, model_id=model_id, run_id=run_id)
               for m in latest if m.step == 0]
    for i in range(0, len(scalars), 500):
        client.log_batch(run_id, metrics=scalars[i:i + 500])


#: the file MLflow logs as the model's code (models from code: no pickled class)
CODE_PATH = Path(__file__).with_name("_pyfunc_code.py")

__all__ = ["SencaEmbedder", "model_example", "input_schema", "log_pyfunc", "CODE_PATH"]
