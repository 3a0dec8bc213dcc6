"""``morphology_features``: weights-free H&E tissue descriptors of RGB patches (numpy + scipy).

Per patch, at two scales — the whole patch (``full_*``) and its centre half (``centre_*``; with
``context=2`` that is about the spot itself) — it computes:

* **colour**: RGB mean/sd, grey mean/sd, HSV saturation mean/sd/q90;
* **stain (H&E colour deconvolution)**: Ruifrok & Johnston (Anal. Quant. Cytol. Histol. 2001)
  optical density ``OD = -log10(I / 255)`` unmixed with the inverse of their H/E/DAB stain matrix
  (rows normalised); per channel (``h``, ``e``, ``d`` — on H&E the third is a residual) mean, sd,
  q10/q50/q90; mean H and E OD over tissue pixels, their ratio, and total OD;
* **tissue**: fractions of tissue, bright background (white/pale, unsaturated) and black (masked
  background as in the HER2ST ``*_dark`` images) pixels;
* **nuclei proxies**: fraction of pixels (and of tissue pixels) with haematoxylin OD above
  :data:`NUCLEUS_H_OD`; number of connected haematoxylin-dark blobs (≥ 2 px, 8-connectivity,
  ``scipy.ndimage.label``) per 1,000 px and their mean area;
* **texture**: grey gradient magnitude mean/sd/q90, haematoxylin gradient mean, local (5×5) sd
  mean/q90, structure-tensor coherence (fibre alignment, e.g. stroma), grey-level co-occurrence
  matrix (8 grey levels, offsets (0,1) and (1,0), symmetric) contrast / homogeneity / energy /
  correlation / entropy, and a rotation-invariant local-binary-pattern histogram (number of the 8
  neighbours at least as bright as the centre, 9 bins).

Everything is vectorised over the batch (no per-patch Python loop). Features are absolute (fixed
thresholds), so they are comparable across slides of similar staining; standardise them before a
model (``patch_features`` stores them raw).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import ConfigError

__all__ = ["morphology_features", "NUCLEUS_H_OD"]

# Ruifrok & Johnston stain OD vectors (rows: haematoxylin, eosin, DAB), normalised to unit length.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                          [0.07, 0.99, 0.11],
                          [0.27, 0.57, 0.78]], dtype=np.float64)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)
# OD lookup table: OD(I) = -log10(max(I, 1) / 255), I in 0..255
_OD_LUT = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)
_GREY_W = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: Haematoxylin OD above which a pixel counts as nuclear (dark blue/purple).
NUCLEUS_H_OD = 0.6
#: Background: bright and unsaturated (glass, fat vacuoles) ...
_BG_GREY, _BG_SAT = 0.75, 0.12
#: ... or black (masked-out background): max channel below this.
_BLACK_MAX = 0.12
_GLCM_LEVELS = 8
_MIN_BLOB_PX = 2


def _blob_stats(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per patch (n, h, w) bool: number of 8-connected blobs of ≥ _MIN_BLOB_PX px and their mean area."""
    n = mask.shape[0]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside a patch, none across the batch axis
    labels, n_lab = ndimage.label(mask, structure=structure)
    if n_lab == 0:
        return np.zeros(n, np.float32), np.zeros(n, np.float32)
    # labels are assigned in C order, so each patch holds a contiguous range of label ids
    last_label = np.maximum.accumulate(labels.reshape(n, -1).max(axis=1))
    sizes = np.bincount(labels.ravel(), minlength=n_lab + 1)[1:]
    owner = np.searchsorted(last_label, np.arange(1, n_lab + 1), side="left")
    keep = sizes >= _MIN_BLOB_PX
    count = np.bincount(owner[keep], minlength=n).astype(np.float32)
    area = np.bincount(owner[keep], weights=sizes[keep], minlength=n).astype(np.float32)
    mean_area = np.where(count > 0, area / np.maximum(count, 1), 0).astype(np.float32)
    return count, mean_area


