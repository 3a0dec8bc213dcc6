"""Cohort regions: one SENCA-st model on HER2ST A1 + B1 + C1 (three patients), regions on the pooled readout at the
cohort's k, with each slide alignment of ``senca_core.tl.cluster`` (none / centre / matched), against the baseline
pipeline under the same protocol (shared PCA basis, pooled GaussianMixture at the same k).

    .venv/bin/python bench/bench_cohort_regions.py [--seeds 3] [--epochs 200] [--k 6]

Prints a markdown table of ARI per slide (mean ± sd over training seeds). Needs ../shared/data/her2st (or
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


def load(root: Path):
    a = sc.io.read_her2st(root, "A1", image=root / "images" / "A1_HE_dark_2000px.png", image_scale=2000 / 6954)
    sc.hist.patch_features(a)
    slides = [a, sc.io.read_her2st(root, "B1"), sc.io.read_her2st(root, "C1")]
    sc.pp.preprocess(slides)  # one shared gene panel + PCA basis, as the cohort pipeline does
    return slides


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
    ap.add_argument("--k", type=int, default=6)
    args = ap.parse_args()
    root = SHARED / "data" / "her2st"
    if not root.exists():
        print(f"skipped: {root} not found (set SENCA_SHARED)")
        return 0
    slides = load(root)
    rows = {"baseline PCA → pooled GMM": baseline(slides, args.k, args.seeds)}
    aligns = {"none": None, "centre": "centre", "matched": "matched"}
    scores = {name: [] for name in aligns}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        sc.tl.senca(slides, SencaConfig(epochs=args.epochs, seed=seed))
        for name, align in aligns.items():
            sc.tl.cluster(slides, k=args.k, align=align, seed=0)
            scores[name].append([sc.metrics.ari(a) for a in slides])
    for name, v in scores.items():
        rows[f"SENCA-st, align={name}"] = np.asarray(v)
    print(f"\nHER2ST cohort A1+B1+C1, pooled k={args.k}, {args.seeds} training seeds x {args.epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print("| method | " + " | ".join(SLIDES) + " | mean |")
    print("|---|" + "---|" * (len(SLIDES) + 1))
    for name, v in rows.items():
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(v.mean(0), v.std(0))]
        print(f"| {name} | " + " | ".join(cells) + f" | {v.mean():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
