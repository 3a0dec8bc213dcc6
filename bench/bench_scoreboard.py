"""Issue 13's scoreboard: the default and every ablation retrained on today's code, cut at the annotated k and at
k auto, beside the model's own clustering without a model and the snapshot option (``model.snapshots: 3``), and
leave one section out over the settings.

    .venv/bin/python bench/bench_scoreboard.py [--seeds 10] [--dlpfc-seeds 6] [--sections A1 B1 C1 DLPFC]
        [--settings default float32 expr_only image_only concat one_hop separate_encoders no_hierarchy snapshots
         no_model]

One protocol for every row (docs/BENCHMARKS.md, "Scoreboard"): one torch thread; training seeds 0 .. n-1 with the
clustering seed equal to the training seed; the default cut (``tl.cluster``) at the annotated number of classes and
at k auto; ARI over the scored spots, mean ± population sd over the networks. ``no_model`` cuts the model's own input
(the expression PCA of the default genes) with the same clustering. On a section without an image the
expression-only ablation is the default itself ("="), and the image-only ablation does not apply.

Leave one section out: for each section, the setting with the highest mean ARI over the other sections (among the
settings that run on all of them, ``no_model`` and ``image_only`` left out), scored on the held-out one. The labels
only score here; nothing of this bench feeds a default. Prints markdown; one line per network on stderr as it goes.
About 1.5 hours on one core for everything (DLPFC 151673 is two thirds of it).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bench_regions import LABELLED_SECTIONS, fmt, load_section, n_classes, section_parser, shared_ready

import senca_core as sc
from senca_core.model import ABLATIONS, SencaConfig

#: the settings, each a change of the default model (``no_model``: no training at all)
SETTINGS: dict[str, dict | None] = {"default": {}, "float32": {"precision": "float32"},
                                    **{name: ABLATIONS[name] for name in ABLATIONS if name != "senca"},
                                    "snapshots": {"snapshots": 3}, "no_model": None}
#: settings that are the default itself where the section has no image, and those that need one
SAME_WITHOUT_IMAGE = {"expr_only"}
NEED_IMAGE = {"image_only"}


def one_network(a, setting: str, seed: int) -> dict:
    """Train (unless ``no_model``) and cut one network at the annotated k and at k auto."""
    changes = SETTINGS[setting]
    if changes is not None:
        sc.tl.senca(a, SencaConfig(seed=seed).replace(**changes))
    kw = {"use_rep": "X_pca"} if changes is None else {}
    sc.tl.cluster(a, n_classes(a), seed=seed, **kw)
    at_k = sc.metrics.ari(a, "region")
    k_auto = sc.tl.cluster(a, None, seed=seed, **kw)
    return {"ari": at_k, "ari_auto": sc.metrics.ari(a, "region"), "k_auto": int(k_auto)}


def measure(sections, settings, seeds_for) -> dict:
    """``{(setting, section): [per-network results]}``; '=' settings share the default's list."""
    results: dict = {}
    for name in sections:
        a = load_section(name)
        has_image = "X_hist" in a.obsm
        for setting in settings:
            if setting in NEED_IMAGE and not has_image:
                continue
            if setting in SAME_WITHOUT_IMAGE and not has_image:
                continue  # filled from the default below
            runs = []
            for seed in range(seeds_for(name)):
                t = time.perf_counter()
                runs.append(one_network(a, setting, seed))
                r = runs[-1]
                print(f"  {name:6s} {setting:18s} seed {seed}: ARI {r['ari']:.3f}, k auto {r['k_auto']} "
                      f"ARI {r['ari_auto']:.3f} ({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
            results[(setting, name)] = runs
        for setting in settings:
            if setting in SAME_WITHOUT_IMAGE and not has_image and ("default", name) in results:
                results[(setting, name)] = results[("default", name)]
    return results


def table(results, sections, settings) -> None:
    print("\n## Scoreboard: ARI at the annotated k (mean ± sd over networks); k auto: its mean ARI and the k chosen")
    print("| setting | " + " | ".join(sections) + " | mean | k auto: " + " | ".join(sections) + " |")
    print("|---|" + "---|" * (2 * len(sections) + 1))
    for setting in settings:
        cells, autos, means = [], [], []
        for name in sections:
            runs = results.get((setting, name))
            if not runs:
                cells.append("–")
                autos.append("–")
                continue
            same = setting in SAME_WITHOUT_IMAGE and runs is results.get(("default", name))
            cells.append("=" if same else fmt([r["ari"] for r in runs]))
            ks = [r["k_auto"] for r in runs]
            autos.append(f"{np.mean([r['ari_auto'] for r in runs]):.3f} (k {min(ks)}–{max(ks)})")
            means.append(np.mean([r["ari"] for r in runs]))
        mean = f"{np.mean(means):.3f}" if len(means) == len(sections) else "–"
        print(f"| {setting} | " + " | ".join(cells) + f" | {mean} | " + " | ".join(autos) + " |")


def leave_one_section_out(results, sections, settings) -> None:
    candidates = [s for s in settings if s not in NEED_IMAGE and SETTINGS[s] is not None
                  and all((s, name) in results for name in sections)]
    if len(sections) < 2 or not candidates:
        return
    mean = {(s, name): np.mean([r["ari"] for r in results[(s, name)]]) for s in candidates for name in sections}
    print(f"\n## Leave one section out over {', '.join(candidates)}")
    print("| held out | picked on the others (their mean) | its ARI there | the default's ARI there |\n|---|---|---|---|")
    held, default = [], []
    for name in sections:
        others = [o for o in sections if o != name]
        pick = max(candidates, key=lambda s: np.mean([mean[(s, o)] for o in others]))
        held.append(mean[(pick, name)])
        default.append(mean.get(("default", name), np.nan))
        print(f"| {name} | {pick} ({np.mean([mean[(pick, o)] for o in others]):.3f}) | {held[-1]:.3f} | "
              f"{default[-1]:.3f} |")
    print(f"| mean | | {np.mean(held):.3f} | {np.mean(default):.3f} |")


def main() -> None:
    p = section_parser(__doc__, seeds=10, **{"dlpfc-seeds": 6})
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    if not shared_ready():
        return
    unknown = sorted(set(args.sections) - set(LABELLED_SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; known: {LABELLED_SECTIONS}")
    seeds_for = lambda name: args.dlpfc_seeds if name == "DLPFC" else args.seeds  # noqa: E731
    results = measure(args.sections, args.settings, seeds_for)
    table(results, args.sections, args.settings)
    leave_one_section_out(results, args.sections, args.settings)


if __name__ == "__main__":
    main()
