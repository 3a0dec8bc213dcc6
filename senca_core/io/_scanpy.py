"""``to_scanpy``: the slide as scanpy's and squidpy's spatial tools expect it, beside the senca_core contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..errors import SlideError


def _hex(colour) -> str:
    from matplotlib.colors import to_hex

    return to_hex(colour)


def to_scanpy(adata: AnnData, key: str | None = "region", *, library_id: str | None = None,
              max_px: int = 1000) -> AnnData:
    """Make the slide work with ``scanpy.pl.spatial`` and ``squidpy`` as it is (in place; returns ``adata``).

    Writes
    ------
    - ``uns["spatial"][library_id]`` = ``{"images": {"lowres": uint8 RGB (longest side <= max_px)},
      "scalefactors": {"tissue_lowres_scalef", "spot_diameter_fullres"}, "metadata": {"source_image"}}``:
      the H&E of ``uns["senca"]["image_path"]`` downsampled, its scale against ``obsm["spatial"]`` and the spot
      diameter in those units (``uns["senca"]["spot_diameter_px"]``). No image (or unreadable): ``"images"`` is
      empty and ``tissue_lowres_scalef`` 1, so ``sc.pl.spatial(a, color=key, img_key=None)`` still draws the spots.
      ``library_id`` defaults to the slide id.
    - ``obsp["spatial_connectivities"]`` (binary, symmetric) and ``obsp["spatial_distances"]`` (centre distances)
      of the adjacent-spot graph (``pp.adjacency_edges``), and ``uns["spatial_neighbors"]["connectivities_key"]``
      / ``["distances_key"]`` naming them, as ``squidpy.gr.spatial_neighbors`` writes them.
    - ``uns[f"{key}_colors"]`` (hex, one per category): the colours of ``pl.region_map``, so scanpy's plots show
      each region in the colour of the maps. Kept when already set with enough colours.
    """
    from ..pl._region_map import _palette, _thumbnail
    from ..pp._neighbors import adjacency_edges, grid_spacing

    senca = adata.uns.get("senca", {}) if isinstance(adata.uns.get("senca"), dict) else {}
    slide = str(senca.get("slide_id", "slide"))
    if "spatial" not in adata.obsm:
        raise SlideError("no spot coordinates", slide=slide, field="obsm['spatial']")
    lib = str(library_id or slide)
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    diameter = float(senca.get("spot_diameter_px") or 0.9 * grid_spacing(xy))
    thumb = _thumbnail(str(senca["image_path"]), int(max_px)) if senca.get("image_path") else None
    entry = {"images": {} if thumb is None else {"lowres": np.ascontiguousarray(thumb[0], dtype=np.uint8)},
             "scalefactors": {"tissue_lowres_scalef": 1.0 if thumb is None else float(thumb[1]),
                              "spot_diameter_fullres": diameter},
             "metadata": {"source_image": str(senca.get("image_path") or "")}}
    adata.uns["spatial"] = {lib: entry}

    i, j, _ = adjacency_edges(adata)
    n = adata.n_obs
    dist = np.linalg.norm(xy[i] - xy[j], axis=1)
    adata.obsp["spatial_connectivities"] = sparse.csr_matrix((np.ones(len(i), np.float32), (i, j)), shape=(n, n))
    adata.obsp["spatial_distances"] = sparse.csr_matrix((dist.astype(np.float32), (i, j)), shape=(n, n))
    nb = adata.uns.get("spatial_neighbors")
    nb = dict(nb) if isinstance(nb, dict) else {}
    nb.update(connectivities_key="spatial_connectivities", distances_key="spatial_distances")
    adata.uns["spatial_neighbors"] = nb

    if key is not None and key in adata.obs:
        col = adata.obs[key]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            adata.obs[key] = col = col.astype("category")
        n_cats = len(col.cat.categories)
        current = adata.uns.get(f"{key}_colors")
        if current is None or len(current) < n_cats:
            adata.uns[f"{key}_colors"] = np.array([_hex(c) for c in _palette(n_cats)], dtype=object)
    return adata
