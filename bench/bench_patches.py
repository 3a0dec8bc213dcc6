"""Throughput of spot-patch extraction (+ morphology features) against raw OpenSlide ``read_region``.

Run:  .venv/bin/python bench/bench_patches.py  [--repeats 3] [--no-tiff] [--cnn]

Images: the HER2ST full-resolution JPEGs B4 and C2 (spots from ``spots/S_selection.tsv``,
pixel_x/pixel_y apply directly, spot diameter 145 px), and a generated ~18.5k x 19.8k pyramidal tiled
TIFF (B4 tiled 2 x 2, levels 1/2/4/8, 256-px zlib tiles, B4's spots in each quadrant), written to a
temporary folder that is removed afterwards. Patches: context 2 (side 290 px), 64 x 64 output.

Columns (spots/s, median of --repeats runs, each run opening the slide afresh so a plain JPEG is
decoded in every run):
* ``read_region L0``: raw ``slide.read_region`` of each spot's 290-px box at level 0 (no resize);
  for a JPEG this is OpenSlide's ImageSlide, which decodes the whole image on the first read.
* ``per_spot``: ``extract_patches(strategy="per_spot")``: read_region per spot at the chosen level
  + resize.
* ``decode L0``: decode the whole image at full resolution once, then slice + resize.
* ``decode``: ``extract_patches(strategy="decode")``: decode the chosen level once (JPEG DCT
  scaling / one bounding-box read_region for the TIFF) then slice + resize.
* ``auto``: the default (``decode`` for plain images, ``per_spot`` for pyramids).
* ``features``: ``morphology_features`` alone; ``auto+features``: the whole ``patch_features``.
Skips with a message when ../shared (or $SENCA_SHARED) is absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SENCA_SHARED", REPO.parent / "shared")).resolve()
HER2ST = SHARED / "data" / "her2st"
DIAMETER = 145.0
CONTEXT = 2.0
SIZE = 64


def _spots(section: str) -> np.ndarray:
    import pandas as pd

    sel = pd.read_csv(HER2ST / "spots" / f"{section}_selection.tsv", sep="\t")
    return sel[["pixel_x", "pixel_y"]].to_numpy(float)


def _adata(xy: np.ndarray, image: Path, slide_id: str):
    import anndata as ad
    import pandas as pd

    a = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(len(xy))]))
    a.obsm["spatial"] = xy
    a.uns["senca"] = {"slide_id": slide_id, "image_path": str(image), "spot_diameter_px": DIAMETER}
    return a


def _write_big_pyramid(out: Path) -> tuple[Path, np.ndarray]:
    """B4 tiled 2 x 2 as a pyramidal generic TIFF; returns the path and the replicated spots."""
    import tifffile
    from PIL import Image

    from senca_core.hist._open_slide import _pil_pixel_limit_lifted

    with _pil_pixel_limit_lifted():
        im = Image.open(HER2ST / "images" / "B4_HE.jpg")
        im.load()
    w, h = (im.size[0] // 8) * 8, (im.size[1] // 8) * 8
    im = im.crop((0, 0, w, h))
    tile = 256
    path = out / "big_pyramid.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, ds in enumerate((1, 2, 4, 8)):
            src = np.asarray(im if ds == 1 else im.reduce(ds))
            sh, sw = src.shape[:2]
            H, W = 2 * sh, 2 * sw

            def tiles(src=src, sh=sh, sw=sw, H=H, W=W):
                for ty in range(0, H, tile):
                    rows = np.arange(ty, ty + tile)
                    for tx in range(0, W, tile):
                        cols = np.arange(tx, tx + tile)
                        t = src[np.ix_(rows % sh, cols % sw)]
                        if ty + tile > H or tx + tile > W:
                            t = t.copy()
                            t[rows >= H] = 255
                            t[:, cols >= W] = 255
                        yield t

            tw.write(tiles(), shape=(H, W, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, subfiletype=0 if k == 0 else 1)
    xy = _spots("B4")
    spots = np.concatenate([xy + np.array([dx, dy]) for dx in (0, w) for dy in (0, h)])
    return path, spots


def _time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_image(name: str, image: Path, xy: np.ndarray, repeats: int, cnn_weights: Path | None) -> dict:
    import senca_core.hist as hist
    from senca_core.hist._extract_patches import _decode_plain

    n = len(xy)
    side = DIAMETER * CONTEXT
    a = _adata(xy, image, name)
    boxes = [(int(round(x + 0.5 - side / 2)), int(round(y + 0.5 - side / 2))) for x, y in xy]
    box = int(round(side))

    def raw():
        with hist.open_slide(image) as s:
            for loc in boxes:
                s.read_region(loc, 0, (box, box))

    def extract(strategy):
        return lambda: hist.extract_patches(a, context=CONTEXT, size=SIZE, strategy=strategy)

    def decode_l0():
        # the "one decoded array then slicing" approach at full resolution (no DCT scaling)
        with hist.open_slide(image) as s:
            lv = _decode_plain(s, str(image), target=1.0)
            for x, y in xy:
                cx, cy = x + 0.5, y + 0.5
                lv.patch((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), SIZE)

    with hist.open_slide(image) as s:
        dims, levels = s.dimensions, len(s.level_downsamples)
        plain = levels == 1
    raw()  # warm the page cache
    patches = hist.extract_patches(a, context=CONTEXT, size=SIZE)
    row = {"image": name, "size": f"{dims[0]}x{dims[1]}", "levels": levels, "spots": n}
    row["read_region L0"] = n / _time(raw, repeats)
    row["per_spot"] = n / _time(extract("per_spot"), repeats)
    row["decode L0"] = n / _time(decode_l0, repeats) if plain else float("nan")
    row["decode"] = n / _time(extract("decode"), repeats)
    row["auto"] = n / _time(extract("auto"), repeats)
    row["features"] = n / _time(lambda: hist.morphology_features(patches), repeats)
    row["auto+features"] = n / _time(lambda: hist.patch_features(a, context=CONTEXT, size=SIZE), repeats)
    if cnn_weights is not None:
        enc = hist.CNNEncoder(cnn_weights)
        row["cnn"] = n / _time(lambda: enc(patches), repeats)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tiff", action="store_true", help="skip the generated ~20k x 20k pyramidal TIFF")
    ap.add_argument("--cnn", action="store_true", help="also time CNNEncoder (random weights, CPU)")
    args = ap.parse_args(argv)
    if not HER2ST.exists():
        print(f"SKIP: real data not found at {HER2ST} (set SENCA_SHARED)")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="senca_bench_") as tmp:
        tmp = Path(tmp)
        cnn_weights = None
        if args.cnn:
            import torch

            import senca_core.hist as hist

            torch.manual_seed(0)
            cnn_weights = tmp / "resnet18_random.pt"
            torch.save(hist.CNNEncoder.network().state_dict(), cnn_weights)
        for sec in ("B4", "C2"):
            rows.append(bench_image(f"{sec}_HE.jpg", HER2ST / "images" / f"{sec}_HE.jpg", _spots(sec),
                                    args.repeats, cnn_weights))
            print(f"done {sec}", file=sys.stderr)
        if not args.no_tiff:
            t = time.perf_counter()
            path, xy = _write_big_pyramid(tmp)
            print(f"wrote {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
            rows.append(bench_image("B4x4 pyramid.tif", path, xy, args.repeats, cnn_weights))
    cols = list(rows[0])
    print(f"\npatch extraction throughput, spots/s (context {CONTEXT}, side {DIAMETER * CONTEXT:.0f} px -> "
          f"{SIZE}x{SIZE}; median of {args.repeats}; {os.cpu_count()} CPUs)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(("–" if np.isnan(r[c]) else f"{r[c]:.0f}") if isinstance(r[c], float)
                                else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
