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

**Images that can only be decoded whole.** A JPEG is decoded at a reduced scale when the patches allow it
(``Image.draft``); a PNG (or an untiled TIFF, BMP, …) can only be decoded at full size, ≈ 4 bytes per pixel,
whatever its file size (a 438 KB PNG of 20,000 × 20,000 px decodes to 1.6 GB). Such images are refused above
:data:`MAX_WHOLE_DECODE_PIXELS` (checked from the header, before any pixel is decoded).
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

#: Largest plain (single-level) image, in pixels, that ``open_slide`` accepts (decoded whole).
MAX_IMAGE_PIXELS: int = 1_000_000_000
#: Largest plain image that has no reduced-scale decoding (not JPEG: PNG, untiled TIFF, …), in pixels:
#: ≈ 0.5 GB once decoded as RGBA (the HER2ST JPEGs are ≈ 92 Mpx; Visium's hires PNGs ≈ 4 Mpx).
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
        empty, or a plain image above :data:`MAX_IMAGE_PIXELS`. Corruption in the pixel data of a
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
            f"plain (non-pyramidal) image of {width}x{height} px is above the {MAX_IMAGE_PIXELS:,} px "
            "limit for images decoded whole; convert it to a pyramidal tiled TIFF"
        )
    if isinstance(slide, openslide.ImageSlide) and width * height > MAX_WHOLE_DECODE_PIXELS:
        fmt = _plain_format(p)
        if fmt != "JPEG":  # no reduced-scale decoding: the whole image would be decoded at full size
            slide.close()
            raise fail(
                f"{fmt or 'plain'} image of {width}x{height} px ({width * height:,} px) can only be decoded "
                f"whole (≈ {4 * width * height / 1e9:.1f} GB), above the {MAX_WHOLE_DECODE_PIXELS:,} px limit; "
                "convert it to a pyramidal tiled TIFF (or a JPEG, which is decoded at a reduced scale)"
            )
    return slide


def _plain_format(p: Path) -> str | None:
    """Pillow's format name of a plain image, from its header only (no pixel decoded)."""
    try:
        with _pil_pixel_limit_lifted(), Image.open(p) as im:
            return im.format
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
