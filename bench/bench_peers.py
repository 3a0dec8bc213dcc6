"""Peers side by side: BANKSY (pybanksy) and SpaGCN (spagcn-modern) run in the same process as SENCA-st, on the
same spots of the shared real sections, with the protocol of ../shared/peers.md (k = annotated classes, ARI over
scored spots, seeds 0..n-1, mean ± sd, seconds per section and seed).

    .venv/bin/python -m pip install -c constraints.txt -r bench/requirements-peers.txt   # optional extra, once
    .venv/bin/python bench/bench_peers.py [--sections A1 B1 C1 DLPFC] [--seeds 3] [--peers banksy spagcn]

The peers are a benchmark extra, never a runtime dependency of senca_core: each is imported lazily here, and a peer
that is not installed, or fails on a section, prints a one-line skip and the rest of the table still prints.
Every run uses one thread (OMP/BLAS/numba 1, torch 1) so the seconds compare. Prints markdown tables.

What each row runs (all on the spots and raw counts that `bench_regions.load_section` gives SENCA-st):
- SENCA-st: `bench_regions.run_senca` (default SencaConfig, full model) → `tl.cluster(k)`. Seconds: training +
  clustering; reading, QC/HVG/PCA and patch features (once per section) are printed apart.
- BANKSY: normalise 1e4 → log1p → 2,000 HVGs (seurat_v3 on counts) → `initialize_banksy` (k_geom 15, scaled
  Gaussian decay, max_m 1 = with AGF) → `generate_banksy_matrix` (λ = 0.8) → `pca_umap` (PCA 20) → either its own
  Leiden (`run_Leiden_partition`, resolution searched to k, partition seed = seed) or GaussianMixture(k, full) on the
  BANKSY PCA. Seconds: the shared embedding + that clustering.
- SpaGCN: its tutorial pipeline (`calculate_adj_matrix` on spot pixel coordinates [+ H&E colour, β ≈ half a spot,
  s = 1], `prefilter_genes`, `prefilter_specialgenes`, normalise, log1p, `search_l(p=0.5)`, `search_res` to k,
  `SpaGCN.train`, `refine` on the array grid: square for legacy ST, hexagon for Visium); seeds r/t/n = seed; its
  default compat ("spagcn-1.2.7"). With histology where the section has an image (A1, DLPFC lowres).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regions import fmt, load_section, n_classes, run_senca  # noqa: E402

import senca_core as sc  # noqa: E402

warnings.filterwarnings("ignore")
INSTALL = ".venv/bin/python -m pip install -c constraints.txt -r bench/requirements-peers.txt"
PEER_DIST = {"banksy": "pybanksy", "spagcn": "spagcn-modern"}
BANKSY_LAMBDA, BANKSY_K_GEOM, BANKSY_PCS, BANKSY_HVG = 0.8, 15, 20, 2000
SPAGCN_BETA_PER_SPOT = 49 / 96.4  # tutorial: beta 49 px for Visium's ~96 px spots at full resolution


@contextlib.contextmanager
def quiet():
    """The peers print a lot (progress, tables); keep it out of the benchmark's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def skip(what: str, reason: BaseException | str) -> str:
    if isinstance(reason, BaseException):
        text = str(reason).strip()
        reason = f"{type(reason).__name__}: {text.splitlines()[0] if text else ''}"
    reason = reason.replace("|", "/")
    print(f"skip: {what}: {reason}", flush=True)
    return str(reason)


def peer_import(peer: str):
    """Import a peer lazily; returns (module, None) or (None, reason)."""
    try:
        with quiet():
            if peer == "banksy":
                import banksy.cluster_methods
                import banksy.embed_banksy
                import banksy.initialize_banksy
                import banksy_utils.umap_pca  # noqa: F401

                mod = banksy
            else:
                import SpaGCN as mod
        return mod, None
    except Exception as e:  # noqa: BLE001 -- any import failure is a skip, never a crash
        return None, (f"{PEER_DIST[peer]} not importable ({type(e).__name__}: {e}); "
                      f"install the optional extra with `{INSTALL}`")


def counts_adata(a):
    """A fresh AnnData with the section's raw counts, spot coordinates and ids (what every peer starts from)."""
    import anndata as ad

    b = ad.AnnData(X=a.layers["counts"].copy(), obs=a.obs[["array_row", "array_col"]].copy(), var=a.var[[]].copy())
    b.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=np.float64).copy()
    return b


