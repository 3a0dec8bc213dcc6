"""Synthetic tissue geometry: the spot array, the tissue outline and the region raster."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._design import REGION_NAMES

BACKGROUND = 255  # raster code outside the tissue
RASTER = 4        # the region raster is the image downsampled by this factor


@dataclass
class Layout:
    """Spots and regions of one synthetic slide (all lengths in image pixels)."""

    xy: np.ndarray            # (n, 2) float64 spot centres (x, y) in the image frame
    array_row: np.ndarray     # (n,) int64
    array_col: np.ndarray     # (n,) int64
    raster: np.ndarray        # (H/RASTER, W/RASTER) uint8 region codes (index in REGION_NAMES), 255 = off tissue
    spot_region: np.ndarray   # (n,) int64 region codes
    mix: np.ndarray           # (n, R) float64 region weights under each spot (boundary mixing)
    width: int
    height: int
    spacing: float


def _grid(n_spots: int, grid: str, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rectangular candidate array with about 2 × n_spots spots, centred on 0."""
    side = int(np.ceil(np.sqrt(2.2 * n_spots))) + 4
    if grid == "hex":
        rows = int(np.ceil(side * 1.08))
        r, c = np.mgrid[0:rows, 0:2 * side]
        keep = (r + c) % 2 == 0  # Visium: columns of one parity per row
        r, c = r[keep], c[keep]
        x = c * spacing / 2.0
        y = r * spacing * np.sqrt(3.0) / 2.0
    else:
        r, c = np.mgrid[0:side, 0:side]
        r, c = r.ravel(), c.ravel()
        x = c * spacing
        y = r * spacing
    xy = np.stack([x, y], axis=1).astype(np.float64)
    xy -= xy.mean(axis=0)
    return xy, r.astype(np.int64), c.astype(np.int64)


def _outline(rng: np.random.Generator):
    """A random blob-shaped radial function: p -> radius in units of its own scale."""
    aspect = rng.uniform(0.8, 1.25)
    rot = rng.uniform(0, np.pi)
    harm = [(m, rng.normal(0, 0.07 / m**0.5), rng.uniform(0, 2 * np.pi)) for m in range(2, 6)]

    def reff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = x * np.cos(rot) + y * np.sin(rot)
        v = (-x * np.sin(rot) + y * np.cos(rot)) * aspect
        th = np.arctan2(v, u)
        a = 1.0 + sum(amp * np.cos(m * th + ph) for m, amp, ph in harm)
        return np.hypot(u, v) / a

    return reff


