"""Partition and embedding metrics: ARI / NMI against labels (scored spots only); silhouette and partition
stability, which use no label."""

from ._ari import ari
from ._nmi import nmi
from ._silhouette import silhouette
from ._stability import stability

__all__ = ["ari", "nmi", "silhouette", "stability"]
