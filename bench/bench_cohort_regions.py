"""Cohort regions: one SENCA-st model on several HER2ST sections (default A1 + B1 + C1, three patients; ``--sections
A1 B1 C1 B4 C2 C3`` the six), regions cut two ways by ``senca_core.tl.cluster``: the pooled readout at the
cohort's k with each slide alignment (``cut_by="cohort"``, align none / centre / matched), and each slide cut
alone then matched across the cohort (``cut_by="slide"``); against the baseline pipeline under the same protocol
(shared PCA basis, pooled GaussianMixture at the same k; not with ``--k auto``).

    .venv/bin/python bench/bench_cohort_regions.py [--seeds 3] [--epochs 200] [--k 6|auto] [--sections ...]

Prints a markdown table of ARI per labelled slide (mean ± sd over training seeds), the regions each slide got
(mean) and how many cohort regions hold >= 5 % of two or more patients' spots. Needs ../shared/data/her2st (or
$SENCA_SHARED/data/her2st); without it, says so and exits 0. Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SENCA_SHARED", REPO.parent / "shared")).resolve()

import senca_core as sc  # noqa: E402
from senca_core.model import SencaConfig  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402

SLIDES = ("A1", "B1", "C1")
LABELLED = ("A1", "B1", "C1")


def load(root: Path, sections=SLIDES):
    slides = []
    for sid in sections:
        if sid == "A1":
            a = sc.io.read_her2st(root, "A1", image=root / "images" / "A1_HE_dark_2000px.png",
                                  image_scale=2000 / 6954)
            sc.hist.patch_features(a)
        else:
            a = sc.io.read_her2st(root, sid)
        slides.append(a)
    sc.pp.preprocess(slides)  # one shared gene panel + PCA basis, as the cohort pipeline does
    return slides


def shared_regions(slides) -> int:
    """Cohort regions holding >= 5 % of the spots of two or more patients (the patient: the id's letter)."""
    import pandas as pd

    reg = np.concatenate([a.obs["region"].astype(str).to_numpy() for a in slides])
    pat = np.concatenate([[a.uns["senca"]["slide_id"][0]] * a.n_obs for a in slides])
    ct = pd.crosstab(reg, pat)
    return int(((ct / ct.sum(0)) > 0.05).sum(1).ge(2).sum())


def baseline(slides, k: int, seeds: int) -> np.ndarray:
    import pandas as pd

    X = np.vstack([a.obsm["X_pca"] for a in slides])
    out = []
    for seed in range(seeds):
        labels = GaussianMixture(k, covariance_type="full", random_state=seed).fit_predict(X)
        start, row = 0, []
        for a in slides:
            a.obs["base"] = pd.Categorical(labels[start:start + a.n_obs].astype(str))
            start += a.n_obs
            row.append(sc.metrics.ari(a, "base"))
        out.append(row)
    return np.asarray(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--k", default="6", help="an integer, or auto")
    ap.add_argument("--sections", nargs="+", default=list(SLIDES))
    args = ap.parse_args()
    k = None if args.k == "auto" else int(args.k)
    root = SHARED / "data" / "her2st"
    if not root.exists():
        print(f"skipped: {root} not found (set SENCA_SHARED)")
        return 0
    slides = load(root, args.sections)
    scored = [i for i, sid in enumerate(args.sections) if sid in LABELLED]
    rows = {} if k is None else {"baseline PCA → pooled GMM": (baseline(slides, k, args.seeds)[:, scored], None, None)}
    cuts = {"cut_by=cohort, align=none": ("cohort", None), "cut_by=cohort, align=centre": ("cohort", "centre"),
            "cut_by=cohort, align=matched": ("cohort", "matched"), "cut_by=slide (matched ids)": ("slide", "matched")}
    scores = {name: ([], [], []) for name in cuts}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        sc.tl.senca(slides, SencaConfig(epochs=args.epochs, seed=seed))
        for name, (cut_by, align) in cuts.items():
            sc.tl.cluster(slides, k=k, align=align, cut_by=cut_by, seed=0)
            scores[name][0].append([sc.metrics.ari(slides[i]) for i in scored])
            scores[name][1].append([slides[i].obs["region"].nunique() for i in range(len(slides))])
            scores[name][2].append(shared_regions(slides))
    for name, (aris, nreg, shared) in scores.items():
        rows[f"SENCA-st, {name}"] = (np.asarray(aris), np.asarray(nreg), np.asarray(shared))
    print(f"\nHER2ST cohort {'+'.join(args.sections)}, k={args.k}, {args.seeds} training seeds x {args.epochs} "
          f"epochs ({time.perf_counter() - t0:.0f} s); regions per slide in the order "
          f"{', '.join(args.sections)}\n")
    names = [args.sections[i] for i in scored]
    print("| method | " + " | ".join(names) + " | mean | regions per slide (mean) | regions shared by patients |")
    print("|---|" + "---|" * (len(names) + 3))
    for name, (v, nreg, shared) in rows.items():
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(v.mean(0), v.std(0))]
        regions = "–" if nreg is None else ", ".join(f"{x:.1f}" for x in nreg.mean(0))
        mixed = "–" if shared is None else f"{shared.mean():.1f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {v.mean():.3f} | {regions} | {mixed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
