"""Benchmark of the cohort platform (prints a table; not a test).

1. Overhead: a synthetic cohort of 8 patients x 2,000 spots run end to end through Ray (Ray Data preprocess,
   Ray Train with 2 DDP workers, Ray Data inference; MLflow off) against the in-process sum of the same stages
   (the same per-slide functions called in a loop, ``senca_core.model.fit`` for training). Target: Ray <= 1.3x.
2. Memory: the peak resident memory of each Ray worker process (``ru_maxrss``, taken inside every task; worker
   processes are reused across tasks, so it is the worker's peak over all the slides it processed) with 8 and
   with 32 slides. Target: no growth (bounded by one slide, not by the cohort).

    .venv/bin/python bench/bench_platform.py [--spots 2000] [--epochs 20] [--big 32] [--out /tmp/senca_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


def make_cohort(root: Path, n: int, spots: int, epochs: int, workers: int) -> Path:
    from senca_platform.demo import write_demo

    return write_demo(root / f"cohort_{n}", n_patients=n, n_spots=spots, seed=0, epochs=epochs, tuning=False,
                      num_workers=workers)


def in_process(spec_path: Path, out: Path) -> dict[str, float]:
    """The same stages without Ray: per-slide functions in a loop, then ``senca_core.model.fit`` (one process)."""
    import anndata as ad
    import numpy as np
    import torch
    from senca_core.model import SencaConfig, fit, save_model

    from jobs import infer, preprocess
    from jobs.pipeline import _model_cfg
    from senca_platform.runner import build_plan
    from senca_platform.spec import load_spec

    torch.set_num_threads(2)
    spec = load_spec(spec_path)
    spec.output_dir = out
    plan = build_plan(spec, 2)
    if out.exists():
        shutil.rmtree(out)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = [preprocess.read_and_prepare({"slide": s, "cfg": plan["preprocess"], "key": "-",
                                             "out_path": str(out / "prepared" / f"{s['slide_id']}.h5ad")})
                for s in plan["slides"]]
    assert all(r["status"] == "ok" for r in prepared), prepared
    state, genes = preprocess.fit_shared_basis([r["path"] for r in prepared], n_comps=plan["preprocess"]["n_pca"])
    state_file = preprocess.save_state(state, out / "pca_state.npz")
    np.save(out / "genes.npy", np.asarray(genes, dtype=str))
    final = {}
    for r in prepared:
        p = preprocess.project_slide({"slide_id": r["slide_id"], "prepared_path": r["path"],
                                      "state_file": str(state_file), "genes_file": str(out / "genes.npy"),
                                      "out_path": str(out / "slides" / f"{r['slide_id']}.h5ad")})
        final[r["slide_id"]] = p["path"]
    times["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    adatas = [ad.read_h5ad(p) for p in final.values()]
    model, _ = fit(adatas, SencaConfig.from_dict(_model_cfg(plan)))
    save_model(model, out / "model.pt")
    times["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = []
    for sid, p in final.items():
        r = infer.embed_slide({"slide_id": sid, "path": p, "model_path": str(out / "model.pt"),
                               "emb_path": str(out / "emb" / f"{sid}.npy")})
        rows.append({**r, "path": p})
    regions = infer.cluster_cohort(rows, plan["clustering"], out / "regions")
    patients = {s["slide_id"]: s["patient_id"] for s in plan["slides"]}
    summaries = [infer.summarise_slide({
        "slide_id": r["slide_id"], "patient_id": patients[r["slide_id"]], "path": r["path"],
        "emb_path": r["emb_path"], "region_path": regions["region_paths"][r["slide_id"]],
        "categories": regions["categories"], "h5ad_path": str(out / "final" / f"{r['slide_id']}.h5ad"),
        "map_path": str(out / "maps" / f"{r['slide_id']}.png"),
        "summary_file": str(out / "summaries" / f"{r['slide_id']}.json")}) for r in rows]
    infer.patient_table(summaries, regions["categories"])
    times["infer"] = time.perf_counter() - t0
    times["ari_mean"] = float(np.mean([s["ari"] for s in summaries if s["ari"] is not None]))
    return times


def with_ray(spec_path: Path) -> dict[str, object]:
    """One fresh embedded Ray per cohort size (fresh worker processes: peaks are not carried over)."""
    import numpy as np
    import ray

    from senca_platform.runner import run_cohort
    from senca_platform.spec import load_spec

    t_init = time.perf_counter()
    from senca_platform.runner import start_local_ray

    start_local_ray(2, log_to_driver=False, logging_level="ERROR")
    init_s = time.perf_counter() - t_init
    try:
        t0 = time.perf_counter()
        result = run_cohort(load_spec(spec_path), fresh=True, progress=False, echo=lambda m: None, track=False)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    s = result.summary
    assert result.exit_code == 0, json.dumps(s, indent=1)[:3000]
    out = Path(s["output_dir"])
    pre_rows = json.loads((out / "cache" / "basis.json").read_text())["outputs"]["slides"]
    prep = [json.loads(p.read_text())["outputs"] for p in sorted((out / "cache" / "prepare").glob("*.json"))]
    inf = json.loads((out / "cache" / "infer.json").read_text())["outputs"]["summaries"]
    history = json.loads((out / "train" / "history.json").read_text())
    task = lambda rows: max(r.get("task_peak_rss_mb", float("nan")) for r in rows)  # noqa: E731
    return {
        "wall": wall,
        "ray_init": init_s,
        "prep_task": task(prep), "project_task": task(pre_rows), "infer_task": task(inf),
        "stages": {k: v["seconds"] for k, v in s["stages"].items()},
        "prep_peak": max(r["peak_rss_mb"] for r in prep),
        "project_peak": max(r["peak_rss_mb"] for r in pre_rows),
        "infer_peak": max(r["peak_rss_mb"] for r in inf),
        "train_peak": max(h.get("peak_rss_mb", float("nan")) for h in history),
        "ari_mean": float(np.mean([x["ari"] for x in s["slides"] if x["ari"] is not None])),
        "n_slides": s["n_slides"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spots", type=int, default=2000)
    ap.add_argument("--small", type=int, default=8)
    ap.add_argument("--big", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/senca_bench"))
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the Ray runs (no in-process baseline)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    small = make_cohort(args.out, args.small, args.spots, args.epochs, args.workers)
    big = None if args.skip_big else make_cohort(args.out, args.big, args.spots, args.epochs, args.workers)
    print(f"[bench] cohorts generated in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    local = None if args.memory_only else in_process(small, args.out / "inprocess")
    print(f"[bench] in-process done: {local}", file=sys.stderr)

    r_small = with_ray(small)
    print(f"[bench] ray {args.small}: {r_small}", file=sys.stderr)
    r_big = with_ray(big) if big else None
    if r_big:
        print(f"[bench] ray {args.big}: {r_big}", file=sys.stderr)

    print()
    if local is None:
        local = {"preprocess": float("nan"), "train": float("nan"), "infer": float("nan"), "ari_mean": float("nan")}
    local_sum = local["preprocess"] + local["train"] + local["infer"]
    ray_sum = sum(r_small["stages"].values())
    print(f"SENCA-st platform bench: {args.small} patients x {args.spots} spots, {args.epochs} epochs, "
          f"{args.workers} Train workers, 2 CPUs (embedded Ray), MLflow off")
    print(f"{'stage':<12}{'in-process s':>14}{'Ray s':>10}{'ratio':>8}")
    for stage in ("preprocess", "train", "infer"):
        lv, rv = local[stage], r_small["stages"].get(stage, float("nan"))
        print(f"{stage:<12}{lv:>14.1f}{rv:>10.1f}{rv / lv:>8.2f}")
    print(f"{'sum':<12}{local_sum:>14.1f}{ray_sum:>10.1f}{ray_sum / local_sum:>8.2f}")
    e2e = r_small["wall"] + r_small["ray_init"]
    print(f"{'end-to-end':<12}{'':>14}{e2e:>10.1f}{e2e / local_sum:>8.2f}"
          f"   (incl. Ray start {r_small['ray_init']:.1f}s and driver work; target <= 1.30)")
    print(f"mean ARI: in-process {local['ari_mean']:.3f}, Ray {r_small['ari_mean']:.3f}")
    print()
    if r_big:
        print(f"peak RSS (MiB)                       {args.small:>3} slides  {args.big:>3} slides  growth")
        for key, name in (("prep_task", "preprocess read+hist+pp, per task"),
                          ("prep_peak", "preprocess read+hist+pp, per worker"),
                          ("project_task", "preprocess project, per task"),
                          ("project_peak", "preprocess project, per worker"),
                          ("infer_task", "infer summaries, per task"),
                          ("infer_peak", "infer summaries, per worker"),
                          ("train_peak", "train, rank-0 worker")):
            a, b = r_small[key], r_big[key]
            print(f"{name:<37}{a:>10.0f}{b:>11.0f}{b / a:>8.2f}x")
        print(f"end-to-end wall: {r_small['wall']:.0f}s ({args.small} slides), {r_big['wall']:.0f}s ({args.big} slides)")


if __name__ == "__main__":
    main()
