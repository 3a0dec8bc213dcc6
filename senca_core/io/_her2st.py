"""``read_her2st``: one HER2ST section found by name under the data set's root."""

from __future__ import annotations

from pathlib import Path

from anndata import AnnData

from ..errors import SlideError
from ._legacy_st import read_legacy_st


def read_her2st(
    root: str | Path,
    section: str,
    *,
    image: str | Path | None = None,
    image_scale: float = 1.0,
    patient_id: str | None = None,
) -> AnnData:
    """Read HER2ST section ``section`` (e.g. ``"A1"``) from the published layout under ``root``.

    Uses ``root/counts/{section}.tsv.gz``, ``root/spots/{section}_selection.tsv`` and, when present,
    ``root/labels/{section}_labeled_coordinates.tsv``; everything else is :func:`read_legacy_st` (same
    AnnData, ``slide_id = section``). The image is not looked up: pass it with its scale, e.g. for A1
    ``image=root/"images/A1_HE_dark_2000px.png", image_scale=2000/6954``; the full-resolution
    ``images/{S}_HE.jpg`` take ``image_scale=1``. ``patient_id`` defaults to the section's patient letter
    (``"A1"`` → ``"A"``: HER2ST sections sharing a letter come from one patient).
    """
    root = Path(root)
    section = str(section)
    if not root.is_dir():
        raise SlideError("HER2ST root folder not found", slide=section, file=str(root), field="root")
    labels = root / "labels" / f"{section}_labeled_coordinates.tsv"
    if patient_id is None:
        patient_id = section.rstrip("0123456789") or section
    return read_legacy_st(
        root / "counts" / f"{section}.tsv.gz",
        root / "spots" / f"{section}_selection.tsv",
        labels=labels if labels.exists() else None,
        image=image,
        image_scale=image_scale,
        slide_id=section,
        patient_id=patient_id,
    )
