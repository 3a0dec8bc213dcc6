"""Tools: the SENCA-st embedding, region clustering, and per-slide summaries."""

from ._cluster import RegionModel, assign_regions, cluster, resolve_cut_by
from ._consensus import ConsensusRegionModel
from ._per_slide import PerSlideRegionModel
from ._labels import refine_labels, spatial_prior_labels
from ._heterogeneity import heterogeneity
from ._markers import (DEFAULT_NORMAL_GENES, DEFAULT_TUMOUR_GENES, marker_genes, tumour_like_regions,
                       tumour_scores)
from ._microenvironment import microenvironment
from ._name_regions import (REGION_COLUMNS, annotate_region_names, name_regions, region_colors, region_names_dict,
                            region_profile)
from ._senca import apply, senca
from ._subregions import SUBREGION_COLUMNS, tumour_subregions

__all__ = ["senca", "apply", "cluster", "refine_labels", "spatial_prior_labels", "RegionModel", "ConsensusRegionModel",
           "PerSlideRegionModel",
           "assign_regions", "resolve_cut_by",
           "heterogeneity", "microenvironment", "marker_genes",
           "tumour_like_regions", "tumour_scores", "DEFAULT_TUMOUR_GENES", "DEFAULT_NORMAL_GENES",
           "name_regions", "region_profile", "region_colors", "region_names_dict", "annotate_region_names",
           "REGION_COLUMNS", "tumour_subregions", "SUBREGION_COLUMNS"]
