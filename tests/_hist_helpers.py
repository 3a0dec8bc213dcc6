"""Helpers of the hist tests (test_hist, test_hist_cnn, test_hist_vit): a synthetic pyramidal TIFF with coloured
markers (written for each test module by the ``pyramid`` fixture in conftest.py), AnnData built by hand following docs/ARCHITECTURE.md."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import tifffile
from PIL import Image

# ----------------------------------------------------------------------------------------------
# a synthetic pyramidal TIFF: 4096 x 4096, levels at downsample 1, 2, 4, coloured square markers
# ----------------------------------------------------------------------------------------------
SIDE = 4096
MARKER = 33  # odd: a marker centred on pixel (x, y) covers [x-16, x+17), continuous centre x + .5
MARKERS = {  # (x, y) pixel index of the centre -> colour
    (1000, 1200): (220, 30, 30),
    (2500, 800): (30, 170, 30),
    (3000, 3100): (30, 30, 220),
    (1600, 2900): (20, 20, 20),
}
LEVEL_BG = [(230, 230, 230), (200, 230, 230), (230, 230, 190)]  # tint per level: tells which was read


def write_pyramid(path: Path) -> None:
    base = np.full((SIDE, SIDE, 3), LEVEL_BG[0], np.uint8)
    half = MARKER // 2
    for (x, y), col in MARKERS.items():
        base[y - half:y + half + 1, x - half:x + half + 1] = col
    with tifffile.TiffWriter(path) as tw:
        for k, ds in enumerate((1, 2, 4)):
            lv = np.array(Image.fromarray(base).reduce(ds)) if ds > 1 else base.copy()  # block means
            if k:
                lv[(lv == LEVEL_BG[0]).all(-1)] = LEVEL_BG[k]
            # OpenSlide "generic-tiff": tiled first IFD = level 0; further tiled top-level IFDs with
            # the reduced-resolution bit (SubFileType = 1) are the lower levels. (SubIFDs are NOT read.)
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib",
                     subfiletype=0 if k == 0 else 1)


def hand_adata(xy, *, image_path=None, diameter=64.0, slide_id="S1", keys=None) -> ad.AnnData:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    keys = keys or [f"spot{i}" for i in range(len(xy))]
    a = ad.AnnData(obs=pd.DataFrame(index=pd.Index(keys)))
    a.obsm["spatial"] = xy
    a.uns["senca"] = {"slide_id": slide_id, "spot_diameter_px": float(diameter), "platform": "synthetic"}
    if image_path is not None:
        a.uns["senca"]["image_path"] = str(image_path)
    return a


def marker_centroid(patch: np.ndarray, colour) -> tuple[float, float, float]:
    """Colour-weighted centroid (x, y, continuous patch coords) and area (px) of a marker in a patch."""
    bg = patch[0, 0].astype(float)
    col = np.asarray(colour, float)
    d = patch.astype(float) - bg
    w = np.clip((d @ (col - bg)) / ((col - bg) @ (col - bg)), 0, 1)
    ys, xs = np.mgrid[0:patch.shape[0], 0:patch.shape[1]] + 0.5
    return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum()), float(w.sum())


