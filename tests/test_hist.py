"""senca_core.hist: slides through OpenSlide, spot patches, morphology features (the CNN encoder: test_hist_cnn.py).

AnnData objects are built by hand following docs/ARCHITECTURE.md (obsm["spatial"] = x, y in the
image frame; uns["senca"] image_path / spot_diameter_px / slide_id).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

import senca_core.hist as hist
from senca_core.errors import ConfigError, SlideError
from senca_core.hist._extract_patches import _best_level

from _hist_helpers import LEVEL_BG, MARKER, MARKERS, hand_adata, marker_centroid


def test_pyramidal_tiff_is_a_generic_tiled_tiff_for_openslide(pyramid):
    assert openslide.OpenSlide.detect_format(str(pyramid)) == "generic-tiff"
    with hist.open_slide(pyramid) as slide:
        assert isinstance(slide, openslide.OpenSlide)
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 3
        assert slide.level_dimensions == ((4096, 4096), (2048, 2048), (1024, 1024))
        assert np.allclose(slide.level_downsamples, (1, 2, 4))
        assert slide.properties["openslide.level[0].tile-width"] == "256"


def test_best_level_rule():
    ds = (1.0, 2.0, 4.0)
    assert [_best_level(ds, t) for t in (0.3, 1.0, 1.99, 2.0, 3.99, 4.0, 3.999, 50.0)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert _best_level((1.0, 2.0002, 3.9996), 4.0) == 2  # OpenSlide's rounded downsamples


@pytest.mark.parametrize("diameter,level", [(64.0, 0), (160.0, 1), (320.0, 2)])
@pytest.mark.parametrize("strategy", ["per_spot", "decode"])
def test_patches_come_from_the_right_level_and_are_centred(pyramid, diameter, level, strategy):
    size = 64
    offsets = [(0, 0), (10, -6), (-14, 9), (5, 5)]  # spot minus marker centre, level-0 px
    xy = [(mx + dx, my + dy) for ((mx, my), _), (dx, dy) in zip(MARKERS.items(), offsets)]
    a = hand_adata(xy, image_path=pyramid, diameter=diameter)
    patches = hist.extract_patches(a, context=1.0, size=size, strategy=strategy)
    assert patches.shape == (4, size, size, 3) and patches.dtype == np.uint8
    assert a.obs["patch_in_image"].all()
    side = diameter  # context 1
    for p, ((mx, my), col), (dx, dy) in zip(patches, MARKERS.items(), offsets):
        # the corners show the background tint of the level that was read
        assert np.abs(p[0, 0].astype(int) - LEVEL_BG[level]).max() <= 2, (p[0, 0], level)
        cx, cy, area = marker_centroid(p, col)
        scale = size / side
        assert cx == pytest.approx(size / 2 - dx * scale, abs=0.5)
        assert cy == pytest.approx(size / 2 - dy * scale, abs=0.5)
        assert area == pytest.approx((MARKER * scale) ** 2, rel=0.15)


@pytest.mark.parametrize("diameter", [64.0, 320.0, 600.0])  # JPEG DCT scale 1, 4, 8
def test_plain_jpeg_dct_scaled_decode_keeps_geometry(tmp_path, diameter):
    base = np.full((2048, 2048, 3), 230, np.uint8)
    markers = {(500, 600): (220, 30, 30), (1500, 400): (30, 170, 30), (1200, 1500): (30, 30, 220)}
    half = MARKER // 2
    for (x, y), col in markers.items():
        base[y - half:y + half + 1, x - half:x + half + 1] = col
    jpg = tmp_path / "markers.jpg"
    Image.fromarray(base).save(jpg, quality=95)
    a = hand_adata(list(markers), image_path=jpg, diameter=diameter)
    with hist.open_slide(jpg) as slide:
        assert isinstance(slide, openslide.ImageSlide)
    by = {s: hist.extract_patches(a, context=1.0, size=64, strategy=s) for s in ("decode", "per_spot")}
    for s, patches in by.items():
        for p, col in zip(patches, markers.values()):
            cx, cy, area = marker_centroid(p, col)
            assert (cx, cy) == (pytest.approx(32, abs=0.1), pytest.approx(32, abs=0.1)), s
            assert area == pytest.approx((MARKER * 64 / diameter) ** 2, rel=0.15)
    assert np.abs(by["decode"].astype(int) - by["per_spot"].astype(int)).mean() < 2


def test_outside_spots_are_flagged_padded_white_or_raise(pyramid):
    keys = ["inside", "left_edge", "far_away", "no_coords"]
    a = hand_adata([(1000, 1200), (20, 2000), (-500, -500), (np.nan, 10)], image_path=pyramid,
               diameter=64.0, keys=keys)
    for strategy in ("per_spot", "decode"):
        patches = hist.extract_patches(a, context=1.0, size=64, on_outside="flag", strategy=strategy)
        assert patches.shape[0] == 4  # nothing dropped
        assert a.obs["patch_in_image"].tolist() == [True, False, False, False]
        # left_edge: the box starts at x = 20.5 - 32 = -11.5 -> its first ~11 columns are padding
        edge = patches[1]
        assert (edge[:, :11] == 255).all()
        assert np.abs(edge[:, 13:].astype(int) - LEVEL_BG[0]).max() <= 1
        assert (patches[2] == 255).all() and (patches[3] == 255).all()
    with pytest.raises(SlideError) as err:
        hist.extract_patches(a, context=1.0, size=64, on_outside="error")
    msg = str(err.value)
    assert "left_edge" in msg and "far_away" in msg and "no_coords" in msg and "inside" not in msg.split(":")[-1]
    assert err.value.slide == "S1" and err.value.field == "spatial" and "pyramid.tif" in msg


def test_a_coarse_image_is_said_in_the_slides_warnings(tmp_path):
    png = tmp_path / "lowres.png"
    Image.fromarray(np.full((200, 200, 3), 200, np.uint8)).save(png)
    coarse = hand_adata([(50, 50), (100, 100)], image_path=png, diameter=4.3)  # a Visium lowres image's spot
    patches = hist.extract_patches(coarse, context=2.0, size=64)
    assert patches.shape == (2, 64, 64, 3)  # extracted as before: only said
    (said,) = coarse.uns["senca"]["warnings"]
    assert "lowres.png" in said and "4.3 px per spot diameter" in said and "upsampled to 64 px" in said
    fine = hand_adata([(50, 50), (100, 100)], image_path=png, diameter=31.0)  # HER2ST A1's 2,000-px image
    hist.extract_patches(fine, context=2.0, size=64)
    assert not fine.uns["senca"].get("warnings")


def test_morphology_batches_side_by_side_give_the_same_features(tmp_path, monkeypatch):
    from senca_core import _threads

    rng = np.random.default_rng(0)
    png = tmp_path / "noisy.png"
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(png)
    xy = rng.uniform(40, 260, (23, 2))

    def features(cpus: int) -> tuple[np.ndarray, list[str]]:
        monkeypatch.setattr(_threads, "usable_cpus", lambda: cpus)
        a = hand_adata(xy, image_path=png, diameter=20.0)
        hist.patch_features(a, batch_size=5)  # five batches: the last one short
        return a.obsm["X_hist"], a.uns["senca"]["hist_features"]["names"]

    one, names = features(1)
    side_by_side, names2 = features(2)
    assert one.shape[0] == 23 and names2 == names
    assert np.array_equal(one, side_by_side)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow probing the garbage TIFF
def test_bad_slide_inputs_raise_slide_error(tmp_path, pyramid):
    # no image at all
    with pytest.raises(SlideError) as err:
        hist.extract_patches(hand_adata([(10, 10)]))
    assert err.value.field == "image_path" and err.value.slide == "S1"
    # image path to a missing file
    missing = tmp_path / "nope.tif"
    with pytest.raises(SlideError) as err:
        hist.extract_patches(hand_adata([(10, 10)], image_path=missing))
    assert err.value.file == str(missing) and err.value.slide == "S1" and "not found" in str(err.value)
    with pytest.raises(SlideError, match="not found"):
        hist.open_slide(missing)
    # a directory, an empty file, garbage bytes with a TIFF magic
    with pytest.raises(SlideError, match="not a regular file"):
        hist.open_slide(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SlideError, match="empty"):
        hist.open_slide(tmp_path / "empty.png")
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"\x13\x37" * 500)
    with pytest.raises(SlideError) as err:
        hist.open_slide(garbage, slide_id="G")
    assert err.value.file == str(garbage) and err.value.slide == "G"
    # a truncated JPEG opens (header is fine) but fails when decoded -> SlideError naming the file
    rng = np.random.default_rng(0)
    jpg = tmp_path / "trunc.jpg"
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[:20000])
    for strategy in ("decode", "per_spot"):
        with pytest.raises(SlideError) as err:
            hist.extract_patches(hand_adata([(256, 256)], image_path=jpg, diameter=32), strategy=strategy)
        assert err.value.file == str(jpg) and "cannot read image data" in str(err.value)
    # missing spot diameter / coordinates
    a = hand_adata([(1000, 1200)], image_path=pyramid)
    del a.uns["senca"]["spot_diameter_px"]
    with pytest.raises(SlideError) as err:
        hist.extract_patches(a)
    assert err.value.field == "spot_diameter_px"
    a = hand_adata([(1000, 1200)], image_path=pyramid)
    del a.obsm["spatial"]
    with pytest.raises(SlideError) as err:
        hist.extract_patches(a)
    assert err.value.field == "spatial"
    with pytest.raises(ConfigError):
        hist.extract_patches(hand_adata([(1000, 1200)], image_path=pyramid), on_outside="skip")


def test_large_plain_jpeg_opens_without_touching_pil_global_limit(tmp_path):
    # Pillow's own bomb limit is restored after open_slide lifts it deliberately
    before = Image.MAX_IMAGE_PIXELS
    jpg = tmp_path / "small.jpg"
    Image.new("RGB", (300, 200), (200, 100, 150)).save(jpg)
    a = hand_adata([(150, 100)], image_path=jpg, diameter=40)
    for strategy in ("decode", "per_spot"):
        p = hist.extract_patches(a, context=1.0, size=16, strategy=strategy)
        assert np.abs(p.astype(int) - (200, 100, 150)).max() <= 3
    assert Image.MAX_IMAGE_PIXELS == before


# ----------------------------------------------------------------------------------------------
# morphology features on controlled patches
# ----------------------------------------------------------------------------------------------
_STAIN = {"h": np.array([0.65, 0.70, 0.29]), "e": np.array([0.07, 0.99, 0.11])}
for _k in _STAIN:
    _STAIN[_k] = _STAIN[_k] / np.linalg.norm(_STAIN[_k])


def _stained(h_od: float, e_od: float) -> np.ndarray:
    od = h_od * _STAIN["h"] + e_od * _STAIN["e"]
    return np.round(255 * 10 ** (-od)).astype(np.uint8)


def test_morphology_features_measure_stain_tissue_and_nuclei():
    n = 5
    p = np.empty((n, 64, 64, 3), np.uint8)
    p[0] = 255  # empty glass
    p[1] = 0  # masked black background
    p[2] = _stained(0.9, 0.05)  # pure haematoxylin
    p[3] = _stained(0.05, 0.8)  # pure eosin
    p[4] = _stained(0.05, 0.5)  # eosin stroma with 7 round nuclei, 3 of them in the centre half
    yy, xx = np.mgrid[0:64, 0:64]
    for cx, cy in [(8, 8), (8, 56), (56, 8), (56, 56), (26, 26), (38, 38), (32, 22)]:
        p[4][(xx - cx) ** 2 + (yy - cy) ** 2 <= 9] = _stained(1.2, 0.1)
    f, names = hist.morphology_features(p)
    assert f.shape == (n, len(names)) and f.dtype == np.float32 and len(set(names)) == len(names)
    assert np.isfinite(f).all()
    F = dict(zip(names, f.T))
    np.testing.assert_allclose(F["full_tissue_frac"], [0, 0, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(F["full_black_frac"], [0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(F["full_background_frac"][0], 1.0)
    # colour deconvolution recovers the stain amounts
    assert F["full_od_h_mean"][2] == pytest.approx(0.9, abs=0.03)
    assert F["full_od_e_mean"][2] == pytest.approx(0.05, abs=0.03)
    assert F["full_od_e_mean"][3] == pytest.approx(0.8, abs=0.03)
    assert F["full_od_h_mean"][3] == pytest.approx(0.05, abs=0.03)
    assert F["full_od_h_to_e"][2] > 0.9 > 0.1 > F["full_od_h_to_e"][3]
    # nuclei: 7 blobs over the whole patch, 3 in the centre crop, each a 29-px disc
    assert F["full_nuc_blobs_per_kpx"][4] == pytest.approx(7 * 1000 / 64 ** 2)
    assert F["centre_nuc_blobs_per_kpx"][4] == pytest.approx(3 * 1000 / 32 ** 2)
    assert F["full_nuc_blob_mean_area"][4] == pytest.approx(29)
    assert F["full_nuc_frac"][4] == pytest.approx(7 * 29 / 64 ** 2)
    assert F["full_nuc_frac"][3] == 0 and F["full_nuc_frac"][2] == 1
    # flat patches have no texture; the nuclei patch has
    assert F["full_grad_mean"][2] == pytest.approx(0, abs=1e-6)
    assert F["full_grad_mean"][4] > 0.005 and F["full_glcm_contrast"][4] > F["full_glcm_contrast"][3]
    np.testing.assert_allclose(sum(F[f"full_lbp_{k}"] for k in range(9)), 1.0, rtol=1e-5)
    # vectorised over the batch: a patch's features do not depend on its batch neighbours
    f4, _ = hist.morphology_features(p[4:5])
    np.testing.assert_allclose(f4[0], f[4], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError):
        hist.morphology_features(p.astype(np.float32))


def test_stripes_have_coherent_texture():
    p = np.full((2, 64, 64, 3), 200, np.uint8)
    p[0, :, ::4] = 60  # vertical stripes: one dominant orientation
    rng = np.random.default_rng(1)
    p[1] = rng.integers(60, 200, (64, 64, 1), dtype=np.uint8)  # isotropic noise
    f, names = hist.morphology_features(p)
    F = dict(zip(names, f.T))
    assert F["full_coherence"][0] > 0.9 > 0.5 > F["full_coherence"][1]


# ----------------------------------------------------------------------------------------------
# real data: HER2ST A1 (downscaled PNG, black background)
# ----------------------------------------------------------------------------------------------
def _a1(her2st_root: Path) -> ad.AnnData:
    sel = pd.read_csv(her2st_root / "spots" / "A1_selection.tsv", sep="\t")
    keys = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"])]
    a = hand_adata(sel[["pixel_x", "pixel_y"]].to_numpy(float) * 2000 / 6954,
               image_path=her2st_root / "images" / "A1_HE_dark_2000px.png", diameter=31.0,
               slide_id="A1", keys=keys)
    lab = pd.read_csv(her2st_root / "labels" / "A1_labeled_coordinates.tsv", sep="\t")
    lab.index = [f"{round(x)}x{round(y)}" for x, y in zip(lab["x"], lab["y"])]
    a.obs["label"] = lab["label"].reindex(a.obs_names).to_numpy()
    return a


@pytest.fixture(scope="module")
def a1_features(her2st_root):
    a = _a1(her2st_root)
    hist.patch_features(a)
    return a


@pytest.mark.realdata
def test_a1_patches_lie_on_tissue(a1_features, her2st_root):
    a = a1_features
    F = dict(zip(a.uns["senca"]["hist_features"]["names"], a.obsm["X_hist"].T))
    on_tissue = F["centre_tissue_frac"] > 0.5
    print(f"\nA1: {on_tissue.mean():.3f} of {a.n_obs} spots have centre tissue fraction > 0.5; "
          f"median black fraction {np.median(F['full_black_frac']):.3f}")
    assert a.obs["patch_in_image"].all()
    assert on_tissue.mean() >= 0.95
    assert np.median(F["full_black_frac"]) < 0.01
    # and a spot moved into the blacked-out background is seen as such
    b = _a1(her2st_root)
    b.obsm["spatial"] = np.tile([[150.0, 150.0]], (b.n_obs, 1))
    fb, names = hist.morphology_features(hist.extract_patches(b[:3].copy()))
    assert dict(zip(names, fb.T))["centre_black_frac"].min() == 1.0


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:The least populated class")  # 'immune infiltrate' has 2 spots
def test_a1_morphology_separates_tissue_classes(a1_features):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = a1_features
    y = a.obs["label"].to_numpy(dtype=object)
    keep = pd.notna(y) & (y != "undetermined")
    y = y[keep].astype(str)
    X = a.obsm["X_hist"][keep]
    classes = np.unique(y)
    chance = 1.0 / len(classes)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)

    def bal_acc(X):
        clf = make_pipeline(StandardScaler(),
                            LogisticRegression(max_iter=3000, class_weight="balanced"))
        return balanced_accuracy_score(y, cross_val_predict(clf, X, y, cv=cv))

    names = a.uns["senca"]["hist_features"]["names"]
    mean_rgb = [names.index(f"full_{c}_mean") for c in "rgb"]
    acc, acc_rgb = bal_acc(X), bal_acc(X[:, mean_rgb])
    print(f"\n| slide | spots | classes | chance | morphology ({X.shape[1]} feat) bal.acc | mean-RGB bal.acc |"
          f"\n| A1 | {len(y)} | {len(classes)} | {chance:.3f} | {acc:.3f} | {acc_rgb:.3f} |")
    assert acc > chance + 0.3
    assert acc > acc_rgb


@pytest.mark.realdata
def test_patch_features_writes_the_contract(a1_features, tmp_path):
    a = a1_features
    X = a.obsm["X_hist"]
    info = a.uns["senca"]["hist_features"]
    assert X.dtype == np.float32 and X.shape == (a.n_obs, len(info["names"])) and np.isfinite(X).all()
    assert info["encoder"] == "morphology" and info["context"] == 2.0 and info["size"] == 64
    assert a.obs["patch_in_image"].dtype == bool
    # not constant: features vary between spots
    assert (X.std(axis=0) > 0).sum() > 0.9 * X.shape[1]
    b = a.copy()
    b.obs = b.obs.drop(columns=["label"])
    b.write_h5ad(tmp_path / "a1.h5ad")
    back = ad.read_h5ad(tmp_path / "a1.h5ad")
    assert list(back.uns["senca"]["hist_features"]["names"]) == info["names"]


@pytest.mark.realdata
def test_full_resolution_jpeg_b4(her2st_root):
    sel = pd.read_csv(her2st_root / "spots" / "B4_selection.tsv", sep="\t")
    a = hand_adata(sel[["pixel_x", "pixel_y"]].to_numpy(float), image_path=her2st_root / "images" / "B4_HE.jpg",
               diameter=145.0, slide_id="B4", keys=[f"{x}x{y}" for x, y in zip(sel["x"], sel["y"])])
    fast = hist.extract_patches(a)  # auto: 1/4-scale DCT decode of the 9272 x 9923 JPEG
    slow = hist.extract_patches(a, strategy="per_spot")  # full-res ImageSlide.read_region per spot
    assert a.obs["patch_in_image"].all()
    diff = np.abs(fast.astype(int) - slow.astype(int)).mean(axis=(1, 2, 3))
    print(f"\nB4: |decode - per_spot| mean {diff.mean():.2f} grey levels (max per patch {diff.max():.2f})")
    assert diff.mean() < 6 and diff.max() < 15
    f, names = hist.morphology_features(fast)
    assert (dict(zip(names, f.T))["centre_tissue_frac"] > 0.5).mean() >= 0.95
