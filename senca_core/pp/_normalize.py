"""``normalize_log``: library-size normalisation + log1p into ``layers["log1p"]``."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError
from ._utils import counts_matrix, ensure_counts_layer, senca_uns


def normalize_log(adata: AnnData, target_sum: float = 1e4) -> None:
    """Scale each spot to ``target_sum`` total counts and take ``log1p``.

    Decision (the senca_core contract, docs/ARCHITECTURE.md): **X stays raw counts** and is never
    modified by ``pp``; the log-normalised matrix goes to ``layers["log1p"]`` and the raw counts are
    mirrored in ``layers["counts"]`` (created here when absent). Re-running is therefore safe (it
    always starts from the counts) and HVG selection on counts stays valid at any point.

    Spots with zero counts stay all-zero (no division by zero).

    Writes
    ------
    ``layers["log1p"]`` (CSR float32), ``layers["counts"]`` (if absent), and
    ``uns["senca"]["normalize"] = {"target_sum": float, "log": "log1p"}``.
    """
    if target_sum is None or not np.isfinite(target_sum) or target_sum <= 0:
        raise ConfigError("target_sum", f"must be a positive number, got {target_sum!r}")
    ensure_counts_layer(adata)
    counts = counts_matrix(adata)
    lognorm = log_normalize(counts, target_sum)
    adata.layers["log1p"] = lognorm
    senca_uns(adata)["normalize"] = {"target_sum": float(target_sum), "log": "log1p"}
    return None


def log_normalize(counts: sp.spmatrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(counts / total * target_sum)`` per row, as CSR float32 (0-count rows stay 0)."""
    m = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    total = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    m.data = np.log1p(m.data * np.repeat(scale, np.diff(m.indptr))).astype(np.float32)
    m.eliminate_zeros()
    return m
