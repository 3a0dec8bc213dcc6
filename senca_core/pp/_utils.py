"""Small helpers shared by the pp verbs (not public)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideError


def senca_uns(adata: AnnData) -> dict[str, Any]:
    """``adata.uns["senca"]``, created empty when absent."""
    if "senca" not in adata.uns or not isinstance(adata.uns["senca"], dict):
        adata.uns["senca"] = {}
    return adata.uns["senca"]


def slide_name(adata: AnnData, default: str | None = None) -> str | None:
    """The slide id from ``uns["senca"]["slide_id"]`` (``default`` when unknown)."""
    senca = adata.uns.get("senca", {})
    if isinstance(senca, dict) and senca.get("slide_id") is not None:
        return str(senca["slide_id"])
    return default


def counts_matrix(adata: AnnData) -> sp.csr_matrix:
    """The raw counts as CSR: ``layers["counts"]`` when present, else ``X``."""
    m = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if m is None:
        raise SlideError("no count matrix (X is empty)", slide=slide_name(adata), field="X")
    return m.tocsr() if sp.issparse(m) else sp.csr_matrix(np.asarray(m))


def ensure_counts_layer(adata: AnnData) -> None:
    """Keep the raw counts in ``layers["counts"]`` (the contract: X is raw counts, mirrored there)."""
    if "counts" not in adata.layers:
        adata.layers["counts"] = adata.X.copy() if adata.X is not None else None
