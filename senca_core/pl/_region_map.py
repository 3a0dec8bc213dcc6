"""``region_map``: regions as coloured spots over the H&E thumbnail, written as a PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import SlideError

_NA_COLOUR = "#bdbdbd"


def _palette(n: int) -> list:
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.05, 0.95, n)]


def _thumbnail(path: str, max_px: int) -> tuple[np.ndarray, float] | None:
    """(RGB thumbnail, scale = thumbnail px / image px), or None when it cannot be read."""
    from PIL import Image

    p = Path(path)
    if not p.exists():
        return None
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # full-resolution H&E are legitimately huge
        with Image.open(p) as im:
            W, H = im.size
        from ..hist._plain_decode import decode_reduced

        # JPEG: decoded at a reduced size (fast); a huge PNG streamed into a reduction (bounded memory)
        im, _, _ = decode_reduced(p, min_factor=max(W, H) / max_px)
        im.thumbnail((max_px, max_px))
        return np.asarray(im), im.size[0] / W
    except Exception:  # pyramidal TIFF / SVS: try OpenSlide
        try:
            import openslide

            with openslide.OpenSlide(str(p)) as sl:
                W, H = sl.dimensions
                im = sl.get_thumbnail((max_px, max_px)).convert("RGB")
                return np.asarray(im), im.size[0] / W
        except Exception:
            return None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _legend_names(adata: AnnData, key: str) -> dict[str, str]:
    """``{region: "R2 · A/B — tissue"}`` from a names table of ``tl.name_regions`` on the slide, if any."""
    senca = adata.uns.get("senca") if isinstance(adata.uns.get("senca"), dict) else {}
    table = senca.get("region_names") if isinstance(senca.get("region_names"), dict) else adata.uns.get("region_names")
    if not isinstance(table, dict) or "region" not in table or "region_name" not in table or key != "region":
        return {}
    tissue = list(table.get("tissue", [""] * len(table["region"])))
    return {str(r): (f"{n} — {t}" if t and str(t) != "unassigned" else str(n))
            for r, n, t in zip(table["region"], table["region_name"], tissue)}


def _tight_box(fig, image):
    """The figure's tight bounding box (what ``bbox_inches="tight"`` saves), laid out with the H&E image hidden:
    the image lies inside the axes, so the box is the same, and the lanczos resampling of the thumbnail is done once,
    when the PNG is drawn, instead of also in the layout pass (0.17 s a map)."""
    import matplotlib

    if image is not None:
        image.set_visible(False)
    try:
        fig.draw_without_rendering()
        box = fig.get_tightbbox(fig.canvas.get_renderer())
    finally:
        if image is not None:
            image.set_visible(True)
    pad = matplotlib.rcParams["savefig.pad_inches"]
    return box.padded(pad, pad)


def region_map(
    adata: AnnData,
    key: str = "region",
    out: str | Path = "region_map.png",
    *,
    thumbnail_px: int = 800,
    title: str | None = None,
    alpha: float = 0.8,
    dpi: int = 150,
    names: Mapping[str, str] | None = None,
) -> Path:
    """Draw ``obs[key]`` as coloured spots over the slide's H&E thumbnail and save a PNG.

    The thumbnail comes from ``uns["senca"]["image_path"]`` (longest side ``thumbnail_px``;
    JPEG/PNG via Pillow, pyramidal slides via OpenSlide); without an image (or when it cannot be
    read) spots are drawn on a plain background. Spots are circles of ``spot_diameter_px`` (or
    0.9 × the grid pitch when unknown) at ``obsm["spatial"]``, coloured per category (colours from
    ``uns[f"{key}_colors"]`` when present, else tab10/tab20); NA spots are grey. The view is cropped
    to the spots (+ a margin). The title names the slide id and the key; a legend lists the
    categories with their spot counts, each under its name: ``names`` ({category: text}) or, when None and
    ``key`` is the named key, the ``tl.name_regions`` table in ``uns["senca"]["region_names"]`` /
    ``uns["region_names"]`` (``"R2 · ERBB2/KRT19 — tumour"``; the tissue only when assigned). A category keeps
    its colour (its position among all categories) whether or not the other categories occur on the slide.

    Returns the path written. Nothing is written to adata.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection
    from matplotlib.patches import Patch

    senca = adata.uns.get("senca", {}) if isinstance(adata.uns.get("senca"), dict) else {}
    slide = str(senca.get("slide_id", "slide"))
    if key not in adata.obs:
        raise SlideError(f"no column {key!r} in obs to draw", slide=slide, field=f"obs['{key}']")
    if "spatial" not in adata.obsm:
        raise SlideError("no spot coordinates to draw", slide=slide, field="obsm['spatial']")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    col = adata.obs[key]
    cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(col.dropna().astype(str).unique())
    cats = [str(c) for c in cats]
    colours = adata.uns.get(f"{key}_colors")
    if colours is None or len(colours) < len(cats):
        colours = _palette(len(cats))
    cmap = {c: colours[i] for i, c in enumerate(cats)}  # by position among ALL categories: stable per region
    cats = [c for c in cats if (col.astype(str) == c).any()] or cats
    legend = _legend_names(adata, key) if names is None else {str(k): str(v) for k, v in names.items()}
    labels = col.astype(object).where(col.notna(), None).to_numpy()
    face = [cmap.get(str(v), _NA_COLOUR) if v is not None else _NA_COLOUR for v in labels]

    diam = senca.get("spot_diameter_px")
    if not diam:
        from ..pp._neighbors import grid_spacing

        diam = 0.9 * grid_spacing(xy)
    diam = float(diam)

    thumb = None
    if senca.get("image_path"):
        thumb = _thumbnail(str(senca["image_path"]), int(thumbnail_px))
    scale = thumb[1] if thumb is not None else 1.0
    pts = xy * scale
    d = diam * scale
    margin = 1.5 * d + 0.03 * float(np.ptp(pts, axis=0).max() or 1.0)
    x0, y0 = pts.min(axis=0) - margin
    x1, y1 = pts.max(axis=0) + margin
    if thumb is not None:
        h, w = thumb[0].shape[:2]
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        x1, y1 = min(x1, float(w)), min(y1, float(h))

    aspect = (y1 - y0) / max(x1 - x0, 1e-9)
    fig_w = 7.5
    fig, ax = plt.subplots(figsize=(fig_w + 2.6, max(fig_w * aspect, 3.0)), dpi=dpi)
    image = None
    if thumb is not None:
        image = ax.imshow(thumb[0], origin="upper", interpolation="lanczos")
    else:
        ax.set_facecolor("#f4f1ec")
    ec = EllipseCollection(np.full(len(pts), d), np.full(len(pts), d), np.zeros(len(pts)),
                           units="xy", offsets=pts, offset_transform=ax.transData,
                           facecolors=face, edgecolors="white", linewidths=0.3, alpha=alpha)
    ax.add_collection(ec)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image frame: y down
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    counts = pd.Series([str(v) for v in labels if v is not None]).value_counts()
    handles = [Patch(facecolor=cmap[c], edgecolor="none", label=f"{legend.get(c, c)} ({int(counts.get(c, 0))})")
               for c in cats]
    n_na = int(sum(v is None for v in labels))
    if n_na:
        handles.append(Patch(facecolor=_NA_COLOUR, edgecolor="none", label=f"NA ({n_na})"))
    ax.legend(handles=handles, title=key, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, fontsize=9, title_fontsize=10)
    ax.set_title(title or f"{slide} — {key} ({adata.n_obs} spots)", fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 for a PNG: a tenth larger file, a quarter of the encoding time (0.4-0.5 s a map at PIL's default 6,
    # one map per slide); the pixels are the same
    png = {"pil_kwargs": {"compress_level": 1}} if out.suffix.lower() == ".png" else {}
    fig.savefig(out, bbox_inches=_tight_box(fig, image), facecolor="white", **png)
    plt.close(fig)
    return out
