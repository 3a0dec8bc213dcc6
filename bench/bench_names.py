"""Named regions vs annotations: does ``tl.name_regions`` label regions the way pathologists / the ground truth do?

The in-process chain (read → ``pp.preprocess`` → ``tl.senca`` (default config, expression only) → ``tl.cluster``)
then ``tl.name_regions`` on the pooled region profile. Labels are used only to score, here, after naming.

1. synthetic: a 4 × 600-spot demo cohort (``senca_core.datasets.synthetic_slide``), k auto, then 7 and 8; are
   the two tumour clones (``tumour_A``, ``tumour_B``: same histology, different programme) separate regions, both
   flagged tumour?
2. HER2ST A1 + B1 + C1 pooled (one set of names), k = 6; per region the tissue label vs the majority annotation,
   and the share of cancer spots (``invasive cancer`` + ``cancer in situ``) in the tumour-flagged regions.
3. DLPFC 151673, k = 7; per region the label vs the majority layer; WM share of the white-matter region.

Usage: ``.venv/bin/python bench/bench_names.py [synthetic] [her2st] [dlpfc]`` (all by default).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import senca_core as sc
from senca_core.model import SencaConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
CANCER = ("invasive cancer", "cancer in situ")


def chain(adatas, k, seed=0):
    sc.pp.preprocess(adatas)
    sc.tl.senca(adatas, SencaConfig(seed=seed))
    sc.tl.cluster(adatas, k, seed=seed)
    t = time.perf_counter()
    names = sc.tl.name_regions(adatas)
    return names, time.perf_counter() - t


def versus(adatas, names, label_key="label") -> pd.DataFrame:
    """Per region: name, tissue, score, spots, majority annotation (scored spots) and its share."""
    obs = pd.concat([a.obs[["region", label_key] + (["label_scored"] if "label_scored" in a.obs else [])]
                     for a in adatas])
    if "label_scored" in obs:
        obs = obs[obs["label_scored"].astype(bool)]
    rows = []
    for _, n in names.iterrows():
        lab = obs.loc[obs["region"].astype(str) == n["region"], label_key].astype(str)
        vc = lab.value_counts(normalize=True)
        rows.append({"region": n["region"], "region_name": n["region_name"], "tissue": n["tissue"],
                     "score": n["tissue_score"], "tumour": bool(n["is_tumour"]), "spots": int(n["n_spots"]),
                     "majority": vc.index[0] if len(vc) else "-", "share": float(vc.iloc[0]) if len(vc) else np.nan,
                     "cancer_share": float(lab.isin(CANCER).mean()) if len(lab) else np.nan,
                     "WM_share": float((lab == "WM").mean()) if len(lab) else np.nan})
    return pd.DataFrame(rows)


def synthetic():
    from senca_core.datasets import synthetic_slide

    adatas = []
    for s in range(4):
        a = synthetic_slide(600, seed=s)
        a.uns["senca"].update(slide_id=f"S{s}", patient_id=f"P{s}")
        adatas.append(a)
    names, secs = chain(adatas, None)
    tab = versus(adatas, names, "true_region")
    print(f"\n## synthetic 4 x 600 spots, k = {len(names)} (naming {secs:.3f} s)")
    print(tab.drop(columns=["cancer_share", "WM_share"]).to_string(index=False, float_format="%.2f"))
    clones(adatas, names)
    subregions(adatas, names, "true_region")
    for k in (7, 8):  # the same embedding, more regions
        sc.tl.cluster(adatas, k, seed=0)
        names = sc.tl.name_regions(adatas)
        print(f"k = {k}:")
        clones(adatas, names)


def clones(adatas, names):
    obs = pd.concat([a.obs[["region", "true_region"]] for a in adatas])
    for clone in ("tumour_A", "tumour_B"):
        r = obs.loc[obs["true_region"] == clone, "region"].astype(str).value_counts()
        row = names.set_index("region").loc[r.index[0]]
        print(f"{clone}: majority region {r.index[0]} {row['region_name']} ({r.iloc[0] / r.sum():.0%} of its spots), "
              f"flagged tumour: {bool(row['is_tumour'])}")


def subregions(adatas, names, truth: str) -> None:
    """The hierarchy's second level (``tl.tumour_subregions``) and what each sub-region holds (scoring only)."""
    table = sc.tl.tumour_subregions(adatas, [r for r, t in zip(names["region"], names["is_tumour"]) if t])
    print("tumour sub-regions:")
    print(table.to_string(index=False, float_format="%.2f"))
    obs = pd.concat([a.obs[["tumour_subregion", truth]] for a in adatas]).dropna(subset=["tumour_subregion"])
    print(pd.crosstab(obs["tumour_subregion"].astype(str), obs[truth].astype(str)).to_string())


def her2st():
    root = SHARED / "data" / "her2st"
    adatas = [sc.io.read_her2st(root, s) for s in ("A1", "B1", "C1")]
    names, secs = chain(adatas, 6)
    tab = versus(adatas, names)
    print(f"\n## HER2ST A1+B1+C1, k = 6 (naming {secs:.3f} s)")
    print(tab.drop(columns=["WM_share"]).to_string(index=False, float_format="%.2f"))
    t = tab[tab["tumour"]]
    obs = pd.concat([a.obs for a in adatas])
    obs = obs[obs["label_scored"].astype(bool)]
    in_t = obs["region"].astype(str).isin(t["region"])
    cancer = obs["label"].astype(str).isin(CANCER)
    print(f"tumour-flagged regions {list(t['region'])}: {cancer[in_t].mean():.0%} of their scored spots are cancer; "
          f"they hold {in_t[cancer].mean():.0%} of the cancer spots")
    subregions(adatas, names, "label")


def dlpfc():
    d = SHARED / "data" / "dlpfc" / "151673"
    a = sc.io.read_visium(d, labels=d / "labels.tsv")
    names, secs = chain([a], 7)
    tab = versus([a], names)
    print(f"\n## DLPFC 151673, k = 7 (naming {secs:.3f} s)")
    print(tab.drop(columns=["cancer_share"]).to_string(index=False, float_format="%.2f"))
    obs = a.obs[a.obs["label_scored"].astype(bool)]
    for _, n in names.iterrows():
        if n["tissue"] != "unassigned":
            lab = obs.loc[obs["region"].astype(str) == n["region"], "label"].astype(str)
            print(f"region {n['region']} labelled {n['tissue']}: majority {lab.value_counts().index[0]} "
                  f"({lab.value_counts(normalize=True).iloc[0]:.0%})")


def main() -> None:
    warnings.filterwarnings("ignore")
    which = sys.argv[1:] or ["synthetic", "her2st", "dlpfc"]
    for name in which:
        t = time.perf_counter()
        globals()[name]()
        print(f"({name}: {time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
