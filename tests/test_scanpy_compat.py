"""A slide's h5ad works with scanpy's and squidpy's spatial tools as written (io.to_scanpy, called by the infer
stage for every slide)."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import senca_core as st

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def slide():
    a = st.datasets.synthetic_slide(300, seed=2)
    st.pp.preprocess(a)
    a.obs["region"] = pd.Categorical(a.obs["true_region"].astype(str))
    return a


def test_scanpy_spatial_plot_reads_the_written_slide(slide, tmp_path):
    import matplotlib.pyplot as plt
    import scanpy as sc

    a = st.io.to_scanpy(slide.copy(), "region")
    lib = a.uns["senca"]["slide_id"]
    entry = a.uns["spatial"][lib]
    image = entry["images"]["lowres"]
    assert image.dtype == np.uint8 and image.ndim == 3 and max(image.shape[:2]) <= 1000
    # the scale maps spot coordinates onto the downsampled image: every spot lands inside it
    xy = np.asarray(a.obsm["spatial"]) * entry["scalefactors"]["tissue_lowres_scalef"]
    assert (xy >= 0).all() and (xy[:, 0] < image.shape[1]).all() and (xy[:, 1] < image.shape[0]).all()
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(a.uns["senca"]["spot_diameter_px"])
    path = tmp_path / "s.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    sc.pl.spatial(b, color="region", show=False)  # failed before: uns['spatial'][library_id] missing
    plt.close("all")
    # the colours scanpy uses are the region map's, one per category
    assert len(b.uns["region_colors"]) == len(b.obs["region"].cat.categories)
    assert all(str(c).startswith("#") for c in b.uns["region_colors"])


def test_squidpy_graph_is_the_adjacent_spots(slide):
    a = st.io.to_scanpy(slide.copy(), "region")
    C, D = a.obsp["spatial_connectivities"], a.obsp["spatial_distances"]
    assert C.shape == D.shape == (a.n_obs, a.n_obs)
    assert (C != C.T).nnz == 0 and C.diagonal().sum() == 0  # symmetric, no self loops
    from senca_core.pp._neighbors import adjacency_edges

    i, j, spacing = adjacency_edges(a)
    assert C.nnz == len(i)
    d = D[i, j].A1
    assert np.allclose(d, np.linalg.norm(a.obsm["spatial"][i] - a.obsm["spatial"][j], axis=1), rtol=1e-5)
    assert d.max() <= 1.5 * spacing * (1 + 1e-6)
    assert a.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"
    assert a.uns["spatial_neighbors"]["k"] >= 4  # our own keys stay


def test_a_slide_without_image_still_plots(slide):
    import matplotlib.pyplot as plt
    import scanpy as sc

    a = slide.copy()
    a.uns["senca"] = {k: v for k, v in a.uns["senca"].items() if k != "image_path"}
    st.io.to_scanpy(a, "region")
    entry = a.uns["spatial"][a.uns["senca"]["slide_id"]]
    assert entry["images"] == {} and entry["scalefactors"]["tissue_lowres_scalef"] == 1.0
    sc.pl.spatial(a, color="region", img_key=None, show=False)
    plt.close("all")
