"""Partition and embedding metrics: ARI / NMI against labels (scored spots only); silhouette, partition
stability and the patient mixing of a cohort's regions, which use no label."""

from ._ari import ari
from ._nmi import nmi
from ._patient_mixing import patient_mixing, regions_follow_patients
from ._silhouette import silhouette
from ._stability import stability

__all__ = ["ari", "nmi", "patient_mixing", "regions_follow_patients", "silhouette", "stability"]