# ---------------------------------------------------------------- BANKSY
def banksy_embed(a):
    """BANKSY matrix (λ = 0.8) and its PCA 20; returns the banksy_dict (its own structure) and the PCA."""
    import scanpy
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy
    from banksy_utils.umap_pca import pca_umap

    b = counts_adata(a)
    scanpy.pp.highly_variable_genes(b, n_top_genes=BANKSY_HVG, flavor="seurat_v3")
    scanpy.pp.normalize_total(b, target_sum=1e4)
    scanpy.pp.log1p(b)
    b = b[:, b.var["highly_variable"].to_numpy()].copy()
    b.X = np.asarray(b.X.toarray() if hasattr(b.X, "toarray") else b.X, dtype=np.float64)
    b.obs["xcoord"], b.obs["ycoord"] = b.obsm["spatial"][:, 0], b.obsm["spatial"][:, 1]
    b.obsm["coord_xy"] = b.obsm["spatial"]
    keys = ("xcoord", "ycoord", "coord_xy")
    with quiet():
        bd = initialize_banksy(b, keys, num_neighbours=BANKSY_K_GEOM, nbr_weight_decay="scaled_gaussian", max_m=1,
                               plt_edge_hist=False, plt_nbr_weights=False, plt_agf_angles=False, plt_theta=False)
        bd, _ = generate_banksy_matrix(b, bd, [BANKSY_LAMBDA], max_m=1, verbose=False)
        pca_umap(bd, pca_dims=[BANKSY_PCS], plt_remaining_var=False, add_umap=False)
    pcs = bd["scaled_gaussian"][BANKSY_LAMBDA]["adata"].obsm[f"reduced_pc_{BANKSY_PCS}"]
    return bd, np.asarray(pcs)


def banksy_leiden(bd, k: int, seed: int) -> np.ndarray:
    from banksy.cluster_methods import run_Leiden_partition

    with quiet():
        df, _ = run_Leiden_partition(bd, resolutions=[], num_nn=50, num_iterations=-1, partition_seed=seed,
                                     match_labels=False, annotations=None, max_labels=k)
    return np.asarray(df["labels"].iloc[0].dense)


