"""Region-finding benchmark: baseline scanpy pipeline vs SENCA-st and its ablations on real HER2ST sections,
the confounded region pairs of a synthetic slide, and SENCA-st's training time / memory against section size.

    .venv/bin/python bench/bench_regions.py [--seeds 3] [--a1-seeds 10] [--dlpfc] [--skip-scale]

Prints tables (markdown). Real sections come from ../shared/data (or $SENCA_SHARED/data); without them the real
data tables are skipped with a message. Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SENCA_SHARED", REPO.parent / "shared")).resolve()

import senca_core as sc  # noqa: E402
from senca_core.model import ABLATIONS, SencaConfig  # noqa: E402
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402


LABELLED_SECTIONS = ["A1", "B1", "C1", "DLPFC"]


def section_parser(doc: str, **options: int) -> argparse.ArgumentParser:
    """The labelled-section benches' command line: ``--sections`` plus one int option per keyword (its default)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in options.items():
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--sections", nargs="+", default=list(LABELLED_SECTIONS))
    return p


def shared_ready() -> bool:
    """Whether the shared sections are here (else one skip line); torch then runs on one thread, as the pipeline."""
    if not (SHARED / "data" / "her2st").exists():
        print(f"(skipped: {SHARED / 'data'} not found)")
        return False
    import torch

    torch.set_num_threads(1)
    return True


def load_section(name: str, genes: str = "spatial"):
    """One labelled section, preprocessed with the default gene choice (``genes="variable"``: the scanpy pipeline
    of peers.md, which the peers' baseline rows use)."""
    her2st = SHARED / "data" / "her2st"
    if name == "A1":
        a = sc.io.read_her2st(her2st, "A1", image=her2st / "images" / "A1_HE_dark_2000px.png", image_scale=2000 / 6954)
        sc.hist.patch_features(a)
    elif name == "DLPFC":
        d = SHARED / "data" / "dlpfc" / "151673"
        a = sc.io.read_visium(d, labels=d / "labels.tsv")
        sc.hist.patch_features(a)
    else:
        a = sc.io.read_her2st(her2st, name)
    sc.pp.preprocess(a, genes=genes)
    return a


def n_classes(a) -> int:
    return int(a.obs.loc[a.obs["label_scored"].to_numpy(bool), "label"].astype(str).nunique())


def score(a, key="region"):
    return sc.metrics.ari(a, key), sc.metrics.nmi(a, key)


def run_baseline(a, k, seed, method):
    """The peers' pipeline: PCA 30 -> GaussianMixture(k, full) (or Leiden searched to k); '+refine' adds ours;
    ``a`` is then preprocessed as peers.md does (``genes="variable"``).
    'consensus' is no model at all: the model's own input (the expression PCA of the default genes) cut by SENCA-st's
    own default clustering (the consensus of two HMRF-EM GMM cuts with the spatial prior and refinement), so the table
    shows what the model adds to its clustering."""
    import pandas as pd

    if method == "consensus":
        sc.tl.cluster(a, k, use_rep="X_pca", seed=seed)
    elif method.startswith("gmm"):
        labels = GaussianMixture(k, covariance_type="full", random_state=seed).fit_predict(a.obsm["X_pca"])
        if method.endswith("refine"):
            labels = sc.tl.refine_labels(labels, np.asarray(a.obsm["spatial_neighbors"]))
        a.obs["region"] = pd.Categorical(labels.astype(str))
    else:
        sc.tl.cluster(a, k, method="leiden", use_rep="X_pca", n_pcs=None, refine=False, seed=seed)


#: options of the full model beside its ablations: an ensemble of three networks (``model._ensemble``)
VARIANTS = {"ensemble3": {"n_models": 3}}


def run_senca(a, k, seed, variant):
    config = SencaConfig(seed=seed)
    sc.tl.senca(a, config.ablation(variant) if variant in ABLATIONS else config.replace(**VARIANTS[variant]))
    sc.tl.cluster(a, k, seed=seed)


