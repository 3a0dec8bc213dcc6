"""Issue 16, class 3: a large but legitimate plain image (JPEG/PNG above ``MAX_WHOLE_DECODE_PIXELS``) is read
downsampled within a memory bound, said in the slide's warnings; only a decompression bomb (> 1 Gpx) is refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _over_white_box(path, f):
    img = Image.open(path).convert("RGBA")
    a = np.asarray(img.getchannel("A"), np.float32)[..., None] / 255
    px = np.asarray(img.convert("RGB"), np.float32) * a + 255 * (1 - a)
    h, w = px.shape[:2]
    rs, cs = np.arange(0, h, f), np.arange(0, w, f)
    box = np.add.reduceat(np.add.reduceat(px, cs, axis=1), rs, axis=0)
    return box / (np.diff(np.append(rs, h))[:, None, None] * np.diff(np.append(cs, w))[None, :, None])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1"])
def test_a_streamed_png_is_the_box_reduction_of_its_full_decode(tmp_path, mode):
    from senca_core.hist._plain_decode import _png_reduced

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (151, 233, 4), dtype=np.uint8)
    base[:, :80] = 200  # flat: other row filters
    img = Image.fromarray(base, "RGBA").convert(mode) if mode != "P" else \
        Image.fromarray(base[..., :3], "RGB").quantize(40)
    for opt in ({}, {"optimize": True}):
        path = tmp_path / f"im_{mode}.png"
        img.save(path, **opt)
        for f in (1, 2, 5):
            got = np.asarray(_png_reduced(path, f), np.float32)
            assert np.abs(got - np.rint(_over_white_box(path, f))).max() <= 1, (mode, f)


def test_decode_reduced_keeps_within_the_bound_and_refuses_what_decodes_only_whole(tmp_path):
    from senca_core.hist._plain_decode import decode_reduced

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8), "RGB")
    for name in ("a.png", "a.jpg"):
        img.save(tmp_path / name)
        rgb, ds, forced = decode_reduced(tmp_path / name, max_pixels=20_000)
        assert rgb.mode == "RGB" and rgb.size[0] * rgb.size[1] <= 20_000 and forced > 1, name
        assert ds == pytest.approx((500 / rgb.size[0], 300 / rgb.size[1]))
        assert decode_reduced(tmp_path / name)[2] == 1  # under the bound: as before
    img.save(tmp_path / "a.bmp")
    with pytest.raises(OSError, match="can only be decoded whole"):
        decode_reduced(tmp_path / "a.bmp", max_pixels=20_000)


def test_patches_of_a_downsampled_image_match_the_full_resolution_ones(tmp_path, monkeypatch):
    import anndata as ad

    from senca_core import hist
    from senca_core.hist import _extract_patches, _open_slide, _plain_decode

    rng = np.random.default_rng(2)
    px = np.full((600, 800, 3), 230, np.uint8)
    centres = rng.uniform(60, 540, (40, 2))
    for x, y in centres:  # a dark disc per spot: each patch is its spot, not its neighbour
        yy, xx = np.ogrid[:600, :800]
        px[(xx - x) ** 2 + (yy - y) ** 2 < 15 ** 2] = (90, 30, 120)
    path = tmp_path / "he.png"
    Image.fromarray(px).save(path)

    def patches():
        a = ad.AnnData(np.ones((40, 2), np.float32))
        a.obsm["spatial"] = centres - 0.5
        a.uns["senca"] = {"slide_id": "S1", "image_path": str(path), "spot_diameter_px": 40.0}
        return hist.extract_patches(a, size=32).astype(float), a.uns["senca"].get("warnings", [])

    full, none = patches()
    for mod in (_open_slide, _plain_decode, _extract_patches):
        monkeypatch.setattr(mod, "MAX_WHOLE_DECODE_PIXELS", 100_000)
    small, warned = patches()
    assert list(none) == [] and len(warned) == 1 and str(path) in warned[0] and "downsampled 3x" in warned[0]
    assert np.abs(small - full).mean() < 6, np.abs(small - full).mean()


@pytest.mark.timeout(300)
def test_a_20000px_png_is_read_downsampled_in_bounded_memory(tmp_path):
    # before: refused from its header (and earlier 2.7 GB per worker); a full decode is >= 1.6 GB
    from test_crashes_hangs import _png_bomb

    big = tmp_path / "big.png"
    _png_bomb(big, 20_000, 20_000)
    code = textwrap.dedent(f"""
        import resource
        import anndata as ad, numpy as np
        from senca_core import hist
        a = ad.AnnData(np.ones((50, 2), np.float32))
        a.obsm["spatial"] = np.random.default_rng(0).uniform(1000, 19000, (50, 2))
        a.uns["senca"] = {{"slide_id": "S1", "image_path": {str(big)!r}, "spot_diameter_px": 30.0}}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # the imports' own peak
        p = hist.extract_patches(a, size=64)
        print(int(p.max()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - before)
        print(a.uns["senca"]["warnings"][0])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    first, warning = res.stdout.strip().splitlines()[-2:]
    pmax, added_mb = map(int, first.split())
    # all-black image; the full-resolution RGB array alone is 20000 x 20000 x 3 bytes = 1144 MiB (a full decode
    # holds it at least twice): reading must never hold it once (measured: about 550-800 MiB above the imports)
    assert pmax == 0 and added_mb < 20_000 * 20_000 * 3 // 2**20, (pmax, added_mb)
    assert str(big) in warning and "20000x20000" in warning and "downsampled 2x" in warning, warning
