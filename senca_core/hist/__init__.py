"""Histology: open slides, cut one H&E patch per spot, describe it (writes ``obsm["X_hist"]``).

* :func:`open_slide` — OpenSlide (pyramidal TIFF/SVS/NDPI …) or a plain JPEG/PNG;
* :func:`decode_reduced` — a plain image decoded once, downsampled within a memory bound;
* :func:`extract_patches` — ``uint8 (n, size, size, 3)`` patches centred on the spots;
* :func:`morphology_features` — weights-free H&E descriptors (colour deconvolution, nuclei, texture);
* :func:`patch_features` — the verb: patches -> ``obsm["X_hist"]``;
* :class:`CNNEncoder` — ResNet-18 encoder with weights from a local file;
* :class:`ViTEncoder` — Vision Transformer (pathology foundation models: UNI, Phikon, …) from a local file.
"""

from ._extract_patches import extract_patches
from ._morphology_features import morphology_features
from ._open_slide import open_slide
from ._plain_decode import decode_reduced
from ._patch_features import patch_features



def __getattr__(name: str):
    """:class:`CNNEncoder` and :class:`ViTEncoder` (torch) load on first use."""
    if name == "CNNEncoder":
        from ._cnn_encoder import CNNEncoder

        return CNNEncoder
    if name == "ViTEncoder":
        from ._vit_encoder import ViTEncoder

        return ViTEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["open_slide", "decode_reduced", "extract_patches", "morphology_features", "patch_features", "CNNEncoder", "ViTEncoder"]
