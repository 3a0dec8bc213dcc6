"""The synthetic tissue design: regions, their histology textures and expression programmes."""

from __future__ import annotations

#: region -> (histology texture, expression programmes). Two confounded pairs by construction:
#: ``tumour_A``/``tumour_B`` share the texture and differ in programme (separable by expression
#: only); ``stroma``/``adipose`` share the programme and differ in texture (separable by histology
#: only).
REGIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tumour_A": ("tumour", ("epithelial", "tumour", "clone_A")),
    "tumour_B": ("tumour", ("epithelial", "tumour", "clone_B")),
    "stroma": ("stroma", ("stroma",)),
    "adipose": ("adipose", ("stroma",)),
    "immune": ("immune", ("immune",)),
    "gland": ("gland", ("epithelial", "gland")),
}
REGION_NAMES: tuple[str, ...] = tuple(REGIONS)

HISTOLOGY_ALIKE_PAIRS: tuple[tuple[str, str], ...] = (("tumour_A", "tumour_B"),)
EXPRESSION_ALIKE_PAIRS: tuple[tuple[str, str], ...] = (("stroma", "adipose"),)
TUMOUR_REGIONS: tuple[str, ...] = ("tumour_A", "tumour_B")

#: programme -> marker genes (real symbols so that gene-list rules work on synthetic data too)
PROGRAMMES: dict[str, tuple[str, ...]] = {
    "epithelial": ("EPCAM", "KRT8", "KRT18", "KRT19", "CDH1", "CLDN4", "KRT7", "CLDN3"),
    "tumour": ("ERBB2", "GRB7", "MKI67", "TOP2A", "CCNB1", "BIRC5", "UBE2C", "CENPF", "STARD3",
               "PGAP3"),
    "clone_A": ("ESR1", "PGR", "TFF1", "TFF3", "AGR2", "XBP1", "GATA3", "FOXA1", "SCGB2A2", "AR"),
    "clone_B": ("CD24", "SOX9", "KRT17", "S100A2", "LCN2", "MMP7", "CXCL14", "SPP1", "CLDN1",
                "FOXC1"),
    "stroma": ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FN1", "SPARC", "POSTN", "COL6A3",
               "FBLN1", "MGP", "PDGFRB"),
    "immune": ("PTPRC", "CD3E", "CD2", "CD74", "HLA-DRA", "IGKC", "IGHG1", "MS4A1", "CD52",
               "CXCL13", "CCL19", "LYZ"),
    "gland": ("KRT5", "KRT14", "ACTA2", "MYH11", "KRT15", "OXTR", "TP63", "MYLK"),
}

#: relative library size (UMI depth) per region; the expression-alike pair shares one value so
#: that it is not separable by depth artefacts after log-normalisation either.
DEPTH: dict[str, float] = {"tumour_A": 1.3, "tumour_B": 1.3, "stroma": 0.8, "adipose": 0.8,
                           "immune": 1.1, "gland": 1.0}

#: default region proportions (fractions of the tissue; the generator hits them to within a few %)
DEFAULT_LAYOUT: dict[str, float] = {
    "tumour": 0.35,        # both sub-clones together
    "clone_B": 0.45,       # share of the tumour that is sub-clone B
    "adipose": 0.22,       # of the non-tumour tissue
    "immune_width": 1.6,   # width of the immune ring around the tumour, in spot spacings
    "n_glands": 4,         # number of normal glands
    "gland_radius": 2.6,   # their radius, in spot spacings
    "n_tumour_foci": 2,    # tumour nests (sub-regions of the tumour)
}
