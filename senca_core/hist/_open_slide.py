"""``open_slide``: open a whole-slide image (pyramidal TIFF/SVS/NDPI …) or a plain JPEG/PNG.

Backed by OpenSlide (``openslide.open_slide``): formats OpenSlide knows (Aperio, Hamamatsu, generic
tiled TIFF, …) come back as :class:`openslide.OpenSlide` with their pyramid levels; anything else
that Pillow can read (JPEG, PNG, untiled TIFF) comes back as :class:`openslide.ImageSlide`, a
single-level wrapper around a ``PIL.Image``.

**Decompression-bomb limit.** Pillow refuses images above ``PIL.Image.MAX_IMAGE_PIXELS``
(≈ 89.5 Mpx warns, ≈ 179 Mpx raises) as a guard against decompression bombs. The full-resolution
HER2ST JPEGs are ≈ 9,300 × 9,900 = 92 Mpx, just above it. We lift Pillow's global limit *only while
our own code opens an image* (under a lock, restored afterwards) and apply our own, explicit limit
instead: a plain (non-pyramidal) image may have at most :data:`MAX_IMAGE_PIXELS` (1 Gpx, ≈ 3 GB
once decoded as RGB). Larger images must be converted to a pyramidal tiled TIFF, which OpenSlide
reads tile by tile without decoding the whole image.

**Large plain images are read downsampled.** A plain image above :data:`MAX_WHOLE_DECODE_PIXELS` is not
decoded at full size: a JPEG is decoded at a reduced scale (``Image.draft``), a (non-interlaced) PNG is
streamed into a box-averaged reduction (``_plain_decode.decode_reduced``), so the decoded image stays within
the bound; the factor is said in the slide's warnings. Other plain formats (untiled TIFF, BMP, interlaced
PNG, …) can only be decoded whole and are refused above it (checked from the header, before any pixel is
decoded), as is any plain image above :data:`MAX_IMAGE_PIXELS` (a decompression bomb, or an image to convert).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import openslide
from PIL import Image

from ..errors import SlideError

__all__ = ["open_slide", "MAX_IMAGE_PIXELS", "MAX_WHOLE_DECODE_PIXELS"]

#: Largest plain (single-level) image, in pixels, that ``open_slide`` accepts (larger: a decompression bomb).
MAX_IMAGE_PIXELS: int = 1_000_000_000
#: Largest plain image decoded at full size, in pixels (≈ 0.5 GB as RGBA; the HER2ST JPEGs are ≈ 92 Mpx, Visium's
#: hires PNGs ≈ 4 Mpx): a larger JPEG/PNG is decoded downsampled within it, any other format refused.
MAX_WHOLE_DECODE_PIXELS: int = 120_000_000

_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pil_pixel_limit_lifted() -> Iterator[None]:
    """Lift Pillow's decompression-bomb limit for the duration of the block (ours applies instead).

    Pillow reads the module global ``Image.MAX_IMAGE_PIXELS`` when ``Image.open`` runs; we set it to
    ``None`` under a lock and restore it on exit, so the change is deliberate, scoped and undone.
    """
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def open_slide(path: str | os.PathLike, *, slide_id: str | None = None) -> openslide.AbstractSlide:
    """Open a slide image with OpenSlide.

    Parameters
    ----------
    path
        A whole-slide image OpenSlide reads (pyramidal TIFF, SVS, NDPI, MRXS, …) or a plain image
        Pillow reads (JPEG, PNG, …).
    slide_id
        Only used to name the slide in errors.

    Returns
    -------
    An :class:`openslide.OpenSlide` (pyramid levels) or an :class:`openslide.ImageSlide` (one level;
    Pillow decodes the whole image into memory on the first ``read_region``). Close it with
    ``.close()`` (or use it as a context manager).

    Raises
    ------
    SlideError
        ``field='image_path'``, naming the file (and slide when given), when the file is missing, not
        a regular readable file, not an image OpenSlide or Pillow recognises, corrupt in its header,
        empty, a plain image above :data:`MAX_IMAGE_PIXELS`, or one above :data:`MAX_WHOLE_DECODE_PIXELS` that
        cannot be decoded downsampled (not JPEG / non-interlaced PNG). Corruption in the pixel data of a
        plain JPEG/PNG only shows when it is decoded: :func:`senca_core.hist.extract_patches`
        reports that as a ``SlideError`` too.
    """
    p = Path(path)

    def fail(problem: str) -> SlideError:
        return SlideError(problem, slide=slide_id, file=p, field="image_path")

    if not p.exists():
        raise fail("image file not found")
    if not p.is_file():
        raise fail("image path is not a regular file")
    if not os.access(p, os.R_OK):
        raise fail("image file is not readable (permissions)")
    if p.stat().st_size == 0:
        raise fail("image file is empty")

    try:
        with _pil_pixel_limit_lifted():
            slide = openslide.open_slide(str(p))
    except openslide.OpenSlideError as exc:  # recognised by OpenSlide but broken
        raise fail(f"OpenSlide cannot read this slide: {exc}") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL.UnidentifiedImageError is an OSError; truncated headers raise OSError/SyntaxError.
        raise fail(f"not a slide or image OpenSlide/Pillow can read: {exc}") from exc

    try:
        width, height = slide.dimensions
    except Exception as exc:  # pragma: no cover - defensive
        slide.close()
        raise fail(f"cannot read the image dimensions: {exc}") from exc
    if width <= 0 or height <= 0:
        slide.close()
        raise fail(f"image has no pixels ({width}x{height})")
    if isinstance(slide, openslide.ImageSlide) and width * height > MAX_IMAGE_PIXELS:
        slide.close()
        raise fail(
            f"plain (non-pyramidal) image of {width}x{height} px ({width * height:,} px) is above the "
            f"{MAX_IMAGE_PIXELS:,} px limit for plain images (a decompression bomb?); convert it to a pyramidal "
            "tiled TIFF"
        )
    if isinstance(slide, openslide.ImageSlide) and width * height > MAX_WHOLE_DECODE_PIXELS:
        fmt, interlaced = _plain_format(p)
        if fmt not in ("JPEG", "PNG") or interlaced:  # no reduced-scale decoding: it would be decoded whole
            slide.close()
            raise fail(
                f"{'interlaced ' if interlaced else ''}{fmt or 'plain'} image of {width}x{height} px "
                f"({width * height:,} px) can only be decoded whole (≈ {4 * width * height / 1e9:.1f} GB), above "
                f"the {MAX_WHOLE_DECODE_PIXELS:,} px limit; convert it to a pyramidal tiled TIFF (or a JPEG or "
                "non-interlaced PNG, which are read downsampled)"
            )
    return slide


def _plain_format(p: Path) -> tuple[str | None, bool]:
    """Pillow's format name of a plain image and whether it is interlaced, from its header only."""
    try:
        with _pil_pixel_limit_lifted(), Image.open(p) as im:
            return im.format, bool(im.info.get("interlace"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, False
