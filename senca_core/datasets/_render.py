"""A fast H&E-like renderer: per-region textures of nuclei (haematoxylin) on eosin / fat / lumens."""

from __future__ import annotations

import numpy as np

from ._design import REGION_NAMES, REGIONS
from ._geometry import BACKGROUND, RASTER, smooth_field

# colours (RGB 0-255)
_HEMA = np.array([72.0, 42.0, 122.0])       # nuclei
_LYMPH = np.array([48.0, 26.0, 98.0])       # dense lymphocyte nuclei
_EOSIN_LIGHT = np.array([242.0, 190.0, 214.0])
_EOSIN_DARK = np.array([214.0, 118.0, 168.0])
_CYTO_TUMOUR = np.array([206.0, 152.0, 196.0])
_CYTO_IMMUNE = np.array([226.0, 182.0, 212.0])
_FAT = np.array([249.0, 245.0, 248.0])
_MEMBRANE = np.array([221.0, 146.0, 188.0])
_LUMEN = np.array([246.0, 236.0, 244.0])
_EPITH = np.array([200.0, 138.0, 190.0])
_GLASS = np.array([246.0, 245.0, 242.0])


def _hash_table(shape: tuple[int, int], rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random((n, shape[0], shape[1]))


def _nuclei(xx, yy, *, cell, presence, r_lo, r_hi, rng, elong=1.0, angle=None, offset=0.0):
    """Alpha (0..1) of nuclei on a jittered lattice (one nucleus at most per cell, inside it).

    Returns alpha and a per-nucleus shade in [0.75, 1.15]."""
    H = int(yy.max()) + 1 if yy.size else 1
    W = int(xx.max()) + 1 if xx.size else 1
    shape = (int(H / cell) + 3, int(W / cell) + 3)
    t = _hash_table(shape, rng, 5)
    x = xx + offset
    y = yy + offset
    cx = (x // cell).astype(np.int64)
    cy = (y // cell).astype(np.int64)
    r = r_lo + (r_hi - r_lo) * t[2, cy, cx]
    a_ax = r * elong            # half-axes of the ellipse
    b_ax = r / elong
    m = np.minimum(a_ax + 0.8, cell / 2.0)  # keep the nucleus inside its cell
    jx = m + (cell - 2 * m) * t[0, cy, cx]
    jy = m + (cell - 2 * m) * t[1, cy, cx]
    dx = x - (cx * cell + jx)
    dy = y - (cy * cell + jy)
    if angle is not None and elong != 1.0:
        ca, sa = np.cos(angle), np.sin(angle)
        u = dx * ca + dy * sa
        v = -dx * sa + dy * ca
        d = np.sqrt((u / a_ax) ** 2 + (v / b_ax) ** 2) * b_ax  # ~distance in px near the edge
        edge = b_ax
    else:
        d = np.hypot(dx, dy)
        edge = r
    alpha = np.clip(edge - d + 0.5, 0.0, 1.0)
    alpha *= t[3, cy, cx] < presence
    shade = 0.75 + 0.4 * t[4, cy, cx]
    return alpha, shade


def _blend(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base * (1.0 - alpha[:, None]) + colour[None, :] * alpha[:, None]


def _tex_tumour(xx, yy, rng):
    base = np.broadcast_to(_CYTO_TUMOUR, (xx.size, 3)).copy()
    for off in (0.0, 5.5):
        a, s = _nuclei(xx, yy, cell=11.0, presence=0.85, r_lo=2.8, r_hi=4.6, rng=rng, offset=off)
        base = base * (1 - a[:, None]) + (_HEMA[None, :] * s[:, None]) * a[:, None]
    return base


def _tex_immune(xx, yy, rng):
    base = np.broadcast_to(_CYTO_IMMUNE, (xx.size, 3)).copy()
    for off in (0.0, 3.3):
        a, s = _nuclei(xx, yy, cell=6.6, presence=0.8, r_lo=1.7, r_hi=2.3, rng=rng, offset=off)
        base = base * (1 - a[:, None]) + (_LYMPH[None, :] * s[:, None]) * a[:, None]
    return base


def _fibres(xx, yy, angle, rng):
    wiggle = rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    f = 0.5 + 0.5 * np.sin(2 * np.pi * v / 6.5 + 1.6 * np.sin(u / 23.0 + wiggle) + 0.9 * np.sin(u / 9.0))
    return f**3


def _tex_stroma(xx, yy, rng, angle):
    f = _fibres(xx, yy, angle, rng)
    base = _EOSIN_LIGHT[None, :] * (1 - f[:, None]) + _EOSIN_DARK[None, :] * f[:, None]
    a, s = _nuclei(xx, yy, cell=17.0, presence=0.35, r_lo=1.8, r_hi=2.4, rng=rng, elong=2.0,
                   angle=angle)
    return base * (1 - a[:, None]) + (_HEMA[None, :] * s[:, None]) * a[:, None]


def _voronoi_f1f2(xx, yy, cell, rng):
    H = int(yy.max()) + 1
    W = int(xx.max()) + 1
    shape = (int(H / cell) + 3, int(W / cell) + 3)
    t = rng.random((2, shape[0], shape[1]))
    cx = (xx // cell).astype(np.int64)
    cy = (yy // cell).astype(np.int64)
    f1 = np.full(xx.size, np.inf)
    f2 = np.full(xx.size, np.inf)
    for dyc in (-1, 0, 1):
        for dxc in (-1, 0, 1):
            nx = np.clip(cx + dxc, 0, shape[1] - 1)
            ny = np.clip(cy + dyc, 0, shape[0] - 1)
            px = (nx + 0.15 + 0.7 * t[0, ny, nx]) * cell
            py = (ny + 0.15 + 0.7 * t[1, ny, nx]) * cell
            d = np.hypot(xx - px, yy - py)
            closer = d < f1
            f2 = np.where(closer, f1, np.minimum(f2, d))
            f1 = np.where(closer, d, f1)
    return f1, f2


def _tex_adipose(xx, yy, rng):
    f1, f2 = _voronoi_f1f2(xx, yy, 26.0, rng)
    alpha = np.clip(2.2 - (f2 - f1), 0.0, 1.0)  # membranes ~2 px thick
    return _FAT[None, :] * (1 - alpha[:, None]) + _MEMBRANE[None, :] * alpha[:, None]


def _tex_gland(xx, yy, rng, angle):
    cell = 34.0
    H = int(yy.max()) + 1
    W = int(xx.max()) + 1
    shape = (int(H / cell) + 3, int(W / cell) + 3)
    t = rng.random((3, shape[0], shape[1]))
    cx = (xx // cell).astype(np.int64)
    cy = (yy // cell).astype(np.int64)
    r1 = 4.5 + 3.0 * t[2, cy, cx]
    r2 = r1 + 7.0
    ox = (cx + 0.5) * cell + (t[0, cy, cx] - 0.5) * (cell - 2 * r2 - 1).clip(0)
    oy = (cy + 0.5) * cell + (t[1, cy, cx] - 0.5) * (cell - 2 * r2 - 1).clip(0)
    dx, dy = xx - ox, yy - oy
    d = np.hypot(dx, dy)
    base = _tex_stroma(xx, yy, rng, angle)
    epi = np.clip(r2 - d + 0.5, 0, 1)
    base = _blend(base, _EPITH, epi)
    lum = np.clip(r1 - d + 0.5, 0, 1)
    base = _blend(base, _LUMEN, lum)
    # a ring of nuclei in the epithelium
    rn = r1 + 3.8
    m = np.maximum(np.round(2 * np.pi * rn / 5.2), 6)
    th = np.arctan2(dy, dx)
    k = np.round(th / (2 * np.pi) * m)
    nx = ox + rn * np.cos(2 * np.pi * k / m)
    ny = oy + rn * np.sin(2 * np.pi * k / m)
    dn = np.hypot(xx - nx, yy - ny)
    a = np.clip(1.9 - dn + 0.5, 0, 1)
    return _blend(base, _HEMA, a)


def render_he(raster: np.ndarray, width: int, height: int, rng: np.random.Generator,
              stain_jitter: float = 0.04) -> np.ndarray:
    """Render an RGB uint8 (height, width, 3) H&E-like image of a region raster (codes as in
    ``REGION_NAMES``, 255 = glass). Regions with the same texture (``REGIONS``) get the same
    rendering process, so they are indistinguishable in the image."""
    full = np.repeat(np.repeat(raster, RASTER, axis=0), RASTER, axis=1)[:height, :width]
    img = np.empty((height, width, 3), np.float32)
    img[...] = _GLASS
    texture_of = np.array([REGIONS[n][0] for n in REGION_NAMES])
    fibre_angle = rng.uniform(0, np.pi)
    for tex in ("tumour", "immune", "stroma", "adipose", "gland"):
        codes = [i for i, t in enumerate(texture_of) if t == tex]
        if not codes:
            continue
        mask = np.isin(full, codes)
        yy, xx = np.nonzero(mask)
        if yy.size == 0:
            continue
        xx = xx.astype(np.float64)
        yy = yy.astype(np.float64)
        sub = np.random.default_rng(rng.integers(1 << 62))
        if tex == "tumour":
            col = _tex_tumour(xx, yy, sub)
        elif tex == "immune":
            col = _tex_immune(xx, yy, sub)
        elif tex == "stroma":
            col = _tex_stroma(xx, yy, sub, fibre_angle)
        elif tex == "adipose":
            col = _tex_adipose(xx, yy, sub)
        else:
            col = _tex_gland(xx, yy, sub, fibre_angle)
        img[yy.astype(np.intp), xx.astype(np.intp)] = col
    # smooth stain intensity variation over the tissue, per-slide stain jitter, pixel noise
    h, w = raster.shape
    vary = smooth_field((h, w), 40.0, rng)
    vary = np.repeat(np.repeat(vary, RASTER, axis=0), RASTER, axis=1)[:height, :width]
    tissue = full != BACKGROUND
    gain = (1.0 + stain_jitter * rng.standard_normal(3)).astype(np.float32)
    img[tissue] = 255.0 - (255.0 - img[tissue]) * gain[None, :] * (1.0 + 0.06 * vary[tissue, None])
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