def fmt(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def real_sections(sections, seeds_for, methods):
    rows = []
    for name in sections:
        a = load_section(name)
        peers_input = None
        k = n_classes(a)
        has_image = "X_hist" in a.obsm
        for method in methods:
            if method == "image_only" and not has_image:
                rows.append((name, method, "n/a (no image)", "", ""))
                continue
            aris, nmis, secs = [], [], []
            for seed in range(seeds_for(name)):
                t = time.perf_counter()
                if method.startswith("baseline:consensus"):
                    run_baseline(a, k, seed, "consensus")
                elif method.startswith("baseline"):
                    if peers_input is None:
                        peers_input = load_section(name, genes="variable")
                    run_baseline(peers_input, k, seed, method.split(":")[1])
                    a.obs["region"] = peers_input.obs["region"]
                else:
                    run_senca(a, k, seed, method)
                secs.append(time.perf_counter() - t)
                ari, nmi = score(a)
                aris.append(ari)
                nmis.append(nmi)
            rows.append((name, method, fmt(aris), fmt(nmis), f"{np.mean(secs):.1f}"))
            print(f"  {name:6s} {method:24s} ARI {fmt(aris)}", file=sys.stderr, flush=True)
    print("\n## Real sections: ARI / NMI over scored spots (mean ± sd over seeds), seconds per section and seed")
    print("| section | method | ARI | NMI | s |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def pair_separation(a, pair):
    """ARI between truth and regions restricted to the spots of one confounded pair (1 = split perfectly)."""
    truth = a.obs["true_region"].astype(str).to_numpy()
    mask = np.isin(truth, pair)
    return adjusted_rand_score(truth[mask], a.obs["region"].astype(str).to_numpy()[mask])


def synthetic(seeds):
    from senca_core.datasets import EXPRESSION_ALIKE_PAIRS, HISTOLOGY_ALIKE_PAIRS

    hp, ep = HISTOLOGY_ALIKE_PAIRS[0], EXPRESSION_ALIKE_PAIRS[0]
    rows = []
    for ablation in ["senca", "expr_only", "image_only", "concat"]:
        full, h, e = [], [], []
        for seed in range(seeds):
            a = sc.datasets.synthetic_slide(2000, seed=seed)
            sc.pp.preprocess(a)
            sc.hist.patch_features(a)
            run_senca(a, 6, 0, ablation)
            full.append(sc.metrics.ari(a))
            h.append(pair_separation(a, hp))
            e.append(pair_separation(a, ep))
        rows.append((ablation, fmt(full), fmt(h), fmt(e)))
    print(f"\n## Synthetic slides (2,000 spots, 6 regions, {seeds} slides): whole-slide ARI and separation of the "
          "confounded pairs (ARI within the pair's spots)")
    print(f"| model | ARI | {hp[0]}/{hp[1]} (alike in histology) | {ep[0]}/{ep[1]} (alike in expression) |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


SCALE_CHILD = """
import json, resource, sys, time, torch
import senca_core as sc
from senca_core.model import SencaConfig, fit
n = int(sys.argv[1])
a = sc.datasets.synthetic_slide(n, seed=0)
sc.pp.preprocess(a); sc.hist.patch_features(a)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); model, hist = fit(a, SencaConfig(seed=0)); dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "s": dt, "rss_mb": peak / 1024, "train_extra_mb": (peak - base) / 1024,
                  "loss0": hist[0]["loss"], "loss_end": hist[-1]["loss"], "threads": torch.get_num_threads()}))
"""


def scale(sizes):
    print("\n## SENCA-st training (default config, 200 epochs, image + expression) against section size")
    print("| spots | train s | peak RSS MB | RSS added by training MB | loss first → last | torch threads |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", SCALE_CHILD, str(n)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {n} | failed: {out.stderr.strip().splitlines()[-1]} | | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {n} | {r['s']:.1f} | {r['rss_mb']:.0f} | {r['train_extra_mb']:.0f} | "
              f"{r['loss0']:.3f} → {r['loss_end']:.3f} | {r['threads']} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--a1-seeds", type=int, default=None, help="seeds on A1 (peers.md uses 10 there)")
    p.add_argument("--dlpfc", action="store_true", help="also run DLPFC 151673 (3,639 spots; slower)")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    args = p.parse_args()

    methods = ["baseline:gmm", "baseline:leiden", "baseline:gmm+refine", "baseline:consensus", *ABLATIONS, *VARIANTS]
    if (SHARED / "data" / "her2st").exists():
        sections = ["A1", "B1", "C1"] + (["DLPFC"] if args.dlpfc else [])
        seeds_for = lambda name: (args.a1_seeds or args.seeds) if name == "A1" else args.seeds  # noqa: E731
        real_sections(sections, seeds_for, methods)
    else:
        print(f"(real sections skipped: {SHARED / 'data'} not found)")
    if not args.skip_synthetic:
        synthetic(args.seeds)
    if not args.skip_scale:
        scale([1000, 2000, 4000, 8000])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the benchmark process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
