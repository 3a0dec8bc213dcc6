"""SENCA-st science: readers, preprocessing, histology features, model, clustering, metrics.

No Ray, no MLflow: every verb takes and returns AnnData and can be used from a notebook::

    import senca_core as sc
    adata = sc.io.read_her2st("data/her2st", "A1")
    sc.pp.preprocess(adata)
"""

from . import datasets, errors, hist, io, metrics, model, pl, pp, tl
from .errors import ConfigError, SencaError, SlideError

__all__ = ["datasets", "errors", "hist", "io", "metrics", "model", "pl", "pp", "tl",
           "SencaError", "SlideError", "ConfigError"]
__version__ = "0.1.0"
