"""``patch_features``: spot patches -> histology features in ``obsm["X_hist"]`` (scanpy-style verb)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import openslide
from anndata import AnnData

from .._threads import thread_map
from ..errors import ConfigError
from ._extract_patches import extract_patches
from ._morphology_features import morphology_features

if TYPE_CHECKING:  # torch loads only when a CNN / ViT encoder is used
    from ._cnn_encoder import CNNEncoder
    from ._vit_encoder import ViTEncoder

__all__ = ["patch_features"]

#: a pixel is background (glass, or the white padding outside the image) when it is this bright and grey
_BRIGHT, _GREY = 215, 20
#: a patch whose spot area is less than this share tissue is "on background"
_MIN_TISSUE = 0.1
#: share of spots on background: above WARN said in the slide's warnings, above REFUSE a SlideError
BACKGROUND_WARN, BACKGROUND_REFUSE = 0.2, 0.5


def tissue_fraction(patches: np.ndarray) -> np.ndarray:
    """Share of tissue (not bright grey/white, not black) pixels in the central half of each patch (the spot's
    own area), float32 (n,)."""
    n, h, w = patches.shape[:3]
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    c = patches[:, h // 4: h - h // 4, w // 4: w - w // 4, :3].astype(np.int16)
    hi, lo = c.max(axis=-1), c.min(axis=-1)
    background = ((hi >= _BRIGHT) & (hi - lo <= _GREY)) | (hi <= 20)
    return (1.0 - background.reshape(n, -1).mean(axis=1)).astype(np.float32)


def _check_tissue(adata: AnnData, patches: np.ndarray) -> None:
    """Most spots on background means the image is placed wrong (a scale factor off): refuse above 50 % of the
    spots, say it in ``uns["senca"]["warnings"]`` above 20 %. Writes ``obs["patch_tissue_fraction"]``."""
    from ..errors import SlideError
    from ..io._validate import add_warning

    frac = tissue_fraction(patches)
    adata.obs["patch_tissue_fraction"] = frac
    if len(frac) == 0:
        return
    senca = adata.uns.get("senca") if isinstance(adata.uns.get("senca"), dict) else {}
    field = "image_scale" if senca.get("platform") != "visium" else "scalefactors"
    share = float((frac < _MIN_TISSUE).mean())
    where = (f"{int((frac < _MIN_TISSUE).sum())} of {len(frac)} spots ({share:.0%}) fall on background (no "
             f"tissue under the spot) in {senca.get('image_path', 'the image')}")
    xy = np.asarray(adata.obsm["spatial"])[:, :2]
    span = f"spots span x {xy[:, 0].min():.0f}–{xy[:, 0].max():.0f}, y {xy[:, 1].min():.0f}–{xy[:, 1].max():.0f} px"
    if share > BACKGROUND_REFUSE:
        raise SlideError(f"{where} ({span}): the image is placed wrong; check '{field}' (the factor from spot "
                         "pixels to this image's pixels) and the image", slide=senca.get("slide_id"),
                         file=senca.get("image_path"), field=field)
    if share > BACKGROUND_WARN:
        add_warning(adata, f"image: {where}; histology features of those spots describe glass ({span}; check "
                           f"'{field}')")


def patch_features(
    adata: AnnData,
    *,
    encoder: Literal["morphology", "cnn", "vit"] | CNNEncoder | ViTEncoder = "morphology",
    context: float = 2.0,
    size: int = 64,
    weights: str | os.PathLike | None = None,
    batch_size: int = 256,
    on_outside: Literal["flag", "error"] = "flag",
    slide: openslide.AbstractSlide | None = None,
    device: str = "cpu",
) -> None:
    """Extract one patch per spot and describe it; writes the features into ``adata``.

    Parameters
    ----------
    adata
        One slide (docs/ARCHITECTURE.md); needs ``obsm["spatial"]``, ``uns["senca"]["spot_diameter_px"]``
        and ``uns["senca"]["image_path"]`` (or ``slide``).
    encoder
        ``"morphology"``: weights-free descriptors (:func:`morphology_features`, ~116 features);
        ``"cnn"``: :class:`CNNEncoder` with ``weights`` (512 features);
        ``"vit"``: :class:`ViTEncoder` with ``weights`` — a pathology foundation ViT (UNI, Phikon, …) in
        timm or HF layout, architecture read from the file; its class token, ``embed_dim`` features
        (1024 for ViT-L, 768 for ViT-B), patches resized to the size the weights were trained at (224);
        not reduced, like the CNN's; or a ready ``CNNEncoder`` / ``ViTEncoder`` (other heads, pooling,
        normalisation, input size).
    context, size, on_outside, slide
        Passed to :func:`extract_patches`.
    weights
        Local state_dict file for ``encoder="cnn"`` / ``"vit"`` (required there; never downloaded).
    batch_size
        Patches per feature batch (bounds memory). Morphology batches are described side by side on the CPUs
        this process may use (``OMP_NUM_THREADS`` caps them: a one-CPU Ray task stays on one); the features are
        the same as one batch after the other.
    device
        Torch device for ``encoder="cnn"`` / ``"vit"`` (a ViT-L on CPU is slow: use a GPU).

    Writes
    ------
    * ``adata.obsm["X_hist"]``: ``float32 (n_spots, F)``;
    * ``adata.obs["patch_in_image"]``: bool, False where the patch fell (partly) outside the image
      (its missing part is white);
    * ``adata.obs["patch_tissue_fraction"]``: float32, the share of tissue pixels in the spot's own area; more
      than 50 % of the spots on background (< 10 % tissue) is a :class:`SlideError` naming the scale field
      (``image_scale`` / ``scalefactors``), more than 20 % a warning in ``uns["senca"]["warnings"]``;
    * ``adata.uns["senca"]["hist_features"]``: ``{"encoder", "names", "context", "size"}``
      (plus ``"weights"``, the file path, for the CNN / ViT).

    Returns ``None``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError("batch_size", f"must be a positive integer, got {batch_size!r}")
    allowed = "must be 'morphology', 'cnn', 'vit', a CNNEncoder or a ViTEncoder"
    if not isinstance(encoder, str):
        from ._cnn_encoder import CNNEncoder
        from ._vit_encoder import ViTEncoder

        if not isinstance(encoder, (CNNEncoder, ViTEncoder)):
            raise ConfigError("encoder", f"{allowed}, got {encoder!r}")
        cnn, enc_name = encoder, ("cnn" if isinstance(encoder, CNNEncoder) else "vit")
    elif encoder in ("cnn", "vit"):
        if weights is None:
            raise ConfigError("weights", f"encoder={encoder!r} needs weights=<path to a local state_dict .pt>; "
                                         "nothing is downloaded")
        if encoder == "cnn":
            from ._cnn_encoder import CNNEncoder as Encoder
        else:
            from ._vit_encoder import ViTEncoder as Encoder
        cnn, enc_name = Encoder(weights, device=device, batch_size=batch_size), encoder
    elif encoder == "morphology":
        cnn, enc_name = None, "morphology"
    else:
        raise ConfigError("encoder", f"{allowed}, got {encoder!r}")

    patches = extract_patches(adata, context=context, size=size, on_outside=on_outside, slide=slide)
    _check_tissue(adata, patches)

    if cnn is not None:
        feats, names = cnn(patches), cnn.names
    else:  # batches side by side on the CPUs this process may use (each batch's features its own: the same values)
        done = thread_map(lambda s: morphology_features(patches[s:s + batch_size]),
                          range(0, max(len(patches), 1), batch_size))
        feats, names = np.concatenate([f for f, _ in done], axis=0), done[0][1]

    adata.obsm["X_hist"] = np.ascontiguousarray(feats, dtype=np.float32)
    info = {"encoder": enc_name, "names": [str(k) for k in names], "context": float(context), "size": int(size)}
    if cnn is not None:
        info["weights"] = cnn.weights
    if not isinstance(adata.uns.get("senca"), dict):
        adata.uns["senca"] = {}
    adata.uns["senca"]["hist_features"] = info
