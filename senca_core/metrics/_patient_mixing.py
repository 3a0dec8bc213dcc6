"""``patient_mixing``: whether a cohort's pooled regions are shared by patients or follow them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: a region counts as one patient's when at least this share of its spots is that patient's
ONE_PATIENT_SHARE = 0.95
#: regions smaller than this share of the cohort's spots are left out of the verdict (a few stray spots)
MIN_REGION_SHARE = 0.01


def patient_mixing(regions: Sequence[np.ndarray], patients: Sequence[str]) -> pd.DataFrame:
    """Per pooled region: its spots, its largest patient's share, and how many patients it holds.

    ``regions`` holds one label array per slide, and ``patients`` gives each slide's patient id. The result has
    one row per region: ``region``, ``n_spots``, ``top_patient``, ``top_share`` and ``n_patients`` (patients with
    any spot in it). ``one_patient`` is True where ``top_share`` >= :data:`ONE_PATIENT_SHARE`.

    Uses no label. Pooled regions are meant to mean the same tissue in every slide. When every sizeable region
    belongs to one patient, the cut has followed the patients' differences rather than the tissue's
    (docs/BENCHMARKS.md, "Six HER2ST sections").
    """
    if len(regions) != len(patients):
        raise ValueError(f"{len(regions)} label arrays but {len(patients)} patient ids")
    sizes = [np.size(r) for r in regions]
    if sum(sizes) == 0:
        return pd.DataFrame(columns=["region", "n_spots", "top_patient", "top_share", "n_patients", "one_patient"])
    labels = np.concatenate([np.asarray(r).astype(str).ravel() for r in regions])
    owners = np.repeat(np.array([str(p) for p in patients], dtype=object), sizes)
    table = pd.crosstab(pd.Series(labels, name="region"), pd.Series(owners, name="patient"))
    n = table.sum(axis=1)
    out = pd.DataFrame({"region": table.index.astype(str), "n_spots": n.to_numpy(),
                        "top_patient": table.idxmax(axis=1).to_numpy(),
                        "top_share": (table.max(axis=1) / n).to_numpy(),
                        "n_patients": (table > 0).sum(axis=1).to_numpy()})
    out["one_patient"] = out["top_share"] >= ONE_PATIENT_SHARE
    return out.reset_index(drop=True)


def regions_follow_patients(mixing: pd.DataFrame) -> bool:
    """True when a cohort of two or more patients has no sizeable region shared by two of them."""
    if mixing.empty or mixing["n_spots"].sum() == 0:
        return False
    patients = set(mixing["top_patient"])
    sizeable = mixing[mixing["n_spots"] >= MIN_REGION_SHARE * mixing["n_spots"].sum()]
    n_patients_seen = int(mixing["n_patients"].max())
    return (len(patients) >= 2 or n_patients_seen >= 2) and bool(sizeable["one_patient"].all())
