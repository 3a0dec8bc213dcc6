"""Slide readers: every reader returns ONE AnnData per slide in the senca_core contract
(docs/ARCHITECTURE.md) and raises :class:`senca_core.errors.SlideError` on bad input.
:func:`read` is the one dispatch (a reader named, or told from the path), as scanpy's ``sc.read``."""

from ._h5ad import read_h5ad
from ._her2st import read_her2st
from ._legacy_st import read_legacy_st
from ._read import READERS, infer_reader, read
from ._scanpy import to_scanpy
from ._validate import add_warning, validate_counts
from ._visium import read_visium

__all__ = ["read", "infer_reader", "READERS", "read_legacy_st", "read_her2st", "read_visium", "read_h5ad",
           "validate_counts", "add_warning", "to_scanpy"]
