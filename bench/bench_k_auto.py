"""k auto: how ``tl.cluster(k=None)`` reads the number of regions, rules compared on every labelled shared section
(HER2ST A1, B1, C1, DLPFC 151673) and on synthetic slides with a known number of regions.

    .venv/bin/python bench/bench_k_auto.py [--seeds 10] [--dlpfc-seeds 6] [--synthetic-seeds 3]
                                           [--sections A1 B1 C1 DLPFC]

SENCA-st is trained once per section and seed with the shipped defaults. On the readout's 15 principal components
(the cut's own reduction) the BIC curve of the supported mixture family is fitted for k = 2 .. 20, and the default
cut (the consensus of two HMRF-EM cuts) is made at every k = 2 .. 12 with two clustering seeds (the training
seed and seed + 100). A rule's ARI is that of the cut at the k it reads, mean of the two clustering seeds. Rules:
the knee of the curve over 2 .. ``k_max`` (the default before 2026-12-07 with ``k_max`` 12), the minimum of BIC
with c times its penalty alone, the smaller of the two for constant c, and the default (``senca_core.tl._k_auto``):
the smaller of the knee (``k_max`` 12) and the penalised minimum with c measured on the slide (the design effect of
the residuals' spatial autocorrelation). The constant c is then held out section by section (picked on the other
sections' mean, scored on the held-out one); the default has no constant to pick. The synthetic slides
(``datasets.synthetic_slide``, 2,000 spots) hold 4 to 6 regions (layouts without glands or sub-clone B) and
report the k each rule reads. Labels only score here; nothing in the product reads them. Prints markdown tables;
numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regions import load_section, n_classes, section_parser, shared_ready  # noqa: E402

import senca_core as sc  # noqa: E402
from senca_core.model import SencaConfig  # noqa: E402
from senca_core.tl._cluster import _reducer  # noqa: E402
from senca_core.tl._k_auto import (bic_curve, choose_k, curve_sample, knee, neighbour_edges,  # noqa: E402
                                   penalised_minimum)

CURVE_KS = np.arange(2, 21)
CUT_KS = list(range(2, 13))
KNEE_RANGES = (8, 10, 12, 15, 20)
PENALTIES = (1.0, 1.25, 1.5, 1.75, 1.9, 2.0, 2.25, 2.5, 3.0)
#: synthetic layouts (``datasets.synthetic_slide``): six regions, without glands, without glands or sub-clone B
SYNTHETIC = {"default": {}, "no glands": {"n_glands": 0}, "no glands, no clone B": {"n_glands": 0, "clone_B": 0}}


def readout_record(a, seed: int, cuts: bool) -> dict:
    """Train the default, fit the curve; with ``cuts`` the default cut's ARI at every k of ``CUT_KS``."""
    sc.tl.senca(a, SencaConfig(seed=seed))
    X = np.asarray(a.obsm["X_senca"], dtype=np.float64)
    Xr = _reducer(X, 15, seed).transform(X)
    report: dict = {}  # the default, as tl.cluster runs it: k and the design effect c it measured
    choose_k(Xr, seed, 12, edges=neighbour_edges([a.obsm["spatial_neighbors"]], [a.n_obs]), report=report)
    sample = curve_sample(Xr, seed)  # the same spots, the curve on to k = 20 for the other rules
    family, bic, _ = bic_curve(sample, seed, CURVE_KS)
    rec = {"family": family, "bic": bic, "n": sample.shape[0], "dim": Xr.shape[1], "c": report["design_effect"],
           "k_default": report["k"]}
    if cuts:
        rec["ari"] = {k: np.mean([(sc.tl.cluster(a, k, seed=s), sc.metrics.ari(a))[1] for s in (seed, seed + 100)])
                      for k in CUT_KS}
    return rec


def rules(k_max: int = 12) -> dict:
    """Rule name -> function of a record giving k."""
    def upto(rec, top):
        keep = CURVE_KS <= top
        return CURVE_KS[keep], rec["bic"][keep]

    def penalised(rec, c, top=20):
        ks, bic = upto(rec, top)
        return penalised_minimum(ks, bic, rec["family"], rec["n"], rec["dim"], c)

    out = {f"knee, k_max {m}" + (" (before)" if m == k_max else ""): (lambda r, m=m: knee(*upto(r, m)))
           for m in KNEE_RANGES}
    out.update({f"penalised BIC alone, c {c}": (lambda r, c=c: penalised(r, c)) for c in PENALTIES})
    out.update({f"smaller of knee and penalised, c {c}":
                (lambda r, c=c: min(knee(*upto(r, k_max)), penalised(r, c, k_max))) for c in PENALTIES})
    out["the default: smaller of knee and penalised, c measured (design effect)"] = lambda r: r["k_default"]
    return out


