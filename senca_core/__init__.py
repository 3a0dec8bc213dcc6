"""SENCA-st science: readers, preprocessing, histology features, model, clustering, metrics.

No Ray, no MLflow: every verb takes and returns AnnData and can be used from a notebook::

    import senca_core as sc
    adata = sc.io.read_her2st("data/her2st", "A1")
    sc.pp.preprocess(adata)
"""

import importlib

from . import errors
from .errors import ConfigError, SencaError, SlideError

_NAMESPACES = ("datasets", "hist", "io", "metrics", "model", "pl", "pp", "tl")


def __getattr__(name: str):
    """The namespaces load on first use (``sc.pp`` imports scanpy, ``sc.model`` torch): a program that needs one
    verb, or only the error types, does not pay for all of them."""
    if name in _NAMESPACES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMESPACES))

__all__ = ["datasets", "errors", "hist", "io", "metrics", "model", "pl", "pp", "tl",
           "SencaError", "SlideError", "ConfigError"]
__version__ = "0.1.0"
