"""``preprocess``: the expression chain qc → hvg → normalize_log → pca → spatial_neighbors."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData

from ..errors import SlideError
from ._hvg import hvg
from ._neighbors import spatial_neighbors
from ._normalize import normalize_log
from ._pca import PcaState, pca
from ._qc import qc
from ._utils import slide_name


def preprocess(
    adata: AnnData | Sequence[AnnData],
    *,
    n_top_genes: int = 3000,
    n_comps: int = 30,
    target_sum: float = 1e4,
    min_counts: int = 1,
    min_genes: int = 1,
    min_cells: int = 3,
    hvg_flavor: str = "seurat_v3",
    use_hvg: bool = True,
    k: int | None = None,
    seed: int = 0,
    neighbors: bool = True,
) -> PcaState:
    """Run the expression chain in place on one slide, or on a cohort with one shared PCA basis.

    Per slide: :func:`qc` (``min_counts``, ``min_genes``, ``min_cells``) → :func:`hvg`
    (``n_top_genes``, ``hvg_flavor``, on raw counts) → :func:`normalize_log` (``target_sum``) →
    then :func:`pca` (``n_comps``; one PCA fitted on the pooled spots when a list is given) →
    :func:`spatial_neighbors` (``k``; grid-aware default; skipped when ``neighbors=False`` or the
    slide has no ``obsm["spatial"]``).

    With the defaults this is the scanpy baseline of peers.md (HVG 3000 seurat_v3 → normalise
    1e4 → log1p → PCA 30); a GaussianMixture on ``obsm["X_pca"]`` reproduces its ARI.

    Writes everything the steps write: ``uns["senca"]["qc"]``, ``var["highly_variable"]``,
    ``layers["counts"]``, ``layers["log1p"]``, ``obsm["X_pca"]``, ``varm["PCs"]``, ``uns["pca"]``,
    ``obsm["spatial_neighbors"]``. ``X`` stays raw counts. Returns the PCA state.
    Errors of a slide are re-raised as :class:`SlideError` carrying that slide's id.
    """
    adatas = [adata] if isinstance(adata, AnnData) else list(adata)
    for a in adatas:
        try:
            qc(a, min_counts=min_counts, min_genes=min_genes, min_cells=min_cells)
            if use_hvg:
                hvg(a, n_top_genes=n_top_genes, flavor=hvg_flavor)
            normalize_log(a, target_sum=target_sum)
        except SlideError as err:
            raise err.with_slide(slide_name(a, "?")) from None
    state = pca(adatas if len(adatas) > 1 else adatas[0], n_comps=n_comps, use_hvg=use_hvg, seed=seed)
    if neighbors:
        for a in adatas:
            if "spatial" in a.obsm:
                try:
                    spatial_neighbors(a, k)
                except SlideError as err:
                    raise err.with_slide(slide_name(a, "?")) from None
    return state
