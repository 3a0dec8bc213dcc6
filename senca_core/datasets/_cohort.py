"""``synthetic_cohort``: several patients' synthetic slides written as h5ad + PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ._synthetic import synthetic_slide


def patient_layout(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient region proportions (tumour burden, sub-clone share, fat, immune margin, glands)."""
    return {
        "tumour": float(rng.uniform(0.18, 0.5)),
        "clone_B": float(rng.uniform(0.15, 0.75)),
        "adipose": float(rng.uniform(0.08, 0.4)),
        "immune_width": float(rng.uniform(0.8, 2.6)),
        "n_glands": float(rng.integers(2, 7)),
        "gland_radius": float(rng.uniform(2.0, 3.2)),
        "n_tumour_foci": float(rng.integers(1, 4)),
    }


def synthetic_cohort(
    out_dir: str | Path,
    n_patients: int = 4,
    slides_per_patient: int = 1,
    n_spots: int = 2000,
    seed: int = 0,
    *,
    grid: str = "hex",
    n_genes: int = 500,
    with_image: bool = True,
    batch_sd: float = 0.1,
) -> list[dict[str, str | None]]:
    """Write a cohort: one ``{slide_id}.h5ad`` (raw counts, spatial, labels) + ``{slide_id}.png``
    per slide in ``out_dir``.

    All slides share the gene panel and the region programmes (one ``panel_seed`` = ``seed``).
    Patients differ in region proportions (``patient_layout``: tumour burden, sub-clone B share,
    adipose share, immune-margin width, glands, tumour nests) and carry a mild patient-level gene
    effect (lognormal, sd ``batch_sd``); slides of one patient share its layout (±5 %) and batch
    effect but have their own geometry. Slide ids are ``P{p}_S{s}``, patient ids ``P{p}``.

    Returns one dict per slide: ``{"patient_id", "slide_id", "h5ad", "image"}`` (absolute paths;
    ``image`` is None without images).
    """
    if int(n_patients) < 1 or int(slides_per_patient) < 1:
        raise ConfigError("n_patients", "n_patients and slides_per_patient must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 11])
    records: list[dict[str, str | None]] = []
    for p in range(int(n_patients)):
        base = patient_layout(rng)
        pid = f"P{p + 1}"
        for s in range(int(slides_per_patient)):
            lay = dict(base)
            if s > 0:
                for k in ("tumour", "clone_B", "adipose"):
                    lay[k] = float(np.clip(lay[k] * rng.uniform(0.95, 1.05), 0.02, 0.95))
            sid = f"{pid}_S{s + 1}"
            slide_seed = int(seed) * 100_003 + p * 1_009 + s
            adata = synthetic_slide(n_spots, seed=slide_seed, grid=grid, n_genes=n_genes,
                                    with_image=with_image, out_dir=out, slide_id=sid,
                                    patient_id=pid, layout=lay, panel_seed=int(seed),
                                    batch_sd=batch_sd, batch_seed=int(seed) * 1_000 + p)
            h5 = (out / f"{sid}.h5ad").resolve()
            adata.write_h5ad(h5)
            records.append({"patient_id": pid, "slide_id": sid, "h5ad": str(h5),
                            "image": adata.uns["senca"].get("image_path")})
    return records