def ari_at(rec: dict, k: int) -> float:
    return rec["ari"][min(max(k, CUT_KS[0]), CUT_KS[-1])]


def main() -> None:
    args = section_parser(__doc__, seeds=10, **{"dlpfc-seeds": 6, "synthetic-seeds": 3}).parse_args()
    recs: dict[str, list[dict]] = {}
    annotated: dict[str, int] = {}
    if shared_ready():
        for name in args.sections:
            a = load_section(name)
            annotated[name] = n_classes(a)
            for seed in range(args.dlpfc_seeds if name == "DLPFC" else args.seeds):
                recs.setdefault(name, []).append(readout_record(a, seed, cuts=True))
                print(f"  {name} seed {seed} done", file=sys.stderr, flush=True)
    table = rules()
    sections = list(recs)
    if sections:
        print("\n### k auto rules: ARI of the default cut at the k each rule reads (mean of two clustering seeds; "
              "k range, median)")
        print("| rule | " + " | ".join(sections) + " | mean |")
        print("|---|" + "---|" * (len(sections) + 1))
        ref = [np.mean([ari_at(r, annotated[s]) for r in recs[s]]) for s in sections]
        print("| annotated k (labels; reference) | " + " | ".join(f"{v:.3f} (k {annotated[s]})"
                                                        for v, s in zip(ref, sections)) + f" | {np.mean(ref):.3f} |")
        for name, rule in table.items():
            cells, means = [], []
            for s in sections:
                ks = [rule(r) for r in recs[s]]
                means.append(np.mean([ari_at(r, k) for r, k in zip(recs[s], ks)]))
                cells.append(f"{means[-1]:.3f} (k {min(ks)}–{max(ks)}, {np.median(ks):.0f})")
            print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):.3f} |")
        smaller = {c: table[next(n for n in table if n.startswith(f"smaller of knee and penalised, c {c}"))]
                   for c in PENALTIES}
        score = {(c, s): np.mean([ari_at(r, smaller[c](r)) for r in recs[s]]) for c in PENALTIES for s in sections}
        print("\n### Leave one section out over c (the smaller of the knee and the penalised minimum)")
        print("| held out | c picked on the others | held-out ARI | the knee alone (before) |")
        print("|---|---|---|---|")
        held, before = [], []
        for s in sections:
            others = [o for o in sections if o != s] or [s]
            c = max(PENALTIES, key=lambda c: np.mean([score[(c, o)] for o in others]))
            held.append(score[(c, s)])
            before.append(np.mean([ari_at(r, knee(CURVE_KS[CURVE_KS <= 12], r["bic"][CURVE_KS <= 12]))
                                   for r in recs[s]]))
            print(f"| {s} | {c} | {held[-1]:.3f} | {before[-1]:.3f} |")
        print(f"| mean | | {np.mean(held):.3f} | {np.mean(before):.3f} |")
        print("\n### The design effect c the default measures (min – max over seeds)")
        print("| " + " | ".join(sections) + " |")
        print("|" + "---|" * len(sections))
        print("| " + " | ".join(f"{min(r['c'] for r in recs[s]):.2f} – {max(r['c'] for r in recs[s]):.2f}"
                                for s in sections) + " |")
    print(f"\n### Synthetic slides with a known number of regions (2,000 spots; {args.synthetic_seeds} slides each): "
          "the k each rule reads")
    picks = [n for n in table if "c 1.5" in n or "c 2.0" in n or "default" in n or "(before)" in n or "k_max 8" in n]
    print("| layout | regions | " + " | ".join(picks) + " | c measured |")
    print("|---|---|" + "---|" * (len(picks) + 1))
    for layout_name, layout in SYNTHETIC.items():
        found, true_k = {n: [] for n in picks}, set()
        for seed in range(1, args.synthetic_seeds + 1):
            a = sc.datasets.synthetic_slide(2000, seed=seed, layout=layout)
            true_k.add(a.obs["label"].nunique())
            sc.pp.preprocess(a)
            sc.hist.patch_features(a)
            rec = readout_record(a, seed, cuts=False)
            for n in picks:
                found[n].append(table[n](rec))
            found.setdefault("c", []).append(round(rec["c"], 2))
        cells = [", ".join(map(str, found[n])) for n in picks + ["c"]]
        print(f"| {layout_name} | {', '.join(map(str, sorted(true_k)))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
