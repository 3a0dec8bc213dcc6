"""Tissue signatures that ``tl.name_regions`` scores regions against: short lists of well-known marker genes.

Two contexts. ``"breast"`` (also the general carcinoma panel): tumour epithelium (the tumour-gene rule of
``tl.tumour_like_regions``: epithelial + HER2 amplicon + proliferation), immune, stroma / fibroblast, adipose
and normal gland (myoepithelial / basal and normal luminal). ``"brain"`` (cortex): layer 1, layer 2/3, 4, 5, 6
and white matter, after the layer markers of Maynard et al. 2021 (Nat Neurosci 24:425, DLPFC Visium) and the
classic oligodendrocyte / myelin genes. A context is chosen per run from which panel the cohort expresses
(``CONTEXT_ANCHORS``). Gene symbols are matched case-insensitively; absent genes are skipped.
"""

from __future__ import annotations

from ._markers import DEFAULT_NORMAL_GENES, DEFAULT_TUMOUR_GENES

#: signature name -> (tissue label written to the tables, positive genes, contrast genes subtracted).
#: Tumour: epithelial + HER2 + proliferation minus the normal-tissue genes of ``tl.tumour_like_regions``
#: (``DEFAULT_NORMAL_GENES``: stroma, immune, adipocyte and the myoepithelial layer of normal ducts), so that normal
#: ducts, which share the epithelial genes, and tumour-contaminated stroma do not read as tumour.
BREAST: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "tumour": ("tumour", tuple(DEFAULT_TUMOUR_GENES), tuple(DEFAULT_NORMAL_GENES)),
    "immune": ("immune", ("PTPRC", "CD74", "CD52", "CD3E", "CD2", "MS4A1", "CD79A", "IGKC", "IGHG1", "IGHM",
                          "JCHAIN", "LYZ", "HLA-DRA", "CXCL13", "CCL19"), ()),
    "stroma": ("stroma", ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FBLN1", "FN1", "SPARC", "POSTN",
                          "COL6A3", "MGP", "PDGFRB"), ()),
    "adipose": ("adipose", ("ADIPOQ", "PLIN1", "PLIN4", "FABP4", "LPL", "CFD", "CIDEA", "CIDEC", "LEP"), ()),
    "normal_gland": ("normal gland", ("KRT5", "KRT14", "KRT17", "KRT15", "TP63", "OXTR", "MYLK", "ACTA2",
                                      "MYH11"), ()),
}

#: Cortical layers and white matter (Maynard et al. 2021 and classic cell-type markers).
BRAIN: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "L1": ("L1", ("AQP4", "GFAP", "RELN", "NDNF", "CXCL14", "FABP7"), ()),
    "L2/3": ("L2/3", ("CUX2", "LAMP5", "HPCAL1", "CARTPT", "RASGRF2", "CALB1"), ()),
    "L4": ("L4", ("RORB", "RXFP1", "PVALB", "WHRN"), ()),
    "L5": ("L5", ("PCP4", "TRABD2A", "FEZF2", "BCL11B", "VAT1L"), ()),
    "L6": ("L6", ("KRT17", "NR4A2", "SYT6", "TLE4", "FOXP2", "SEMA3E"), ()),
    "WM": ("white matter", ("MBP", "PLP1", "MOBP", "MOG", "MAG", "CNP", "CLDN11", "ERMN", "TF"), ()),
}

SIGNATURES: dict[str, dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {"breast": BREAST, "brain": BRAIN}

#: Genes that tell the contexts apart by their overall (cohort mean) expression: the context whose anchors are
#: expressed more is used when ``context="auto"``.
CONTEXT_ANCHORS: dict[str, tuple[str, ...]] = {
    "breast": ("KRT8", "KRT18", "KRT19", "EPCAM", "COL1A1", "COL1A2", "PTPRC", "CD74", "ADIPOQ", "FABP4"),
    "brain": ("SNAP25", "SYT1", "NRGN", "MBP", "PLP1", "GFAP", "CALM1", "STMN2"),
}

#: Genes never used to name a region (mitochondrial and ribosomal protein genes: abundance, not identity).
UNINFORMATIVE_PREFIXES: tuple[str, ...] = ("MT-", "MT.", "RPL", "RPS", "MRPL", "MRPS")

#: Human Ensembl gene ids (GRCh38) of the brain signature and anchor genes, for data whose genes are named by id
#: only (a public DLPFC copy is): a signature gene absent by symbol is looked up by its id.
ENSEMBL_IDS: dict[str, str] = {
    "AQP4": "ENSG00000171885", "GFAP": "ENSG00000131095", "RELN": "ENSG00000189056", "NDNF": "ENSG00000173376",
    "CXCL14": "ENSG00000145824", "FABP7": "ENSG00000164434", "CUX2": "ENSG00000111249", "LAMP5": "ENSG00000125869",
    "HPCAL1": "ENSG00000115756", "CARTPT": "ENSG00000164326", "RASGRF2": "ENSG00000113319",
    "CALB1": "ENSG00000104327", "RORB": "ENSG00000198963", "RXFP1": "ENSG00000171509", "PVALB": "ENSG00000100362",
    "WHRN": "ENSG00000095397", "PCP4": "ENSG00000183036", "TRABD2A": "ENSG00000186854", "FEZF2": "ENSG00000153266",
    "BCL11B": "ENSG00000127152", "VAT1L": "ENSG00000171724", "KRT17": "ENSG00000128422", "NR4A2": "ENSG00000153234",
    "SYT6": "ENSG00000134207", "TLE4": "ENSG00000106829", "FOXP2": "ENSG00000128573", "SEMA3E": "ENSG00000170381",
    "MBP": "ENSG00000197971", "PLP1": "ENSG00000123560", "MOBP": "ENSG00000168314", "MOG": "ENSG00000204655",
    "MAG": "ENSG00000105695", "CNP": "ENSG00000173786", "CLDN11": "ENSG00000013297", "ERMN": "ENSG00000136541",
    "TF": "ENSG00000091513", "SNAP25": "ENSG00000132639", "SYT1": "ENSG00000067715", "NRGN": "ENSG00000154146",
    "CALM1": "ENSG00000198668", "STMN2": "ENSG00000104435", "ENC1": "ENSG00000171617",
}
