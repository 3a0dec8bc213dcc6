"""Decode a plain image (JPEG, PNG, …) once, at a reduced scale, within a memory bound.

A plain image has no pyramid: Pillow decodes it whole, ≈ 3–4 bytes per pixel whatever its file size (a 438 KB
PNG of 20,000 × 20,000 px is 1.6 GB decoded). :func:`decode_reduced` keeps the decoded image at most
``max_pixels`` (default :data:`~senca_core.hist._open_slide.MAX_WHOLE_DECODE_PIXELS`):

* JPEG: libjpeg's DCT-domain scaling (``Image.draft``) decodes at 1/2, 1/4 or 1/8 directly; a larger factor is
  then a box reduction (``Image.reduce``) of the 1/8 image;
* PNG (not interlaced): streamed — the zlib stream is inflated a few rows at a time, the rows un-filtered
  (numba) and box-averaged ``factor × factor`` into the reduced image, so the full-size image never exists;
* anything else (untiled TIFF, BMP, interlaced PNG, …) above the bound: refused (``OSError``; ``open_slide``
  already refuses it from the header).

The reduced image is composited over white (as ``_to_rgb_over_white``); its pixel ``(i, j)`` covers level-0
pixels ``[i·f, (i+1)·f)``, so a caller maps level-0 coordinates with the returned downsample.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Callable

import numpy as np
from PIL import Image

from ._open_slide import MAX_WHOLE_DECODE_PIXELS, _pil_pixel_limit_lifted

__all__ = ["decode_reduced", "memory_factor"]

_JPEG_DRAFT_MAX = 8
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: decoded pixels handled per batch of PNG rows (bounds the working memory to a few tens of MB)
_BATCH_PIXELS = 2_000_000
_INFLATE_CHUNK = 1 << 22


def memory_factor(width: int, height: int, max_pixels: int | None = None) -> int:
    """The smallest integer factor ``f`` with ``ceil(width/f) · ceil(height/f) <= max_pixels``."""
    cap = MAX_WHOLE_DECODE_PIXELS if max_pixels is None else int(max_pixels)
    f = max(1, int(math.sqrt(width * height / cap)))
    while math.ceil(width / f) * math.ceil(height / f) > cap:
        f += 1
    return f


def decode_reduced(path: str | os.PathLike, *, min_factor: float = 1.0, max_pixels: int | None = None,
                   to_rgb: Callable[[Image.Image], Image.Image] | None = None):
    """Decode ``path`` once as RGB, downsampled by at least ``min_factor`` where the format decodes reduced cheaply
    (JPEG draft scales; a large PNG is streamed) and by as much as keeping it within ``max_pixels`` needs.

    Returns ``(image, (dsx, dsy), forced)``: the RGB image, level-0 pixels per image pixel, and the factor the
    memory bound forced (1: none; above 1 the caller says so in the slide's warnings). ``to_rgb`` converts a
    Pillow-decoded image to RGB (default ``Image.convert("RGB")``). Raises ``OSError``/``ValueError`` on an
    unreadable or truncated image, or one above the bound that can only be decoded whole."""
    cap = MAX_WHOLE_DECODE_PIXELS if max_pixels is None else int(max_pixels)
    to_rgb = to_rgb or (lambda im: im.convert("RGB"))
    with _pil_pixel_limit_lifted():
        img = Image.open(path)
    try:
        w0, h0 = img.size
        forced = memory_factor(w0, h0, cap)
        if img.format == "JPEG":
            scale = 1
            while scale * 2 <= max(min_factor, 1.0) * (1 + 1e-3) and scale < _JPEG_DRAFT_MAX:
                scale *= 2
            while math.ceil(w0 / scale) * math.ceil(h0 / scale) > cap:
                scale *= 2
            if scale > 1:
                img.draft("RGB", (w0 // min(scale, _JPEG_DRAFT_MAX), h0 // min(scale, _JPEG_DRAFT_MAX)))
            img.load()
            rgb = to_rgb(img)
            if scale > _JPEG_DRAFT_MAX:
                rgb = rgb.reduce(scale // _JPEG_DRAFT_MAX)
            forced = scale if forced > 1 else 1
        elif w0 * h0 <= cap:
            img.load()
            rgb = to_rgb(img)
        elif img.format == "PNG" and not img.info.get("interlace"):
            factor = max(forced, int(max(min_factor, 1.0)))
            rgb = _png_reduced(path, factor)
            forced = factor
        else:
            raise OSError(f"{img.format or 'plain'} image of {w0}x{h0} px can only be decoded whole, above the "
                          f"{cap:,} px limit; convert it to a pyramidal tiled TIFF (or a JPEG)")
        if rgb is not img:
            img.close()
        return rgb, (w0 / rgb.size[0], h0 / rgb.size[1]), forced
    except BaseException:
        img.close()
        raise


# ----------------------------------------------------------------------------------------- streamed PNG
def _png_chunks(fh):
    """``(kind, data)`` of the chunks before the first IDAT, then ``(b"IDAT", piece)`` pieces of the compressed
    stream (at most 1 MB each), until IEND. Raises OSError when the file ends early."""
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise OSError("PNG is truncated (no IEND chunk)")
        n, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        if kind == b"IDAT":
            left = n
            while left:
                piece = fh.read(min(left, 1 << 20))
                if not piece:
                    raise OSError("PNG is truncated inside its pixel data")
                left -= len(piece)
                yield kind, piece
        else:
            data = fh.read(n)
            if len(data) < n:
                raise OSError("PNG is truncated")
            yield kind, data
        fh.read(4)  # CRC


def _png_reduced(path: str | os.PathLike, f: int) -> Image.Image:
    """Stream a non-interlaced PNG into its ``f × f`` box-averaged RGB reduction (over white)."""
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            raise OSError("not a PNG file")
        chunks = _png_chunks(fh)
        meta: dict[bytes, bytes] = {}
        first = b""
        for kind, data in chunks:
            if kind == b"IDAT":
                first = data
                break
            meta.setdefault(kind, data)
        if b"IHDR" not in meta or len(meta[b"IHDR"]) < 13:
            raise OSError("PNG has no IHDR header")
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", meta[b"IHDR"][:13])
        if ctype not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace:
            raise OSError(f"PNG colour type {ctype} / bit depth {depth} / interlace {interlace} is not streamed")
        to_rgb = _png_pixels(ctype, depth, w, meta.get(b"PLTE", b""), meta.get(b"tRNS", b""))
        channels = _PNG_CHANNELS[ctype]
        stride = 1 + (w * channels * depth + 7) // 8
        bpp = max(1, channels * depth // 8)
        batch = max(1, _BATCH_PIXELS // max(w, 1) // f) * f
        out = Image.new("RGB", (math.ceil(w / f), math.ceil(h / f)), (255, 255, 255))  # filled band by band
        cols = np.arange(0, w, f)
        ccount = np.diff(np.append(cols, w)).astype(np.float32)
        prev = np.zeros(stride - 1, np.uint8)
        inflate = zlib.decompressobj()
        buf = bytearray()
        y = 0

        def rows_out(n: int) -> None:
            nonlocal y
            data = np.frombuffer(buf[:n * stride], np.uint8)
            del buf[:n * stride]
            raw = np.empty((n, stride - 1), np.uint8)
            unfilter, box_sum = _compiled()
            if unfilter(data, n, stride, bpp, prev, raw) >= 0:
                raise OSError("PNG pixel data is corrupt (unknown row filter)")
            starts = np.arange(0, n, f)
            rcount = np.diff(np.append(starts, n)).astype(np.float32)
            box = np.zeros((len(starts), len(cols), 3), np.float32)
            box_sum(to_rgb(raw), f, box)
            box /= rcount[:, None, None] * ccount[None, :, None]
            out.paste(Image.fromarray(np.clip(np.rint(box), 0, 255).astype(np.uint8), "RGB"), (0, y // f))
            y += n

        def feed(data: bytes) -> None:
            buf.extend(data)
            while y < h and len(buf) >= min(batch, h - y) * stride:
                rows_out(min(batch, h - y))

        pieces = [first] if first else []
        for part in _chain(pieces, (piece for kind, piece in chunks if kind == b"IDAT")):
            data = inflate.decompress(part, _INFLATE_CHUNK)
            feed(data)
            while inflate.unconsumed_tail and y < h:
                feed(inflate.decompress(inflate.unconsumed_tail, _INFLATE_CHUNK))
            if y >= h:
                break
        if y < h:
            feed(inflate.flush())
        if y < h:
            raise OSError(f"PNG pixel data is truncated ({y} of {h} rows)")
    return out


def _chain(first: list, rest):
    yield from first
    yield from rest


def _png_pixels(ctype: int, depth: int, w: int, plte: bytes, trns: bytes):
    """A function: un-filtered rows ``(n, rowbytes)`` uint8 → ``(n, w, 3)`` float32 RGB composited over white."""
    channels = _PNG_CHANNELS[ctype]
    palette = None
    if ctype == 3:
        pal = np.frombuffer(plte[:768], np.uint8).reshape(-1, 3) if len(plte) >= 3 else np.zeros((1, 3), np.uint8)
        palette = np.full((256, 4), 255, np.float32)
        palette[:len(pal), :3] = pal
        alpha = np.frombuffer(trns[:256], np.uint8)
        palette[:len(alpha), 3] = alpha

    def convert(raw: np.ndarray) -> np.ndarray:
        n = raw.shape[0]
        if depth == 16:
            s = raw[:, :w * channels * 2].reshape(n, w * channels, 2)[..., 0]
        elif depth == 8:
            s = raw[:, :w * channels]
        else:
            shifts = (8 - depth) - depth * np.arange(8 // depth, dtype=np.uint8)
            s = ((raw[:, :, None] >> shifts) & ((1 << depth) - 1)).reshape(n, -1)[:, :w]
            if ctype == 0:
                s = s * np.uint8(255 // ((1 << depth) - 1))
        s = s.reshape(n, w, channels)
        if palette is not None:
            px = palette[s[..., 0]]
        else:
            px = s.astype(np.float32)
            if ctype in (0, 4):
                px = np.concatenate([px[..., :1]] * 3 + ([px[..., 1:2]] if ctype == 4 else []), axis=-1)
        if px.shape[-1] == 4:
            a = px[..., 3:4] / 255.0
            px = px[..., :3] * a + 255.0 * (1.0 - a)
        return px
    return convert


_COMPILED: tuple | None = None


def _compiled():
    """The numba-compiled PNG row un-filter and box sum (compiled once per process, cached on disk)."""
    global _COMPILED
    if _COMPILED is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def unfilter(data, nrows, stride, bpp, prev, out):  # pragma: no cover - compiled
            rb = stride - 1
            for r in range(nrows):
                base = r * stride
                ft = data[base]
                if ft > 4:
                    return r
                for i in range(rb):
                    x = np.int32(data[base + 1 + i])
                    a = np.int32(out[r, i - bpp]) if i >= bpp else np.int32(0)
                    b = np.int32(prev[i])
                    if ft == 0:
                        v = x
                    elif ft == 1:
                        v = x + a
                    elif ft == 2:
                        v = x + b
                    elif ft == 3:
                        v = x + ((a + b) >> 1)
                    else:
                        c = np.int32(prev[i - bpp]) if i >= bpp else np.int32(0)
                        p = a + b - c
                        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                        v = x + (a if (pa <= pb and pa <= pc) else (b if pb <= pc else c))
                    out[r, i] = v & 255
                for i in range(rb):
                    prev[i] = out[r, i]
            return -1

        @numba.njit(cache=True, nogil=True)
        def box_sum(px, f, acc):  # pragma: no cover - compiled
            n, w, c = px.shape
            for r in range(n):
                rr = r // f
                for x in range(w):
                    xx = x // f
                    for k in range(c):
                        acc[rr, xx, k] += px[r, x, k]

        _COMPILED = (unfilter, box_sum)
    return _COMPILED
