"""Does the histology carry signal, and does the model keep it? Balanced accuracy of the annotated classes predicted
(5-fold cross-validated logistic regression) from each representation of the sections that have an H&E image
(HER2ST A1, DLPFC 151673): the morphology features alone, the expression PCA, and SENCA-st's fused embedding z and
region readout, for the full model and its expression-only ablation.

    .venv/bin/python bench/bench_histology.py [--seeds 3]

A representation that keeps the histology's information scores at least what the morphology features score on the
classes histology can tell apart. Labels only score. Prints a markdown table; numbers are benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

from bench_regions import SHARED, fmt, load_section  # noqa: E402

import senca_core as sc  # noqa: E402
from senca_core.model import SencaConfig  # noqa: E402


def balanced_accuracy(X: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.isin(y, [c for c, n in zip(*np.unique(y, return_counts=True)) if n >= 5])
    X, y = X[keep], y[keep]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    pred = cross_val_predict(clf, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    return float(balanced_accuracy_score(y, pred))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sections", nargs="+", default=["A1", "DLPFC"])
    args = p.parse_args()
    if not (SHARED / "data" / "her2st").exists():
        print(f"(skipped: {SHARED / 'data'} not found)")
        return
    import torch

    torch.set_num_threads(1)
    rows = {}
    for name in args.sections:
        a = load_section(name)
        scored = a.obs["label_scored"].to_numpy(bool)
        y = a.obs["label"].astype(str).to_numpy()[scored]
        rows[(name, "morphology features (X_hist)")] = [balanced_accuracy(a.obsm["X_hist"][scored], y)]
        rows[(name, "expression PCA (X_pca)")] = [balanced_accuracy(a.obsm["X_pca"][scored], y)]
        both = np.hstack([a.obsm["X_pca"], a.obsm["X_hist"]])
        rows[(name, "concatenated [X_pca, X_hist]")] = [balanced_accuracy(both[scored], y)]
        for ablation in ("senca", "expr_only"):
            for seed in range(args.seeds):
                sc.tl.senca(a, SencaConfig(seed=seed).ablation(ablation))
                for rep, key in (("z", "X_senca_latent"), ("readout", "X_senca")):
                    rows.setdefault((name, f"{ablation}: {rep}"), []).append(
                        balanced_accuracy(np.asarray(a.obsm[key])[scored], y, seed))
            print(f"  {name} {ablation} done", file=sys.stderr, flush=True)
    print("\n## Balanced accuracy of the annotated classes (5-fold CV logistic regression; mean ± sd over seeds)")
    print("| representation | " + " | ".join(args.sections) + " |")
    print("|---|" + "---|" * len(args.sections))
    for rep in dict.fromkeys(r for _, r in rows):
        print(f"| {rep} | " + " | ".join(fmt(rows[(s, rep)]) if (s, rep) in rows else "" for s in args.sections)
              + " |")


if __name__ == "__main__":
    main()