def banksy_gmm(pcs, k: int, seed: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(k, covariance_type="full", random_state=seed).fit_predict(pcs)


# ---------------------------------------------------------------- SpaGCN
def load_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def spagcn(a, k: int, seed: int, histology: bool) -> np.ndarray:
    """SpaGCN's tutorial pipeline → refined labels. Pixel coordinates are the section's image frame."""
    import random

    import scanpy
    import SpaGCN as spg
    import torch

    b = counts_adata(a)
    xy = b.obsm["spatial"]
    x_f, y_f = xy[:, 1], xy[:, 0]  # SpaGCN's x_pixel indexes image rows, y_pixel columns
    kw = {"histology": False}
    if histology:
        img = load_rgb(a.uns["senca"]["image_path"])
        beta = max(3, int(round(SPAGCN_BETA_PER_SPOT * float(a.uns["senca"]["spot_diameter_px"]))))
        xi = np.clip(np.rint(x_f).astype(int), 0, img.shape[0] - 1).tolist()
        yi = np.clip(np.rint(y_f).astype(int), 0, img.shape[1] - 1).tolist()
        kw = {"histology": True, "x_pixel": xi, "y_pixel": yi, "image": img, "beta": beta, "alpha": 1}
    with quiet():
        adj = spg.calculate_adj_matrix(x=x_f.tolist(), y=y_f.tolist(), **kw)
        spg.prefilter_genes(b, min_cells=3)
        spg.prefilter_specialgenes(b)
        scanpy.pp.normalize_per_cell(b, min_counts=0)
        scanpy.pp.log1p(b)
        ell = spg.search_l(0.5, adj, start=0.01, end=1000, tol=0.01, max_run=100)
        if ell is None:
            raise RuntimeError("search_l found no length scale for p = 0.5")
        res = spg.search_res(b, adj, ell, k, start=0.7, step=0.1, tol=5e-3, lr=0.05, max_epochs=20,
                             r_seed=seed, t_seed=seed, n_seed=seed)
        clf = spg.SpaGCN()
        clf.set_l(ell)
        random.seed(seed)
        torch.manual_seed(seed)
        np.random.seed(seed)
        clf.train(b, adj, init_spa=True, res=res, tol=5e-3, lr=0.05, max_epochs=200)
        pred, _ = clf.predict()
        grid = spg.calculate_adj_matrix(x=b.obs["array_row"].tolist(), y=b.obs["array_col"].tolist(),
                                        histology=False)
        shape = "hexagon" if a.uns["senca"].get("grid") == "hex" else "square"
        refined = spg.refine(sample_id=b.obs_names.tolist(), pred=pred.tolist(), dis=grid, shape=shape)
    return np.asarray(refined)


# ---------------------------------------------------------------- driver
def scored(a, labels) -> float:
    a.obs["peer_region"] = pd.Categorical(np.asarray(labels).astype(str))
    return sc.metrics.ari(a, "peer_region")


def methods_for(a, peers):
    """(row name, peer, runner) for this section; runner(a, k, seed) -> (labels, seconds)."""
    has_image = "image_path" in a.uns["senca"]

    def senca(a, k, seed):
        t = time.perf_counter()
        run_senca(a, k, seed, "senca")
        return a.obs["region"].to_numpy(), time.perf_counter() - t

    banksy_cache: dict = {}

    def banksy_any(how):
        def run(a, k, seed):
            cache, bd = banksy_cache, None
            # both BANKSY rows of a seed share one embedding; each row's seconds include it
            if how == "leiden" or seed not in cache:
                t = time.perf_counter()
                bd, pcs = banksy_embed(a)
                cache[seed] = (pcs, time.perf_counter() - t)
            pcs, t_embed = cache[seed]
            t = time.perf_counter()
            labels = banksy_leiden(bd, k, seed) if how == "leiden" else banksy_gmm(pcs, k, seed)
            return labels, t_embed + time.perf_counter() - t
        return run

    def spagcn_run(histology):
        def run(a, k, seed):
            t = time.perf_counter()
            return spagcn(a, k, seed, histology), time.perf_counter() - t
        return run

    rows = [("SENCA-st (defaults)", None, senca)]
    if "banksy" in peers:
        rows += [(f"BANKSY λ={BANKSY_LAMBDA} → its Leiden at k", "banksy", banksy_any("leiden")),
                 (f"BANKSY λ={BANKSY_LAMBDA} → GMM(k) on PCA {BANKSY_PCS}", "banksy", banksy_any("gmm"))]
    if "spagcn" in peers:
        rows.append(("SpaGCN, no histology + refine", "spagcn", spagcn_run(False)))
        if has_image:
            rows.append(("SpaGCN, with H&E + refine", "spagcn", spagcn_run(True)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["A1", "B1", "C1", "DLPFC"],
                   choices=["A1", "B1", "C1", "DLPFC"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--peers", nargs="*", default=["banksy", "spagcn"], choices=["banksy", "spagcn"])
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    print(f"threads: torch {torch.get_num_threads()}, OMP/BLAS/numba {os.environ['OMP_NUM_THREADS']} "
          f"(every method single-threaded); machine: {platform.machine()}, {os.cpu_count()} cores visible, "
          f"python {platform.python_version()}, torch {torch.__version__}", flush=True)
    peers = []
    for peer in args.peers:
        mod, why = peer_import(peer)
        if mod is None:
            skip(f"{peer} ({PEER_DIST[peer]})", why)
        else:
            from importlib.metadata import version

            print(f"peer: {peer} = {PEER_DIST[peer]} {version(PEER_DIST[peer])}", flush=True)
            peers.append(peer)

    results, notes = [], []
    for name in args.sections:
        t = time.perf_counter()
        try:
            a = load_section(name)
        except Exception as e:  # noqa: BLE001
            skip(f"section {name}", e)
            continue
        k = n_classes(a)
        notes.append(f"{name}: {a.n_obs} spots, {int(a.obs['label_scored'].sum())} scored, k = {k}; read + "
                     f"QC/HVG/PCA + patch features {time.perf_counter() - t:.1f} s (once, not in SENCA-st's seconds)")
        for method, peer, runner in methods_for(a, peers):
            aris, secs, ncl, failed = [], [], [], None
            for seed in range(args.seeds):
                try:
                    labels, dt = runner(a, k, seed)
                except Exception as e:  # noqa: BLE001 -- a peer crash is a skip, not the end of the table
                    failed = skip(f"{method} on {name} (seed {seed})", e)
                    break
                aris.append(scored(a, labels))
                secs.append(dt)
                ncl.append(len(np.unique(labels)))
            if failed is not None:
                results.append((method, name, f"skipped ({failed[:80]})", "", ""))
                continue
            note = "" if set(ncl) == {k} else f"clusters found {sorted(set(ncl))}"
            results.append((method, name, fmt(aris), f"{np.mean(secs):.1f}", note))
            print(f"  {name:6s} {method:42s} ARI {fmt(aris)}  {np.mean(secs):.1f} s", file=sys.stderr, flush=True)

    print(f"\n## Peers side by side: ARI over scored spots (mean ± sd over seeds 0..{args.seeds - 1}), "
          "seconds per section and seed (1 thread)")
    print("| method | section | ARI | s | note |\n|---|---|---|---|---|")
    for r in results:
        print("| " + " | ".join(r) + " |")
    means = {}
    for method, name, ari, _, _ in results:
        if not ari.startswith("skipped"):
            means.setdefault(method, {})[name] = ari.split(" ± ")[0]
    secs_done = [n for n in args.sections if any(n in m for m in means.values())]
    print("\n| method | " + " | ".join(secs_done) + " |\n|---|" + "---|" * len(secs_done))
    for method, row in means.items():
        print(f"| {method} | " + " | ".join(row.get(n, "–") for n in secs_done) + " |")
    print()
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
