"""Expression preprocessing (scanpy underneath; every verb works in place on one slide's AnnData).

``X`` stays raw counts (mirrored in ``layers["counts"]``); the log-normalised matrix lives in
``layers["log1p"]``.
"""

from ._common_genes import common_genes, panel_outliers
from ._hvg import hvg
from ._neighbors import GRID_K, spatial_neighbors
from ._normalize import normalize_log
from ._pca import PcaState, pca, pca_genes, pca_project
from ._preprocess import preprocess, preprocess_slide
from ._qc import qc
from ._select_genes import GENE_CHOICES, select_genes
from ._spatial_genes import spatial_genes

__all__ = ["qc", "hvg", "spatial_genes", "select_genes", "GENE_CHOICES", "normalize_log", "pca", "pca_genes",
           "pca_project", "PcaState", "spatial_neighbors", "GRID_K", "common_genes", "panel_outliers", "preprocess",
           "preprocess_slide"]
