"""Partition and embedding metrics: ARI / NMI against labels (scored spots only), silhouette."""

from ._ari import ari
from ._nmi import nmi
from ._silhouette import silhouette

__all__ = ["ari", "nmi", "silhouette"]