def smooth_field(shape: tuple[int, int], corr: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with correlation length ``corr`` (pixels of ``shape``), sd 1."""
    corr = max(float(corr), 2.0)
    cs = (int(np.ceil(shape[0] / corr)) + 3, int(np.ceil(shape[1] / corr)) + 3)
    coarse = rng.standard_normal(cs)
    f = ndimage.zoom(coarse, corr, order=3, mode="reflect", grid_mode=False)[: shape[0], : shape[1]]
    if f.shape != shape:  # zoom rounding
        f = np.pad(f, ((0, shape[0] - f.shape[0]), (0, shape[1] - f.shape[1])), mode="edge")
    f = f - f.mean()
    sd = f.std()
    return f / sd if sd > 0 else f


def make_layout(
    n_spots: int,
    grid: str,
    spacing: float,
    layout: dict[str, float],
    rng: np.random.Generator,
) -> Layout:
    """Spots (exactly ``n_spots``) on a blob of tissue, and the region raster they sample."""
    R = len(REGION_NAMES)
    code = {name: i for i, name in enumerate(REGION_NAMES)}
    xy, rows, cols = _grid(n_spots, grid, spacing)
    reff = _outline(rng)
    r = reff(xy[:, 0], xy[:, 1])
    order = np.argsort(r, kind="stable")[:n_spots]
    order.sort()
    xy, rows, cols = xy[order], rows[order], cols[order]
    rmin, cmin = rows.min(), cols.min()
    if (rmin + cmin) % 2:  # keep the hex parity: array_row + array_col even
        cmin -= 1
    rows = rows - rmin
    cols = cols - cmin
    thr = r[order].max() + 0.6 * spacing
    margin = 1.5 * spacing
    lo = xy.min(axis=0) - margin
    hi = xy.max(axis=0) + margin
    W = int(np.ceil((hi[0] - lo[0]) / RASTER)) * RASTER
    H = int(np.ceil((hi[1] - lo[1]) / RASTER)) * RASTER
    centre_shift = lo.copy()
    xy = xy - centre_shift
    h, w = H // RASTER, W // RASTER
    # raster pixel centres, in image pixels, in the original (centred) frame
    ys = (np.arange(h) + 0.5) * RASTER + centre_shift[1]
    xs = (np.arange(w) + 0.5) * RASTER + centre_shift[0]
    gx, gy = np.meshgrid(xs, ys)
    tissue = reff(gx, gy) <= thr
    sp_r = spacing / RASTER  # one spot spacing in raster pixels

    si = np.clip((xy[:, 1] / RASTER).astype(int), 0, h - 1)  # spot -> raster index
    sj = np.clip((xy[:, 0] / RASTER).astype(int), 0, w - 1)
    tissue[si, sj] = True

    def at_spots(f: np.ndarray) -> np.ndarray:
        return f[si, sj]

    # --- tumour: a few foci (nests) with irregular borders --------------------------------------
    n_foci = max(1, int(round(layout["n_tumour_foci"])))
    inner = np.flatnonzero(r[order] < 0.65 * r[order].max())
    if inner.size == 0:
        inner = np.arange(n_spots)
    extent = np.sqrt(n_spots) * spacing
    pot = np.zeros((h, w))
    for f in range(n_foci):
        c = xy[rng.choice(inner)] / RASTER
        s = rng.uniform(0.12, 0.22) * extent / RASTER * (1.0 if f == 0 else rng.uniform(0.55, 0.9))
        pot = np.maximum(pot, np.exp(-((gx - centre_shift[0]) / RASTER - c[0]) ** 2 / (2 * s**2)
                                     - ((gy - centre_shift[1]) / RASTER - c[1]) ** 2 / (2 * s**2)))
    pot = pot + 0.22 * smooth_field((h, w), 3.5 * sp_r, rng)
    f_tum = float(np.clip(layout["tumour"], 0.0, 0.95))
    tumour = np.zeros((h, w), bool)
    if f_tum > 0:
        tau = np.quantile(at_spots(pot), 1.0 - f_tum)
        tumour = (pot >= tau) & tissue
    # --- sub-clones: split by a smooth front ----------------------------------------------------
    ang = rng.uniform(0, 2 * np.pi)
    front = (np.cos(ang) * gx + np.sin(ang) * gy) / (extent) * 2.5 + 0.6 * smooth_field((h, w), 5 * sp_r, rng)
    clone_b = np.zeros((h, w), bool)
    f_b = float(np.clip(layout["clone_B"], 0.0, 1.0))
    t_sp = at_spots(tumour)
    if t_sp.any() and f_b > 0:
        tauB = np.quantile(at_spots(front)[t_sp], 1.0 - f_b)
        clone_b = tumour & (front >= tauB)
    # --- immune: patchy ring at the invasive margin + a few aggregates ---------------------------
    d_out = ndimage.distance_transform_edt(~tumour) / sp_r if tumour.any() else np.full((h, w), np.inf)
    width = float(layout["immune_width"]) * (1.0 + 0.45 * smooth_field((h, w), 3 * sp_r, rng))
    immune = (~tumour) & tissue & (d_out <= np.clip(width, 0.0, None))
    n_agg = int(rng.integers(1, 3))
    cand = np.flatnonzero(~t_sp & (at_spots(d_out) > 4))
    for _ in range(n_agg if cand.size else 0):
        c = xy[rng.choice(cand)] / RASTER
        rad = rng.uniform(1.2, 2.0) * sp_r
        immune |= (((gx - centre_shift[0]) / RASTER - c[0]) ** 2 + ((gy - centre_shift[1]) / RASTER - c[1]) ** 2
                   <= rad**2) & tissue & ~tumour
    # --- background: stroma vs adipose in layered bands ------------------------------------------
    ang2 = rng.uniform(0, 2 * np.pi)
    band = (np.cos(ang2) * gx + np.sin(ang2) * gy) / extent * 3.0 + 0.7 * smooth_field((h, w), 6 * sp_r, rng)
    rest_sp = ~(t_sp | at_spots(immune))
    adipose = np.zeros((h, w), bool)
    f_ad = float(np.clip(layout["adipose"], 0.0, 1.0))
    if rest_sp.any() and f_ad > 0:
        tauA = np.quantile(at_spots(band)[rest_sp], 1.0 - f_ad)
        adipose = (band >= tauA) & tissue
    # --- glands: small round lobules in the stroma, away from the tumour -------------------------
    gland = np.zeros((h, w), bool)
    n_gl = int(round(layout["n_glands"]))
    ok = np.flatnonzero(rest_sp & ~at_spots(adipose) & (at_spots(d_out) > layout["gland_radius"] + 2))
    if ok.size == 0:
        ok = np.flatnonzero(rest_sp & (at_spots(d_out) > layout["gland_radius"] + 1))
    for _ in range(n_gl if ok.size else 0):
        c = xy[rng.choice(ok)] / RASTER
        rad = layout["gland_radius"] * rng.uniform(0.75, 1.25) * sp_r
        gland |= (((gx - centre_shift[0]) / RASTER - c[0]) ** 2 + ((gy - centre_shift[1]) / RASTER - c[1]) ** 2
                  <= rad**2)
    # --- compose (precedence: tumour > immune > gland > adipose > stroma) ------------------------
    raster = np.full((h, w), BACKGROUND, np.uint8)
    raster[tissue] = code["stroma"]
    raster[tissue & adipose] = code["adipose"]
    raster[tissue & gland] = code["gland"]
    raster[immune] = code["immune"]
    raster[tumour] = code["tumour_A"]
    raster[clone_b] = code["tumour_B"]
    spot_region = raster[si, sj].astype(np.int64)
    # boundary mixing: what a spot of ~one spacing captures around its centre
    mix = np.empty((n_spots, R))
    for k in range(R):
        mix[:, k] = ndimage.gaussian_filter((raster == k).astype(np.float32), 0.35 * sp_r)[si, sj]
    mix[np.arange(n_spots), spot_region] += 0.5  # the centre region always dominates
    mix /= mix.sum(axis=1, keepdims=True)
    return Layout(xy=xy, array_row=rows, array_col=cols, raster=raster, spot_region=spot_region,
                  mix=mix, width=W, height=H, spacing=float(spacing))
