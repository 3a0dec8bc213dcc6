"""``patch_features``: spot patches -> histology features in ``obsm["X_hist"]`` (scanpy-style verb)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import openslide
from anndata import AnnData

from ..errors import ConfigError
from ._extract_patches import extract_patches
from ._morphology_features import morphology_features

if TYPE_CHECKING:  # torch loads only when a CNN / ViT encoder is used
    from ._cnn_encoder import CNNEncoder
    from ._vit_encoder import ViTEncoder

__all__ = ["patch_features"]


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
        Patches per feature batch (bounds memory).
    device
        Torch device for ``encoder="cnn"`` / ``"vit"`` (a ViT-L on CPU is slow: use a GPU).

    Writes
    ------
    * ``adata.obsm["X_hist"]``: ``float32 (n_spots, F)``;
    * ``adata.obs["patch_in_image"]``: bool, False where the patch fell (partly) outside the image
      (its missing part is white);
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

    if cnn is not None:
        feats, names = cnn(patches), cnn.names
    else:
        chunks, names = [], None
        for s in range(0, max(len(patches), 1), batch_size):
            f, names = morphology_features(patches[s:s + batch_size])
            chunks.append(f)
        feats = np.concatenate(chunks, axis=0)

    adata.obsm["X_hist"] = np.ascontiguousarray(feats, dtype=np.float32)
    info = {"encoder": enc_name, "names": [str(k) for k in names], "context": float(context), "size": int(size)}
    if cnn is not None:
        info["weights"] = cnn.weights
    if not isinstance(adata.uns.get("senca"), dict):
        adata.uns["senca"] = {}
    adata.uns["senca"]["hist_features"] = info
