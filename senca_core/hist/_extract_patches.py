"""``extract_patches``: one RGB patch per spot, centred on the spot, from the slide's H&E image.

Geometry
--------
``obsm["spatial"][i] = (x, y)`` is the spot centre as a pixel index in the image frame (level 0),
so in continuous coordinates (pixel ``j`` covering ``[j, j + 1)``) the centre is ``(x + .5, y + .5)``.
The patch is the square of side ``side = spot_diameter_px * context`` (level-0 pixels) around it,
resampled (antialiased bilinear, sub-pixel exact) to ``size × size``.

Which resolution is read
------------------------
The patch is read from the level whose downsample is closest to, but not above,
``side / size`` (so the image is never upsampled more than needed); when every level is coarser
(``side < size``) the finest level is used.

* Pyramidal slides (``openslide.OpenSlide``): the slide's own levels.
* Plain JPEG (``openslide.ImageSlide``): libjpeg's DCT-domain scaling gives levels 1, 2, 4, 8 for
  free (Pillow ``Image.draft``); the chosen one is decoded once, which for a 9,300 × 9,900 HER2ST
  JPEG at the default 64 px output is a 1/4-scale decode, ~6x faster than a full decode.
* Other plain images (PNG, …): level 0 only, decoded once.
* A plain image above ``MAX_WHOLE_DECODE_PIXELS``: decoded downsampled within that bound (JPEG draft + box
  reduction, PNG streamed; ``_plain_decode``), said in the slide's warnings; patches keep level-0 geometry.

Strategies (``strategy=``)
--------------------------
``"decode"``: decode the chosen level once (a plain image; for an OpenSlide slide one
``read_region`` of the spots' bounding box at the chosen level, if it holds at most
``_MAX_DECODE_PIXELS``, else it falls back to per spot) and slice patches out of it.
``"per_spot"``: one ``slide.read_region`` per spot (an ``ImageSlide`` then reads level 0, which
Pillow still decodes whole on first use). ``"auto"`` (default): ``"decode"`` for plain images,
``"per_spot"`` for pyramidal slides (tile-cached reads, bounded memory). ``bench/bench_patches.py``
measures them.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import openslide
from anndata import AnnData
from PIL import Image

from ..errors import ConfigError, SlideError
from ._open_slide import MAX_WHOLE_DECODE_PIXELS, open_slide
from ._plain_decode import decode_reduced

__all__ = ["extract_patches"]

_WHITE = (255, 255, 255)
_RESAMPLE = Image.Resampling.BILINEAR  # antialiased (support scales with the reduction) in Pillow
_JPEG_SCALES = (1, 2, 4, 8)
#: Largest region (pixels) read in one go by the "decode" strategy on a pyramidal slide.
_MAX_DECODE_PIXELS = 64 * 1024 * 1024
_MAX_KEYS_IN_MESSAGE = 10


def _best_level(downsamples: Sequence[float], target: float) -> int:
    """Index of the level whose downsample is closest to but not above ``target``.

    When every level is coarser than ``target`` (``target`` < the finest downsample), the finest
    level. A relative tolerance of 1e-3 absorbs the rounding of OpenSlide's downsamples
    (e.g. 3.9998 for a nominal 4).
    """
    ds = np.asarray(downsamples, dtype=float)
    ok = np.flatnonzero(ds <= target * (1 + 1e-3))
    if ok.size == 0:
        return int(np.argmin(ds))
    return int(ok[np.argmax(ds[ok])])


def _to_rgb_over_white(img: Image.Image) -> Image.Image:
    """RGB image; transparent / alpha pixels composited over white (OpenSlide's outside = alpha 0)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        alpha = img.getchannel("A")
        if alpha.getextrema() == (255, 255):
            return img.convert("RGB")
        out = Image.new("RGB", img.size, _WHITE)
        out.paste(img.convert("RGB"), mask=alpha)
        return out
    return img.convert("RGB")


class _DecodedLevel:
    """One decoded level (a PIL RGB image) whose pixel (0, 0) is at ``offset`` in level coordinates."""

    def __init__(self, img: Image.Image, downsample: tuple[float, float], offset=(0, 0)) -> None:
        self.img = img
        self.dsx, self.dsy = downsample
        self.ox, self.oy = offset
        self.w, self.h = img.size

    def patch(self, box0: tuple[float, float, float, float], size: int) -> Image.Image:
        x0, y0, x1, y1 = box0
        b = (x0 / self.dsx - self.ox, y0 / self.dsy - self.oy,
             x1 / self.dsx - self.ox, y1 / self.dsy - self.oy)
        if b[0] >= 0 and b[1] >= 0 and b[2] <= self.w and b[3] <= self.h:
            return self.img.resize((size, size), _RESAMPLE, box=b)
        # (partly) outside: copy the window into a white canvas, then resample
        ix0, iy0 = math.floor(b[0]), math.floor(b[1])
        ix1, iy1 = math.ceil(b[2]), math.ceil(b[3])
        canvas = Image.new("RGB", (max(ix1 - ix0, 1), max(iy1 - iy0, 1)), _WHITE)
        cx0, cy0 = max(ix0, 0), max(iy0, 0)
        cx1, cy1 = min(ix1, self.w), min(iy1, self.h)
        if cx1 > cx0 and cy1 > cy0:
            canvas.paste(self.img.crop((cx0, cy0, cx1, cy1)), (cx0 - ix0, cy0 - iy0))
        return canvas.resize((size, size), _RESAMPLE,
                             box=(b[0] - ix0, b[1] - iy0, b[2] - ix0, b[3] - iy0))


class _RegionReader:
    """``slide.read_region`` per spot at one level (OpenSlide, or ImageSlide at level 0)."""

    def __init__(self, slide: openslide.AbstractSlide, level: int) -> None:
        self.slide = slide
        self.level = level
        self.ds = float(slide.level_downsamples[level])

    def patch(self, box0: tuple[float, float, float, float], size: int) -> Image.Image:
        ds = self.ds
        b = tuple(v / ds for v in box0)
        ix0, iy0 = math.floor(b[0]), math.floor(b[1])
        ix1, iy1 = math.ceil(b[2]), math.ceil(b[3])
        w, h = max(ix1 - ix0, 1), max(iy1 - iy0, 1)
        region = self.slide.read_region((int(round(ix0 * ds)), int(round(iy0 * ds))), self.level, (w, h))
        region = _to_rgb_over_white(region)
        return region.resize((size, size), _RESAMPLE,
                             box=(b[0] - ix0, b[1] - iy0, b[2] - ix0, b[3] - iy0))


def _decode_plain(slide: openslide.AbstractSlide, path: str | None, target: float):
    """Decode a plain image once at the best JPEG draft scale (or level 0), downsampled further when it is larger
    than ``MAX_WHOLE_DECODE_PIXELS`` (``_plain_decode.decode_reduced``). Returns (_DecodedLevel, forced factor)."""
    w0, h0 = slide.dimensions
    if path is not None:
        rgb, ds, forced = decode_reduced(path, min_factor=target, to_rgb=_to_rgb_over_white)
        return _DecodedLevel(rgb, ds), forced
    # an ImageSlide handed in without a path: one full-image read through its own API
    rgb = _to_rgb_over_white(slide.read_region((0, 0), 0, (w0, h0)))
    return _DecodedLevel(rgb, (w0 / rgb.size[0], h0 / rgb.size[1])), 1


def _decode_openslide_bbox(slide: openslide.OpenSlide, level: int, boxes: np.ndarray):
    """One read_region of the spots' bounding box at ``level``; None when it would be too large."""
    ds = float(slide.level_downsamples[level])
    lw, lh = slide.level_dimensions[level]
    bx0 = max(math.floor(np.min(boxes[:, 0]) / ds), 0)
    by0 = max(math.floor(np.min(boxes[:, 1]) / ds), 0)
    bx1 = min(math.ceil(np.max(boxes[:, 2]) / ds), lw)
    by1 = min(math.ceil(np.max(boxes[:, 3]) / ds), lh)
    if bx1 <= bx0 or by1 <= by0:
        return None
    if (bx1 - bx0) * (by1 - by0) > _MAX_DECODE_PIXELS:
        return None
    region = slide.read_region((int(round(bx0 * ds)), int(round(by0 * ds))), level, (bx1 - bx0, by1 - by0))
    return _DecodedLevel(_to_rgb_over_white(region), (ds, ds), offset=(bx0, by0))


def _say_downsampled(adata, path, dims, reader, forced: int, target: float) -> None:
    from ..io._validate import add_warning

    loss = ("the patches get less detail than the image holds" if forced > target * (1 + 1e-3)
            else "the patches need no finer resolution")
    add_warning(adata, f"image: {path} is {dims[0]}x{dims[1]} px, above {MAX_WHOLE_DECODE_PIXELS:,} px: read "
                       f"downsampled {forced}x ({reader.w}x{reader.h} px) to bound memory; {loss}")


#: below this many image pixels per spot diameter a patch holds colour and little texture (DLPFC 151673's lowres
#: Visium image: 4.3 px; HER2ST A1's 2,000-px image: 31 px); said in the slide's warnings, nothing else changes
COARSE_SPOT_PX = 8.0


def _say_coarse(adata, path, diam: float, side: float, size: int) -> None:
    from ..io._validate import add_warning

    add_warning(adata, f"image: {path or 'the slide image'} has {diam:.1f} px per spot diameter: each {side:.0f}-px "
                       f"patch is upsampled to {size} px, so the histology features describe colour more than "
                       "morphology; a finer image (Visium's tissue_hires_image.png, or the full-resolution H&E) "
                       "gives the model more to use")


def _spot_list(keys: Sequence[str]) -> str:
    keys = [str(k) for k in keys]
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = f" and {len(keys) - _MAX_KEYS_IN_MESSAGE} more" if len(keys) > _MAX_KEYS_IN_MESSAGE else ""
    return shown + more


def extract_patches(
    adata: AnnData,
    *,
    context: float = 2.0,
    size: int = 64,
    on_outside: Literal["flag", "error"] = "flag",
    slide: openslide.AbstractSlide | None = None,
    strategy: Literal["auto", "decode", "per_spot"] = "auto",
) -> np.ndarray:
    """Cut one RGB patch per spot out of the slide image, centred on the spot.

    Parameters
    ----------
    adata
        One slide (see docs/ARCHITECTURE.md): reads ``obsm["spatial"]`` (x, y in the image frame),
        ``uns["senca"]["spot_diameter_px"]``, ``uns["senca"]["image_path"]`` (unless ``slide``)
        and ``uns["senca"]["slide_id"]`` (for messages).
    context
        Patch side as a multiple of the spot diameter (2.0: the spot and a ring of its surroundings).
    size
        Output side in pixels; every patch is resampled to ``size × size``.
    on_outside
        A spot whose patch falls (partly) outside the image (or whose coordinates are not finite):
        ``"flag"`` pads the missing part with white and records it in ``obs["patch_in_image"]``;
        ``"error"`` raises :class:`SlideError` naming the spot keys. No spot is ever dropped.
    slide
        An already opened slide (:func:`open_slide`); then ``image_path`` is not needed.
    strategy
        ``"auto"`` / ``"decode"`` / ``"per_spot"``, see the module docstring. Same geometry either way.

    Returns
    -------
    ``uint8`` array ``(n_spots, size, size, 3)``, in ``adata.obs`` order.

    Writes
    ------
    ``adata.obs["patch_in_image"]`` (bool): False where the patch fell (partly) outside the image.
    ``uns["senca"]["warnings"]``: an image coarser than :data:`COARSE_SPOT_PX` pixels per spot diameter is said
    there (its patches are upsampled: colour more than morphology).

    Raises
    ------
    SlideError
        No ``image_path`` (``field="image_path"``) and no ``slide``; missing / corrupt image;
        missing or malformed ``obsm["spatial"]`` or ``spot_diameter_px``; spots outside the image
        with ``on_outside="error"`` (``field="spatial"``, naming the spots).
    ConfigError
        Bad ``context`` / ``size`` / ``on_outside`` / ``strategy``.
    """
    if not (isinstance(context, (int, float)) and math.isfinite(context) and context > 0):
        raise ConfigError("context", f"must be a positive number, got {context!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ConfigError("size", f"must be a positive integer, got {size!r}")
    size = int(size)
    if on_outside not in ("flag", "error"):
        raise ConfigError("on_outside", f"must be 'flag' or 'error', got {on_outside!r}")
    if strategy not in ("auto", "decode", "per_spot"):
        raise ConfigError("strategy", f"must be 'auto', 'decode' or 'per_spot', got {strategy!r}")

    senca = adata.uns.get("senca", {}) or {}
    slide_id = senca.get("slide_id")
    slide_id = None if slide_id is None else str(slide_id)
    path = senca.get("image_path")
    path = None if path in (None, "") else str(path)

    if "spatial" not in adata.obsm:
        raise SlideError("no spot coordinates (obsm['spatial'])", slide=slide_id, file=path, field="spatial")
    coords = np.asarray(adata.obsm["spatial"], dtype=float)
    if coords.ndim != 2 or coords.shape[0] != adata.n_obs or coords.shape[1] < 2:
        raise SlideError(f"obsm['spatial'] must be (n_spots, 2), got {coords.shape}",
                         slide=slide_id, file=path, field="spatial")
    diam = senca.get("spot_diameter_px")
    try:
        diam = float(diam)
    except (TypeError, ValueError):
        diam = float("nan")
    if not (math.isfinite(diam) and diam > 0):
        raise SlideError("spot diameter in image pixels is missing or not positive "
                         f"({senca.get('spot_diameter_px')!r})",
                         slide=slide_id, file=path, field="spot_diameter_px")

    if diam < COARSE_SPOT_PX:
        _say_coarse(adata, path, diam, diam * context, size)
    own_slide = slide is None
    if own_slide:
        if path is None:
            raise SlideError("slide has no H&E image (uns['senca']['image_path'] absent)",
                             slide=slide_id, field="image_path")
        slide = open_slide(path, slide_id=slide_id)

    try:
        return _extract(adata, slide, path, coords[:, :2], diam, context, size, on_outside,
                        strategy, slide_id)
    finally:
        if own_slide:
            slide.close()


def _extract(adata, slide, path, coords, diam, context, size, on_outside, strategy, slide_id):
    n = adata.n_obs
    width, height = slide.dimensions
    side = diam * context
    half = side / 2.0
    cx = coords[:, 0] + 0.5  # pixel index -> continuous centre
    cy = coords[:, 1] + 0.5
    boxes = np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        inside = (finite & (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0)
                  & (boxes[:, 2] <= width) & (boxes[:, 3] <= height))

    if on_outside == "error" and not inside.all():
        bad = adata.obs_names[~inside]
        raise SlideError(
            f"{len(bad)} spot patch(es) of side {side:.1f} px fall (partly) outside the "
            f"{width}x{height} image (or have non-finite coordinates): {_spot_list(bad)}",
            slide=slide_id, file=path, field="spatial")

    target = side / size
    is_plain = isinstance(slide, openslide.ImageSlide)
    if strategy == "auto":
        strategy = "decode" if is_plain else "per_spot"

    def read_failed(exc: Exception) -> SlideError:
        return SlideError(f"cannot read image data: {type(exc).__name__}: {exc}",
                          slide=slide_id, file=path, field="image_path")

    out = np.full((n, size, size, 3), 255, dtype=np.uint8)
    if is_plain and path is not None and width * height > MAX_WHOLE_DECODE_PIXELS:
        strategy = "decode"  # per spot, an ImageSlide would decode the whole image at full size
    try:
        reader = None
        if strategy == "decode" and finite.any():
            if is_plain:
                reader, forced = _decode_plain(slide, path, target)
                if forced > 1:
                    _say_downsampled(adata, path, (width, height), reader, forced, target)
            else:
                reader = _decode_openslide_bbox(slide, _best_level(slide.level_downsamples, target),
                                                boxes[finite])
        if reader is None:
            reader = _RegionReader(slide, _best_level(slide.level_downsamples, target))
        for i in np.flatnonzero(finite):
            out[i] = np.asarray(reader.patch(tuple(boxes[i]), size))
    except SlideError:
        raise
    except (OSError, ValueError, SyntaxError, openslide.OpenSlideError, Image.DecompressionBombError) as exc:
        raise read_failed(exc) from exc

    adata.obs["patch_in_image"] = inside
    return out
