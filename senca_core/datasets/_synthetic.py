"""``synthetic_slide``: a spatial slide with known regions, counts and an H&E-like image."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import ConfigError
from ._design import (DEFAULT_LAYOUT, DEPTH, EXPRESSION_ALIKE_PAIRS, HISTOLOGY_ALIKE_PAIRS,
                      PROGRAMMES, REGION_NAMES, REGIONS, TUMOUR_REGIONS)
from ._expression import gene_panel, region_profiles, simulate_counts
from ._geometry import make_layout

#: centre-to-centre spot pitch (image pixels) and spot diameter / pitch, per grid
SPACING_PX = {"hex": 28.0, "square": 40.0}
DIAMETER_RATIO = {"hex": 0.55, "square": 0.5}   # Visium 55/100 µm, legacy ST 100/200 µm
LIBRARY_SIZE = {"hex": 3000.0, "square": 2500.0}


def synthetic_slide(
    n_spots: int = 2000,
    *,
    seed: int = 0,
    grid: str = "hex",
    n_genes: int = 500,
    with_image: bool = True,
    out_dir: str | Path | None = None,
    slide_id: str | None = None,
    patient_id: str | None = None,
    layout: dict[str, float] | None = None,
    panel_seed: int = 0,
    library_size: float | None = None,
    spot_spacing_px: float | None = None,
    batch_sd: float = 0.0,
    batch_seed: int | None = None,
    signal: float = 1.0,
) -> AnnData:
    """A synthetic slide with ground-truth regions, raw counts and (optionally) an H&E-like PNG.

    Regions (``REGIONS`` in ``senca_core.datasets._design``): ``tumour_A``, ``tumour_B`` (two
    sub-clones of a tumour made of 1-3 nests, split by a smooth front), ``stroma``, ``adipose``
    (stroma and fat in layered bands), ``immune`` (a patchy ring at the tumour margin plus
    aggregates), ``gland`` (small normal lobules). Geometry is random from ``seed``; proportions
    follow ``layout`` (keys of ``DEFAULT_LAYOUT``: ``tumour``, ``clone_B``, ``adipose``,
    ``immune_width``, ``n_glands``, ``gland_radius``, ``n_tumour_foci``).

    Two confounded pairs are built in and documented in ``uns["senca"]["design"]``:
    - histology-alike, expression-different: ``tumour_A`` / ``tumour_B`` (same rendered texture,
      different clone programmes, ESR1/PGR/TFF1… vs CD24/SOX9/KRT17…);
    - expression-alike, histology-different: ``stroma`` / ``adipose`` (same programme and depth,
      fibrous eosin vs white fat cells).

    Expression: each region's profile = a shared base × its programmes' marker effects
    (``panel_seed``: the same for every slide of a cohort); each spot mixes the profiles of the
    regions under it (boundary spots are mixtures); counts are negative binomial (size 4) around
    a lognormal library size (median ``library_size``, default 3000 hex / 2500 square, times a
    region depth factor) with 5 % extra dropout. ``batch_sd`` > 0 multiplies gene means by a
    lognormal patient/slide effect drawn from ``batch_seed``.

    Image (``with_image``): an RGB PNG ``{slide_id}.png`` in ``out_dir`` (a new temporary folder
    when None). Spot pitch ``spot_spacing_px`` (default 28 px hex, 40 px square): 4,000 hex spots
    give an image of about 2000 × 2000 px.

    Returns an AnnData following docs/ARCHITECTURE.md: ``X`` raw counts (CSR float32, also
    ``layers["counts"]``), ``obs["array_row"/"array_col"]``, ``obs["true_region"]`` (ground truth,
    categorical) copied to ``obs["label"]`` with ``obs["label_scored"]`` all True,
    ``obsm["spatial"]`` (x, y in image pixels), ``uns["senca"]`` (``slide_id``, ``patient_id``,
    ``platform="synthetic"``, ``grid``, ``spot_diameter_px``, ``scalefactors``,
    ``source_files``, ``image_path`` when an image was written, ``design``).
    """
    if grid not in SPACING_PX:
        raise ConfigError("grid", f"unknown grid {grid!r} (hex or square)")
    if int(n_spots) < 50:
        raise ConfigError("n_spots", f"must be at least 50, got {n_spots}")
    lay = dict(DEFAULT_LAYOUT)
    if layout:
        unknown = set(layout) - set(DEFAULT_LAYOUT)
        if unknown:
            raise ConfigError("layout", f"unknown keys {sorted(unknown)} (allowed: {sorted(DEFAULT_LAYOUT)})")
        lay.update({k: float(v) for k, v in layout.items()})
    slide_id = slide_id or f"synthetic_{seed}"
    patient_id = patient_id or f"patient_{seed}"
    spacing = float(spot_spacing_px or SPACING_PX[grid])
    rng = np.random.default_rng([int(seed), 1])

    geo = make_layout(int(n_spots), grid, spacing, lay, rng)
    genes = gene_panel(int(n_genes))
    profiles, _ = region_profiles(genes, panel_seed, signal)
    batch = None
    if batch_sd > 0:
        brng = np.random.default_rng([int(seed if batch_seed is None else batch_seed), 3])
        batch = np.exp(brng.normal(0.0, batch_sd, len(genes)))
    counts = simulate_counts(geo.mix, profiles, np.random.default_rng([int(seed), 2]),
                             library_size=float(library_size or LIBRARY_SIZE[grid]), batch=batch)

    names = np.asarray(REGION_NAMES)[geo.spot_region]
    present = [r for r in REGION_NAMES if r in set(names)]
    region = pd.Categorical(names, categories=present)
    obs = pd.DataFrame(
        {
            "array_row": geo.array_row,
            "array_col": geo.array_col,
            "true_region": region,
            "label": region.copy(),
            "label_scored": np.ones(len(names), bool),
        },
        index=[f"{c}x{r}" for c, r in zip(geo.array_col, geo.array_row)],
    )
    X = sp.csr_matrix(counts.astype(np.float32))
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name=None)))
    adata.layers["counts"] = X.copy()
    adata.obsm["spatial"] = geo.xy.astype(np.float64)
    senca: dict[str, Any] = {
        "slide_id": str(slide_id),
        "patient_id": str(patient_id),
        "platform": "synthetic",
        "grid": grid,
        "spot_diameter_px": float(DIAMETER_RATIO[grid] * spacing),
        "scalefactors": {"image_scale": 1.0, "spot_spacing_px": spacing},
        "source_files": {"generator": f"senca_core.datasets.synthetic_slide(seed={int(seed)})"},
        "design": design_record(lay, seed, panel_seed, signal),
    }
    if with_image:
        from PIL import Image

        from ._render import render_he

        img = render_he(geo.raster, geo.width, geo.height, np.random.default_rng([int(seed), 4]))
        folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="senca_synth_"))
        folder.mkdir(parents=True, exist_ok=True)
        path = (folder / f"{slide_id}.png").resolve()
        Image.fromarray(img).save(path, compress_level=1)
        senca["image_path"] = str(path)
        senca["source_files"]["image"] = str(path)
        senca["image_size"] = np.array([geo.width, geo.height], dtype=np.int64)
    adata.uns["senca"] = senca
    return adata


def design_record(layout: dict[str, float], seed: int, panel_seed: int, signal: float = 1.0) -> dict[str, Any]:
    """The ground-truth design, h5ad-writable (no None, no empty lists)."""
    return {
        "regions": np.asarray(REGION_NAMES, dtype=str),
        "texture": {r: REGIONS[r][0] for r in REGION_NAMES},
        "programmes": {r: "+".join(REGIONS[r][1]) for r in REGION_NAMES},
        "markers": {p: np.asarray(g, dtype=str) for p, g in PROGRAMMES.items()},
        "depth_factor": {r: float(DEPTH[r]) for r in REGION_NAMES},
        "histology_alike_pairs": np.asarray(HISTOLOGY_ALIKE_PAIRS, dtype=str),
        "expression_alike_pairs": np.asarray(EXPRESSION_ALIKE_PAIRS, dtype=str),
        "tumour_regions": np.asarray(TUMOUR_REGIONS, dtype=str),
        "layout": {k: float(v) for k, v in layout.items()},
        "seed": int(seed),
        "panel_seed": int(panel_seed),
        "signal": float(signal),
        "note": ("tumour_A/tumour_B: same histology texture, different expression programme "
                 "(clone_A vs clone_B markers); stroma/adipose: same expression programme and "
                 "depth, different histology texture (fibrous eosin vs fat cells)."),
    }
