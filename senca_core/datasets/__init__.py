"""Synthetic data with ground truth: a slide (counts + H&E-like image + regions) and a cohort."""

from ._cohort import synthetic_cohort
from ._design import (EXPRESSION_ALIKE_PAIRS, HISTOLOGY_ALIKE_PAIRS, PROGRAMMES, REGION_NAMES,
                      REGIONS, TUMOUR_REGIONS)
from ._synthetic import synthetic_slide

__all__ = ["synthetic_slide", "synthetic_cohort", "REGIONS", "REGION_NAMES", "PROGRAMMES",
           "HISTOLOGY_ALIKE_PAIRS", "EXPRESSION_ALIKE_PAIRS", "TUMOUR_REGIONS"]
