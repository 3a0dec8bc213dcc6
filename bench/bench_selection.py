"""Which label-free criterion should choose a tuned model? Each candidate objective against ARI, over random
tuning configurations, on every labelled shared section (HER2ST A1, B1, C1, DLPFC 151673).

    .venv/bin/python bench/bench_selection.py [--configs 10] [--sections A1 B1 C1 DLPFC]

For ``--configs`` settings drawn at random (seed 7; the first is the default) SENCA-st is trained (seed 0) and
clustered at k = annotated classes; then each label-free criterion Tune can use is computed: held-out
reconstruction R² (``model.heldout_r2``, the default ``tuning.metric: auto``), the final training loss,
silhouette, partition stability (``metrics.stability``). Printed: the Spearman rank correlation of each criterion
with ARI per section, and the ARI of the configuration each criterion would pick, beside the average
configuration and the label-chosen oracle. Labels only score. Numbers are benchmarks, never assertions.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, __file__.rsplit("/", 1)[0])

from bench_regions import load_section, n_classes, section_parser, shared_ready  # noqa: E402

import senca_core as sc  # noqa: E402
from senca_core.model import SencaConfig, heldout_r2  # noqa: E402

CRITERIA = {"reconstruction": "held-out reconstruction R² (auto)", "loss": "training loss (lower)",
            "silhouette": "silhouette", "stability": "stability"}


def draw_configs(n: int) -> list[dict]:
    rng = np.random.default_rng(7)
    out = [{}]
    while len(out) < n:
        out.append({"lr": float(rng.choice([5e-4, 2e-3, 8e-3])), "w_hist": float(rng.choice([0.1, 0.5, 2.0])),
                    "mask_rate": float(rng.choice([0.1, 0.3, 0.5])), "hidden": int(rng.choice([64, 128, 256])),
                    "epochs": int(rng.choice([50, 100, 200, 400])), "w_neigh": float(rng.choice([0.0, 0.5, 2.0]))})
    return out


def main() -> None:
    args = section_parser(__doc__, configs=10).parse_args()
    if not shared_ready():
        return
    from scipy.stats import spearmanr

    configs = draw_configs(args.configs)
    table: dict[str, list[dict]] = {}
    for name in args.sections:
        a = load_section(name)
        k = n_classes(a)
        for i, c in enumerate(configs):
            model = sc.tl.senca(a, SencaConfig(seed=0).replace(**c))
            sc.tl.cluster(a, k, seed=0)
            row = {"ari": sc.metrics.ari(a), "reconstruction": heldout_r2(model, a),
                   "loss": -a.uns["senca"]["train_loss"], "silhouette": sc.metrics.silhouette(a),
                   "stability": sc.metrics.stability(a, k)}
            table.setdefault(name, []).append(row)
            print(f"  {name} config {i} {c}: " + ", ".join(f"{key} {v:.3f}" for key, v in row.items()),
                  file=sys.stderr, flush=True)
    print("\nconfigurations: " + "; ".join(f"{i}: {c or 'default'}" for i, c in enumerate(configs)))
    secs = args.sections
    print(f"\n## Label-free tuning criteria against ARI ({args.configs} configurations, seed 0)")
    print("| criterion | " + " | ".join(f"Spearman {s}" for s in secs) + " | "
          + " | ".join(f"ARI picked {s}" for s in secs) + " | mean picked |")
    print("|---|" + "---|" * (2 * len(secs) + 1))
    for key, label in CRITERIA.items():
        rho = [spearmanr([r["ari"] for r in table[s]], [r[key] for r in table[s]])[0] for s in secs]
        picked = [max(table[s], key=lambda r: r[key])["ari"] for s in secs]
        print(f"| {label} | " + " | ".join(f"{x:.2f}" for x in rho) + " | "
              + " | ".join(f"{x:.3f}" for x in picked) + f" | {np.mean(picked):.3f} |")
    for label, pick in (("average configuration", np.mean), ("best configuration by ARI (oracle)", np.max),
                        ("default configuration", lambda v: v[0])):
        vals = [pick([r["ari"] for r in table[s]]) for s in secs]
        print(f"| ({label}) |" + " |" * len(secs) + " " + " | ".join(f"{x:.3f}" for x in vals)
              + f" | {np.mean(vals):.3f} |")


if __name__ == "__main__":
    main()
