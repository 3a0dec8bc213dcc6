"""The model as MLflow sees it: SENCA-st wrapped as a pyfunc, and the input example its signature is cut from."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyfunc_class():
    import mlflow.pyfunc

    class SencaEmbedder(mlflow.pyfunc.PythonModel):
        """SENCA-st as an MLflow pyfunc: preprocessed features of one slide → fused embedding (n, embed_dim).

        Input (a dict of arrays, one slide): ``X_pca`` float32 (n, n_pca) in the cohort's shared PCA basis,
        ``X_hist`` float32 (n, F) histology features (width 0 when the slide has no image), ``spatial_neighbors``
        int64 (n, k+1), column 0 = the spot itself.
        """

        def load_context(self, context):
            from senca_core.model import load_model

            self.model = load_model(context.artifacts["model"], device="cpu")

        def predict(self, context, model_input, params=None):
            import scipy.sparse as sp
            from anndata import AnnData
            from senca_core.model import embed

            X = np.asarray(model_input["X_pca"], dtype=np.float32)
            a = AnnData(X=sp.csr_matrix((X.shape[0], 0), dtype=np.float32))
            a.obsm["X_pca"] = X
            a.obsm["spatial_neighbors"] = np.asarray(model_input["spatial_neighbors"], dtype=np.int64)
            hist = model_input.get("X_hist") if hasattr(model_input, "get") else None
            if hist is not None and np.asarray(hist).ndim == 2 and np.asarray(hist).shape[1] > 0:
                a.obsm["X_hist"] = np.asarray(hist, dtype=np.float32)
            a.uns["senca"] = {"slide_id": "pyfunc"}
            return embed(self.model, a)

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


__all__ = ["model_example"]
