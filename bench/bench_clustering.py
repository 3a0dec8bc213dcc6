"""How regions are cut from the embedding: clustering settings compared, and chosen by leave-one-section-out, on
every labelled shared section (HER2ST A1, B1, C1, DLPFC 151673).

    .venv/bin/python bench/bench_clustering.py [--seeds 3] [--sections A1 B1 C1 DLPFC]

SENCA-st is trained once per section and seed with the shipped defaults; each clustering variant (``VARIANTS``:
``tl.cluster`` keyword arguments, or a representation other than the region readout) is applied to the same
embeddings at k = the number of annotated classes. The default is the consensus of two HMRF-EM GMM cuts on 15 and
10 components (``senca_core.tl._consensus``); "consensus of six" is the family it replaced on 2026-12-06 (the same
GMM plain and with HMRF-EM on 10, 15 and 30 components), "consensus of nine" adds the three tied-covariance cuts
that family had before they were dropped. The representation variants test whether clustering uses the
embedding well: the fused ``z`` alone, the readout beside ``z``, and the readout mixed with its spatial
neighbours' average (BANKSY's idea, applied after the model). Then each section is held out in turn: the variant
with the best mean ARI on the other sections is picked and scored on the held-out one. Labels only score here;
nothing in the product reads them. Prints markdown tables; numbers are benchmarks, never assertions.
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

ONE = {"consensus": False}
DEFAULT = "default (consensus of two HMRF-EM cuts)"
#: variant -> (representation, tl.cluster keyword arguments); "default" is what the product does
VARIANTS: dict[str, tuple[str, dict]] = {
    DEFAULT: ("readout", {}),
    "one cut": ("readout", ONE),
    "consensus of six (plain + HMRF-EM, 10/15/30)": ("readout", {"consensus": "six"}),
    "consensus of nine (+ tied covariance)": ("readout", {"consensus": "nine"}),
    "consensus, spatial_prior=0": ("readout", {"spatial_prior": 0.0}),
    "consensus, spatial_prior=8": ("readout", {"spatial_prior": 8.0}),
    "consensus, spatial_prior=32": ("readout", {"spatial_prior": 32.0}),
    "one cut, spatial_prior=0 (no Potts prior)": ("readout", {**ONE, "spatial_prior": 0.0}),
    "one cut, prior_em_rounds=1 (HMRF-EM)": ("readout", {"prior_em_rounds": 1}),
    "one cut, prior_em_rounds=10": ("readout", {"prior_em_rounds": 10}),
    "one cut, prior_em_rounds=10, n_pcs=10": ("readout", {"prior_em_rounds": 10, "n_pcs": 10}),
    "one cut, n_pcs=10": ("readout", {**ONE, "n_pcs": 10}),
    "one cut, n_pcs=30": ("readout", {**ONE, "n_pcs": 30}),
    "one cut, covariance=tied": ("readout", {"covariance": "tied"}),
    "one cut, covariance=tied, n_pcs=30": ("readout", {"covariance": "tied", "n_pcs": 30}),
    "one cut, covariance=diag": ("readout", {"covariance": "diag"}),
    "consensus, no refinement": ("readout", {"refine": False}),
    "kmeans": ("readout", {"method": "kmeans"}),
    "consensus, z only": ("z", {}),
    "consensus, readout + z": ("readout+z", {}),
    "consensus, readout + neighbour mean (0.3)": ("readout+nb", {}),
}


def neighbour_mix(a, X: np.ndarray, lam: float = 0.3) -> np.ndarray:
    """``[sqrt(1-λ) X, sqrt(λ) mean over the spot's spatial neighbours of X]`` (columns scaled to unit mean sd)."""
    Xs = X / (X.std(0).mean() or 1.0)
    nb = np.asarray(a.obsm["spatial_neighbors"])[:, 1:]
    return np.hstack([np.sqrt(1 - lam) * Xs, np.sqrt(lam) * Xs[nb].mean(axis=1)])


def cut(a, k: int, seed: int, kwargs: dict) -> None:
    """``tl.cluster`` with ``kwargs``; ``consensus="six"``: the family before 2026-12-06 (plain and HMRF-EM cuts on
    10, 15 and 30 components), ``"nine"``: those and three tied-covariance cuts."""
    if kwargs.get("consensus") not in ("six", "nine"):
        sc.tl.cluster(a, k, seed=seed, **kwargs)
        return
    from senca_core.tl._consensus import EM_ROUNDS, consensus_cut

    six = [{"covariance": "full", "n_pcs": d, "prior_em_rounds": r} for r in (0, EM_ROUNDS) for d in (15, 10, 30)]
    settings = six + ([dict(s, covariance="tied") for s in six if not s["prior_em_rounds"]]
                      if kwargs["consensus"] == "nine" else [])
    consensus_cut([a], lambda s, kk, slides: sc.tl.cluster(slides, kk, seed=seed, consensus=False,
                                                          return_model=True, **s),
                  settings, k, refine=True, key_added="region", use_rep="X_senca")


def representation(a, kind: str, readout: np.ndarray, z: np.ndarray) -> np.ndarray:
    if kind == "z":
        return z
    if kind == "readout+z":
        return np.hstack([readout / (readout.std(0).mean() or 1.0), z / (z.std(0).mean() or 1.0)])
    if kind == "readout+nb":
        return neighbour_mix(a, readout)
    return readout


def main() -> None:
    args = section_parser(__doc__, seeds=3).parse_args()
    if not shared_ready():
        return
    ari: dict[tuple[str, str], list[float]] = {}
    secs: dict[str, list[float]] = {}
    for name in args.sections:
        a = load_section(name)
        k = n_classes(a)
        for seed in range(args.seeds):
            sc.tl.senca(a, SencaConfig(seed=seed))
            readout = np.asarray(a.obsm["X_senca"], dtype=np.float32)
            z = np.asarray(a.obsm["X_senca_latent"], dtype=np.float32)
            for variant, (kind, kwargs) in VARIANTS.items():
                a.obsm["X_senca"] = representation(a, kind, readout, z).astype(np.float32)
                t0 = time.perf_counter()
                cut(a, k, seed, kwargs)
                secs.setdefault(variant, []).append(time.perf_counter() - t0)
                ari.setdefault((name, variant), []).append(sc.metrics.ari(a))
            a.obsm["X_senca"] = readout
            print(f"  {name} seed {seed}: consensus {ari[(name, DEFAULT)][-1]:.3f}", file=sys.stderr,
                  flush=True)

    print(f"\n### Clustering variants: ARI per section (mean ± sd over {args.seeds} seeds, same embeddings)")
    print("| variant | " + " | ".join(args.sections) + " | mean | s per cut |")
    print("|---|" + "---|" * (len(args.sections) + 2))
    for v in VARIANTS:
        means = [np.mean(ari[(s, v)]) for s in args.sections]
        print(f"| {v} | " + " | ".join(fmt(ari[(s, v)]) for s in args.sections)
              + f" | {np.mean(means):.3f} | {np.mean(secs[v]):.1f} |")

    loso(ari, args.sections, list(VARIANTS), "every variant")
    loso(ari, args.sections, [DEFAULT, "one cut", "consensus of six (plain + HMRF-EM, 10/15/30)",
                              "consensus of nine (+ tied covariance)"],
         "the default, one cut and the consensus of six and of nine")
    loso(ari, args.sections, [DEFAULT] + [v for v in VARIANTS if v.startswith("consensus, spatial")],
         "the spatial prior's weight β within the consensus (16)")


def loso(ari: dict, sections: list[str], candidates: list[str], what: str,
         reference: str = DEFAULT) -> None:
    """Each section held out in turn: the candidate with the best mean ARI on the others, scored on it."""
    print(f"\n### Leave one section out over {what}: picked on the other sections, scored on the held-out one")
    print(f"| held out | picked on the others | its ARI there | {reference}: ARI there |")
    print("|---|---|---|---|")
    picked, default = [], []
    for held in sections:
        others = [s for s in sections if s != held]
        pick = max(candidates, key=lambda v: np.mean([np.mean(ari[(s, v)]) for s in others]))
        picked.append(np.mean(ari[(held, pick)]))
        default.append(np.mean(ari[(held, reference)]))
        print(f"| {held} | {pick} | {fmt(ari[(held, pick)])} | {fmt(ari[(held, reference)])} |")
    print(f"| mean | | {np.mean(picked):.3f} | {np.mean(default):.3f} |")


if __name__ == "__main__":
    main()
