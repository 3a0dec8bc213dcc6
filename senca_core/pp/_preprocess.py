"""``preprocess``: the expression chain qc → normalize_log → spatial_neighbors → select_genes → pca."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData

from ..errors import SlideError
from ._neighbors import spatial_neighbors
from ._normalize import normalize_log
from ._pca import PcaState, pca
from ._qc import qc
from ._select_genes import select_genes
from ._utils import slide_name


def preprocess(
    adata: AnnData | Sequence[AnnData],
    *,
    genes: str = "spatial",
    n_top_genes: int | None = None,
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

    Per slide: :func:`qc` (``min_counts``, ``min_genes``, ``min_cells``) → :func:`normalize_log`
    (``target_sum``) → :func:`spatial_neighbors` (``k``; grid-aware default; skipped when ``neighbors=False``, unless
    the spatial gene choice needs them, or when the slide has no ``obsm["spatial"]``) → :func:`select_genes`
    (``genes``, ``n_top_genes``) → then :func:`pca` (``n_comps``; one PCA fitted on the pooled spots when a list
    is given).

    ``genes="spatial"`` (default): the 2,000 genes most spatially autocorrelated (Moran's I,
    :func:`spatial_genes`); ``genes="variable"``: the 3,000 highly variable genes (``hvg_flavor``, on raw
    counts). With ``genes="variable"`` this is the scanpy baseline of peers.md (HVG 3000 seurat_v3 → normalise
    1e4 → log1p → PCA 30); a GaussianMixture on ``obsm["X_pca"]`` reproduces its ARI. ``use_hvg=False`` fits
    the PCA on every gene.

    Writes everything the steps write: ``uns["senca"]["qc"]``, ``var["highly_variable"]``,
    ``layers["counts"]``, ``layers["log1p"]``, ``obsm["X_pca"]``, ``varm["PCs"]``, ``uns["pca"]``,
    ``obsm["spatial_neighbors"]``. ``X`` stays raw counts. Returns the PCA state.
    Errors of a slide are re-raised as :class:`SlideError` carrying that slide's id.
    """
    adatas = [adata] if isinstance(adata, AnnData) else list(adata)
    for a in adatas:
        try:
            preprocess_slide(a, genes=genes, n_top_genes=n_top_genes, target_sum=target_sum, min_counts=min_counts,
                             min_genes=min_genes, min_cells=min_cells, hvg_flavor=hvg_flavor, use_hvg=use_hvg, k=k,
                             neighbors=neighbors)
        except SlideError as err:
            raise err.with_slide(slide_name(a, "?")) from None
    state = pca(adatas if len(adatas) > 1 else adatas[0], n_comps=n_comps, use_hvg=use_hvg, seed=seed)
    return state


def preprocess_slide(adata: AnnData, *, genes: str = "spatial", n_top_genes: int | None = None,
                     target_sum: float = 1e4, min_counts: int = 1, min_genes: int = 1, min_cells: int = 3,
                     hvg_flavor: str = "seurat_v3", use_hvg: bool = True, k: int | None = None,
                     neighbors: bool = True) -> None:
    """The per-slide half of :func:`preprocess`, in place: qc → normalize_log → spatial_neighbors → select_genes
    (no PCA: a cohort fits one basis over every slide's genes). The platform's preprocessing stage runs this per
    slide in parallel, then the shared PCA."""
    qc(adata, min_counts=min_counts, min_genes=min_genes, min_cells=min_cells)
    normalize_log(adata, target_sum=target_sum)
    if neighbors and "spatial" in adata.obsm:
        spatial_neighbors(adata, k)
    if use_hvg:
        select_genes(adata, genes, n_top_genes, hvg_flavor=hvg_flavor)
