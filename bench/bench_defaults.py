"""Defaults chosen by leave-one-section-out, k chosen automatically, and a consensus over seeds — on every labelled
shared section (HER2ST A1, B1, C1, DLPFC 151673).

    .venv/bin/python bench/bench_defaults.py [--seeds 3] [--sections A1 B1 C1 DLPFC]

For each candidate setting (``CANDIDATES``: SencaConfig overrides) and section, SENCA-st is trained with seeds
0..S-1 and clustered at k = the number of annotated classes. Then, for each section, the candidate with the best
mean ARI on the *other* sections is "picked" and its ARI on the held-out section reported beside the current
default's: the honest estimate of how a default chosen on labelled sections does on a section it never saw.
Also printed: the k chosen with ``k: auto`` (default setting) and its ARI, and a label-free consensus of the
seeds' partitions (co-association, average linkage; costs S trainings). Labels only score here; nothing in the
product reads them. Prints markdown tables; numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

from bench_regions import fmt, load_section, n_classes, section_parser, shared_ready  # noqa: E402

import senca_core as sc  # noqa: E402
from senca_core.model import SencaConfig  # noqa: E402

#: the settings compared (SencaConfig overrides); "default" is the shipped configuration
CANDIDATES: dict[str, dict] = {
    "default": {},
    "readout_hist_weight=0": {"readout_hist_weight": 0.0},
    "w_hist=0.1": {"w_hist": 0.1},
    "w_neigh=2": {"w_neigh": 2.0},
    "mask_rate=0.5": {"mask_rate": 0.5},
    "epochs=100": {"epochs": 100},
    "epochs=400": {"epochs": 400},
    "attention_hops=1": {"attention_hops": 1},
}


def consensus(partitions: list[np.ndarray], k: int, neighbors: np.ndarray) -> np.ndarray:
    """Co-association consensus of several partitions of the same spots (average linkage), refined spatially."""
    from sklearn.cluster import AgglomerativeClustering

    P = np.asarray(partitions)
    co = np.mean([p[:, None] == p[None, :] for p in P], axis=0)
    labels = AgglomerativeClustering(k, metric="precomputed", linkage="average").fit_predict(1.0 - co)
    return sc.tl.refine_labels(labels, neighbors)


def score_labels(a, labels) -> float:
    import pandas as pd

    a.obs["region"] = pd.Categorical(np.asarray(labels).astype(str))
    return sc.metrics.ari(a)


def main() -> None:
    p = section_parser(__doc__, seeds=3)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    args = p.parse_args()
    if not shared_ready():
        return
    ari: dict[tuple[str, str], list[float]] = {}
    cons: dict[tuple[str, str], float] = {}
    secs: dict[tuple[str, str], float] = {}
    kauto: dict[str, list[tuple[int, float]]] = {}
    classes: dict[str, int] = {}
    for name in args.sections:
        a = load_section(name)
        k = classes[name] = n_classes(a)
        nb = np.asarray(a.obsm["spatial_neighbors"])
        for cand in args.candidates:
            parts, t = [], time.perf_counter()
            for seed in range(args.seeds):
                sc.tl.senca(a, SencaConfig(seed=seed).replace(**CANDIDATES[cand]))
                sc.tl.cluster(a, k, seed=seed)
                ari.setdefault((name, cand), []).append(sc.metrics.ari(a))
                parts.append(a.obs["region"].astype(int).to_numpy())
                if cand == "default":
                    chosen = sc.tl.cluster(a, None, seed=seed)
                    kauto.setdefault(name, []).append((int(chosen), sc.metrics.ari(a)))
            secs[(name, cand)] = (time.perf_counter() - t) / args.seeds
            cons[(name, cand)] = score_labels(a, consensus(parts, k, nb))
            print(f"  {name:6s} {cand:24s} ARI {fmt(ari[(name, cand)])} consensus {cons[(name, cand)]:.3f}",
                  file=sys.stderr, flush=True)

    print(f"\n## Candidate settings: ARI per section (mean ± sd over {args.seeds} seeds; consensus of the seeds)")
    print("| setting | " + " | ".join(args.sections) + " | mean | consensus (" + ", ".join(args.sections) + ") |")
    print("|---|" + "---|" * (len(args.sections) + 2))
    for cand in args.candidates:
        means = [np.mean(ari[(s, cand)]) for s in args.sections]
        print(f"| {cand} | " + " | ".join(fmt(ari[(s, cand)]) for s in args.sections)
              + f" | {np.mean(means):.3f} | " + ", ".join(f"{cons[(s, cand)]:.3f}" for s in args.sections) + " |")

    print("\n## Leave one section out: the setting picked on the other sections, scored on the held-out one")
    print("| held out | picked on the others | its ARI there | default's ARI there |")
    print("|---|---|---|---|")
    for held in args.sections:
        others = [s for s in args.sections if s != held]
        pick = max(args.candidates, key=lambda c: np.mean([np.mean(ari[(s, c)]) for s in others]))
        print(f"| {held} | {pick} | {fmt(ari[(held, pick)])} | {fmt(ari[(held, 'default')])} |")

    print("\n## k: auto (default setting): the k chosen without labels and its ARI")
    print("| section | annotated classes | k chosen per seed | ARI at k auto | ARI at annotated k |")
    print("|---|---|---|---|---|")
    for name in args.sections:
        ks = [k for k, _ in kauto[name]]
        print(f"| {name} | {classes[name]} | {ks} | "
              f"{fmt([v for _, v in kauto[name]])} | {fmt(ari[(name, 'default')])} |")


if __name__ == "__main__":
    main()