def _glcm(q: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric normalised co-occurrence matrices (n, L, L) over offsets (0,1) and (1,0)."""
    n = q.shape[0]
    base = (np.arange(n, dtype=np.int64) * levels * levels)[:, None, None]
    counts = np.zeros(n * levels * levels, dtype=np.float64)
    for a, b in ((q[:, :, :-1], q[:, :, 1:]), (q[:, :-1, :], q[:, 1:, :])):
        idx = (base + a.astype(np.int64) * levels + b).ravel()
        counts += np.bincount(idx, minlength=n * levels * levels)
    p = counts.reshape(n, levels, levels)
    p = p + p.transpose(0, 2, 1)
    return p / p.sum(axis=(1, 2), keepdims=True)


def _one_scale(p: np.ndarray) -> tuple[np.ndarray, list[str]]:
    n, h, w, _ = p.shape
    m = h * w
    feats: list[np.ndarray] = []
    names: list[str] = []

    def add(name: str, value: np.ndarray) -> None:
        names.append(name)
        feats.append(np.asarray(value, dtype=np.float32).reshape(n))

    chw = np.ascontiguousarray(np.moveaxis(p, 3, 1))  # (n, 3, h, w): contiguous channel planes
    rgb = chw.astype(np.float32) * np.float32(1 / 255.0)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    flat = rgb.reshape(n, 3, m)
    means, sds = flat.mean(-1), flat.std(-1)
    for c, ch in enumerate("rgb"):
        add(f"{ch}_mean", means[:, c])
    for c, ch in enumerate("rgb"):
        add(f"{ch}_sd", sds[:, c])
    grey = _GREY_W[0] * r + _GREY_W[1] * g + _GREY_W[2] * b  # (n, h, w)
    gflat = grey.reshape(n, m)
    add("grey_mean", gflat.mean(1))
    add("grey_sd", gflat.std(1))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    sat = (mx - mn) / np.maximum(mx, 1e-6)  # HSV saturation (0 for black)
    sflat = sat.reshape(n, m)
    add("sat_mean", sflat.mean(1))
    add("sat_sd", sflat.std(1))
    add("sat_q90", np.quantile(sflat, 0.9, axis=1))

    # masks
    black = mx < _BLACK_MAX
    bright_bg = (grey > _BG_GREY) & (sat < _BG_SAT)
    tissue = ~black & ~bright_bg
    tflat = tissue.reshape(n, m)
    n_tissue = tflat.sum(1).astype(np.float32)
    add("tissue_frac", n_tissue / m)
    add("background_frac", bright_bg.reshape(n, m).mean(1))
    add("black_frac", black.reshape(n, m).mean(1))

    # colour deconvolution: OD per channel (lookup table), unmixed into H, E, D planes
    od = _OD_LUT[chw]  # (n, 3, h, w)
    H = _HED_FROM_RGB
    hed = np.stack([np.clip(od[:, 0] * H[0, k] + od[:, 1] * H[1, k] + od[:, 2] * H[2, k], 0, None)
                    for k in range(3)], axis=1)  # (n, 3, h, w)
    hflat = hed.reshape(n, 3, m)
    # H/E/D q10/q50/q90 in one partition pass per row
    qs = np.quantile(hflat, (0.1, 0.5, 0.9), axis=-1)  # (3 q, n, 3 stains)
    hmean, hsd = hflat.mean(-1), hflat.std(-1)
    for c, st in enumerate("hed"):
        add(f"od_{st}_mean", hmean[:, c])
        add(f"od_{st}_sd", hsd[:, c])
        for k, q in enumerate((10, 50, 90)):
            add(f"od_{st}_q{q}", qs[k, :, c])
    denom = np.maximum(n_tissue, 1)
    h_t = (hflat[:, 0] * tflat).sum(1) / denom
    e_t = (hflat[:, 1] * tflat).sum(1) / denom
    add("od_h_tissue_mean", h_t)
    add("od_e_tissue_mean", e_t)
    add("od_h_to_e", h_t / (h_t + e_t + 1e-3))
    add("od_total_mean", od.reshape(n, 3 * m).sum(1) / m)

    # nuclei proxies (haematoxylin-dark pixels; black background excluded)
    nuc = (hed[:, 0] > NUCLEUS_H_OD) & ~black
    nflat = nuc.reshape(n, m)
    add("nuc_frac", nflat.mean(1))
    add("nuc_frac_tissue", nflat.sum(1) / denom)
    count, mean_area = _blob_stats(nuc)
    add("nuc_blobs_per_kpx", count * 1000.0 / m)
    add("nuc_blob_mean_area", mean_area)

    # texture: gradients, local variance, structure tensor
    gy, gx = np.gradient(grey, axis=(1, 2))
    gmag = np.sqrt(gx * gx + gy * gy).reshape(n, m)
    add("grad_mean", gmag.mean(1))
    add("grad_sd", gmag.std(1))
    add("grad_q90", np.quantile(gmag, 0.9, axis=1))
    hy, hx = np.gradient(hed[:, 0], axis=(1, 2))
    add("od_h_grad_mean", np.sqrt(hx * hx + hy * hy).reshape(n, m).mean(1))
    win = (1, 5, 5)
    mu = ndimage.uniform_filter(grey, size=win, mode="reflect")
    mu2 = ndimage.uniform_filter(grey * grey, size=win, mode="reflect")
    lsd = np.sqrt(np.clip(mu2 - mu * mu, 0, None)).reshape(n, m)
    add("local_sd_mean", lsd.mean(1))
    add("local_sd_q90", np.quantile(lsd, 0.9, axis=1))
    jxx = ndimage.uniform_filter(gx * gx, size=win, mode="reflect")
    jyy = ndimage.uniform_filter(gy * gy, size=win, mode="reflect")
    jxy = ndimage.uniform_filter(gx * gy, size=win, mode="reflect")
    tr = jxx + jyy
    coh = np.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / np.maximum(tr, 1e-12)
    add("coherence", (coh * tr).reshape(n, m).sum(1) / np.maximum(tr.reshape(n, m).sum(1), 1e-12))

    # GLCM on 8 grey levels
    L = _GLCM_LEVELS
    q = np.minimum((grey * L).astype(np.int64), L - 1)
    P = _glcm(q, L)
    i = np.arange(L, dtype=np.float64)[None, :, None]
    j = np.arange(L, dtype=np.float64)[None, None, :]
    add("glcm_contrast", (P * (i - j) ** 2).sum((1, 2)))
    add("glcm_homogeneity", (P / (1.0 + (i - j) ** 2)).sum((1, 2)))
    add("glcm_energy", np.sqrt((P * P).sum((1, 2))))
    mu_i = (P * i).sum((1, 2), keepdims=True)
    var_i = (P * (i - mu_i) ** 2).sum((1, 2), keepdims=True)
    corr = (P * (i - mu_i) * (j - mu_i)).sum((1, 2), keepdims=True) / np.maximum(var_i, 1e-12)
    add("glcm_correlation", np.where(var_i > 1e-12, corr, 1.0))
    add("glcm_entropy", -(P * np.log(np.where(P > 0, P, 1.0))).sum((1, 2)))

    # rotation-invariant LBP: number of the 8 neighbours >= centre
    c = grey[:, 1:-1, 1:-1]
    k = np.zeros(c.shape, dtype=np.int64)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            k += grey[:, dy:dy + h - 2, dx:dx + w - 2] >= c
    mc = c.shape[1] * c.shape[2]
    idx = (np.arange(n, dtype=np.int64)[:, None, None] * 9 + k).ravel()
    hist = np.bincount(idx, minlength=n * 9).reshape(n, 9) / mc
    for b in range(9):
        add(f"lbp_{b}", hist[:, b])

    return np.stack(feats, axis=1), names


def morphology_features(patches: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Weights-free morphology descriptors of H&E patches.

    Parameters
    ----------
    patches
        ``uint8`` array ``(n, h, w, 3)`` (RGB), e.g. from :func:`extract_patches`; ``h, w >= 16``.

    Returns
    -------
    ``(features, names)``: ``float32`` array ``(n, F)`` and the ``F`` feature names, the whole patch
    (``full_*``) then its centre half (``centre_*``). See the module docstring for the list.
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ConfigError("patches", f"must be (n, h, w, 3) RGB, got shape {patches.shape}")
    if patches.dtype != np.uint8:
        raise ConfigError("patches", f"must be uint8, got {patches.dtype}")
    n, h, w, _ = patches.shape
    if h < 16 or w < 16:
        raise ConfigError("patches", f"patches must be at least 16x16 px, got {h}x{w}")
    if n == 0:
        _, names = morphology_features(np.full((1, h, w, 3), 255, np.uint8))
        return np.zeros((0, len(names)), np.float32), names
    full, names = _one_scale(patches)
    y0, x0 = h // 4, w // 4
    centre, _ = _one_scale(np.ascontiguousarray(patches[:, y0:h - y0, x0:w - x0]))
    feats = np.concatenate([full, centre], axis=1).astype(np.float32)
    feats[~np.isfinite(feats)] = 0.0
    return feats, [f"full_{k}" for k in names] + [f"centre_{k}" for k in names]
