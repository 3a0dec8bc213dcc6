"""``read_h5ad``: a slide already stored as .h5ad (ours or a foreign one carrying ``obsm["spatial"]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import SlideError
from ._utils import abspath, display, grid_geometry, guess_grid, need_file, reading
from ._validate import validate_counts

#: spot diameter / grid pitch: legacy ST 100 µm spots on a 200 µm grid; Visium: Space Ranger's
#: spot_diameter_fullres spans 65 µm (the 55 µm spot + margin) on a 100 µm pitch, so 0.65 matches read_visium
DIAMETER_PER_PITCH = {"square": 0.5, "hex": 0.65}


def _check_senca(senca: dict, *, slide: str, file: str) -> None:
    """A stored ``uns["senca"]`` must follow the contract where it has a key (absent keys are filled in)."""
    def fail(key: str, problem: str) -> SlideError:
        return SlideError(f"{problem}, got {senca[key]!r}", slide=slide, file=file, field=f"uns['senca']['{key}']")

    for key in ("slide_id", "patient_id", "platform", "image_path"):
        if key in senca and not isinstance(senca[key], str):
            raise fail(key, "must be a string")
    if "grid" in senca and (not isinstance(senca["grid"], str) or senca["grid"] not in DIAMETER_PER_PITCH):
        raise fail("grid", f"must be one of {sorted(DIAMETER_PER_PITCH)}")
    if "spot_diameter_px" in senca:
        v = senca["spot_diameter_px"]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not np.isfinite(v) or v <= 0:
            raise fail("spot_diameter_px", "must be a positive number")
    for key in ("scalefactors", "source_files", "join", "labels_join"):
        if key in senca and not isinstance(senca[key], dict):
            raise fail(key, "must be a mapping")
    if "warnings" in senca:  # the reader's warnings (h5ad gives a list of str back as an array of str)
        w = senca["warnings"]
        if not isinstance(w, (list, tuple, np.ndarray)) or not all(isinstance(x, str) for x in np.ravel(w)):
            raise fail("warnings", "must be a list of strings")
        senca["warnings"] = [str(x) for x in np.ravel(w)]


def read_h5ad(path: str | Path, *, slide_id: str | None = None, patient_id: str | None = None) -> AnnData:
    """Read one slide from an ``.h5ad`` file and bring it to the senca_core contract.

    - counts: ``layers["counts"]`` when present (a foreign file may hold normalised values in X), else ``X``;
      written back as csr float32 to both ``X`` and ``layers["counts"]`` and checked by
      :func:`validate_counts` (all-zero spots dropped and counted).
    - ``obsm["spatial"]`` must exist (SlideError naming the field otherwise): (n, ≥2) finite numbers, the
      first two columns are kept as float64 x, y.
    - ``uns["senca"]``: kept as stored; missing keys are filled: ``slide_id`` (argument > stored > file
      stem; the argument wins over a stored value), ``patient_id`` (argument > stored > slide_id),
      ``platform`` "h5ad", ``grid`` guessed from the coordinates (6 first-shell neighbours → "hex",
      4 → "square"; absent when it cannot be told), ``spot_diameter_px`` (grid pitch × 0.5 square /
      0.65 hex, as Space Ranger sizes spots), ``scalefactors`` {}, ``source_files`` {"h5ad": path} (a stored
      provenance is kept as is, so a slide written with ``write_h5ad`` reads back equal). A stored key of the wrong
      type (``patient_id`` not a string, ``grid`` not hex/square, ``spot_diameter_px`` not a positive number, …)
      is a SlideError naming ``uns['senca']['<key>']``.
    """
    path_ = Path(path)
    slide = str(slide_id) if slide_id is not None else None
    shown = slide if slide is not None else path_.stem
    need_file(path_, slide=shown, field="h5ad", what="h5ad file")
    import anndata

    with reading(slide=shown, file=display(path), field="h5ad", what="the h5ad file"):
        adata = anndata.read_h5ad(path_)

    stored = adata.uns.get("senca")
    senca = dict(stored) if isinstance(stored, dict) else {}
    if slide is None:
        slide = str(senca.get("slide_id", path_.stem))
    senca["slide_id"] = slide
    if patient_id is not None:
        senca["patient_id"] = str(patient_id)
    senca.setdefault("patient_id", slide)
    senca.setdefault("platform", "h5ad")
    file = display(path)

    _check_senca(senca, slide=slide, file=file)

    if "spatial" not in adata.obsm:
        raise SlideError("missing obsm['spatial'] (spot x, y pixel coordinates)", slide=slide, file=file,
                         field="obsm['spatial']")
    with reading(slide=slide, file=file, field="obsm['spatial']", what="the spot coordinates"):
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise SlideError(f"expected an (n, 2) array, found shape {xy.shape}", slide=slide, file=file,
                         field="obsm['spatial']")
    if not np.isfinite(xy[:, :2]).all():
        raise SlideError(f"{int((~np.isfinite(xy[:, :2])).any(axis=1).sum())} spot(s) have NaN/inf coordinates",
                         slide=slide, file=file, field="obsm['spatial']")
    adata.obsm["spatial"] = np.ascontiguousarray(xy[:, :2])

    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if counts is None:
        raise SlideError("no counts (X is empty and there is no layers['counts'])", slide=slide, file=file,
                         field="X")
    if counts.dtype.kind in "biuf":
        counts = sp.csr_matrix(counts, dtype=np.float32)
    adata.X = counts
    if "counts" in adata.layers:
        del adata.layers["counts"]

    if "grid" not in senca:
        grid = guess_grid(adata.obsm["spatial"])
        if grid is not None:
            senca["grid"] = grid
    if "spot_diameter_px" not in senca and senca.get("grid") in DIAMETER_PER_PITCH:
        pitch, _ = grid_geometry(adata.obsm["spatial"])
        if np.isfinite(pitch):
            senca["spot_diameter_px"] = DIAMETER_PER_PITCH[senca["grid"]] * pitch
    senca.setdefault("scalefactors", {})
    if not senca.get("source_files"):
        senca["source_files"] = {"h5ad": abspath(path)}
    adata.uns["senca"] = senca

    adata = validate_counts(adata, slide=slide, file=file)
    adata.layers["counts"] = adata.X.copy()
    return adata
