"""``select_genes``: the genes a slide's PCA uses, by spatial autocorrelation (the default) or by variance."""

from __future__ import annotations

from anndata import AnnData

from ..errors import ConfigError
from ..io._validate import add_warning
from ._hvg import hvg
from ._spatial_genes import NoVaryingGene, spatial_genes

#: how each gene choice ranks genes, and how many it keeps unless told: ``spatial`` (Moran's I over the grid
#: neighbours, :func:`spatial_genes`) and ``variable`` (seurat_v3 highly variable genes, :func:`hvg`, the
#: scanpy pipeline of peers.md). Chosen by leave one section out (docs/BENCHMARKS.md, "Genes chosen by spatial
#: autocorrelation"): 2,000 spatial genes, with the model's readout at ``readout_expr_weight`` 0.5.
GENE_CHOICES = {"spatial": 2000, "variable": 3000}


def select_genes(adata: AnnData, genes: str = "spatial", n_top_genes: int | None = None, *,
                 hvg_flavor: str = "seurat_v3") -> None:
    """Mark the genes of ``var["highly_variable"]`` (with ``highly_variable_rank``) that :func:`pca` will use.

    ``genes="spatial"``: the ``n_top_genes`` (default 2,000) most spatially autocorrelated genes. A slide without
    ``obsm["spatial"]``, or whose log-expression varies in no gene (identical spots, one gene), gets the
    variable genes instead (:func:`hvg`, with its own fallbacks), and ``uns["senca"]["warnings"]`` says so.
    ``genes="variable"``: the ``n_top_genes`` (default 3,000) highly variable genes of ``hvg_flavor``.
    """
    if genes not in GENE_CHOICES:
        raise ConfigError("genes", f"unknown gene choice {genes!r} ({', '.join(GENE_CHOICES)})")
    if genes == "spatial" and "spatial" not in adata.obsm and "spatial_neighbors" not in adata.obsm:
        add_warning(adata, "genes: the slide has no spot positions (obsm['spatial']): variable genes "
                           "(seurat_v3) instead of spatially autocorrelated ones")
        genes = "variable"
    n = GENE_CHOICES[genes] if n_top_genes is None else n_top_genes
    if genes == "spatial":
        try:
            spatial_genes(adata, n_top_genes=n)
            return
        except NoVaryingGene:
            add_warning(adata, "genes: no gene's log-expression varies across spots: variable genes (seurat_v3) "
                               "instead of spatially autocorrelated ones")
            if n_top_genes is None:
                n = GENE_CHOICES["variable"]
    hvg(adata, n_top_genes=n, flavor=hvg_flavor)
