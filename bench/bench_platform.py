"""Benchmark: `senca-platform run` end to end against the same stages in-process (prints a table; not a test).

For every cohort, in one run, side by side:

- **CLI**: ``senca-platform run SPEC --fresh`` in a subprocess (embedded Ray, local MLflow store: everything a user
  pays, from the command to its exit), wall-clock from outside; the summary gives each stage's seconds and the
  fixed start-up (Ray start overlapped with the MLflow set-up, then the workers' imports).
- **in-process**: the same per-slide functions (``jobs.preprocess.read_and_prepare``, ``fit_shared_basis``,
  ``project_slide``), the same training loop (``jobs.train_loop.run_loop``, same epochs, same torch threads), the
  same inference and summaries (``jobs.infer``: embeddings, pooled regions, the cohort's region names and tumour
  sub-regions, per-slide h5ad, region maps, tables) in one process, without Ray and MLflow. Each row's in-process
  run is a fresh process of its own: its imports are loaded before the clock starts (as the CLI's workers load
  theirs in its start-up), its first calls are timed (as the CLI's are), whatever row ran before.

Ratio = (CLI end to end - fixed start-up) / in-process sum; target <= 1.3 on every row, start-up <= 8 s.
Peak worker RSS: the largest resident memory of any Ray worker (preprocess / train / infer tasks).
Synthetic rows are ``syn<slides>x<spots>``, trained ``--syn-epochs``; ``syn<slides>x<spots>e<epochs>`` trains
``epochs`` (``syn8x2000e200``: long enough for the plan's two DDP workers, ``training.min_spot_epochs_per_worker``).

    .venv/bin/python bench/bench_platform.py [--rows a1,her2st6,dlpfc,syn8x2000,syn8x2000e200,syn8x300,syn64x300]
        [--epochs N (default: the spec's training.epochs)] [--syn-epochs 20] [--out /tmp/senca_bench_platform]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SENCA_SHARED", REPO.parent / "shared"))
CLI = str(Path(sys.executable).with_name("senca-platform"))
HER2ST = SHARED / "data" / "her2st"
DLPFC = SHARED / "data" / "dlpfc" / "151673"
A1_SCALE = 2000 / 6954


# ------------------------------------------------------------------------------------------------ cohorts
def spec_default_epochs() -> int:
    """The spec's own ``training.epochs`` default, so the real rows train as a user's run does."""
    from senca_platform.spec.schema import TrainingSpec

    return int(TrainingSpec().epochs)


def _base(name: str, epochs: int, patients: list[dict], preprocess: dict | None = None) -> dict:
    return {"name": name, "output_dir": "results", "patients": patients,
            "preprocess": preprocess or {"n_pca": 30},
            "training": {"epochs": epochs, "num_workers": 2, "resources_per_worker": {"CPU": 1}, "seed": 0},
            "tuning": {"enabled": False}, "clustering": {"k": "auto"}}


def _her2st_slide(sid: str) -> dict:
    slide = {"id": sid, "reader": "legacy_st", "counts": str(HER2ST / "counts" / f"{sid}.tsv.gz"),
             "spots": str(HER2ST / "spots" / f"{sid}_selection.tsv")}
    if (HER2ST / "labels" / f"{sid}_labeled_coordinates.tsv").exists():
        slide["labels"] = str(HER2ST / "labels" / f"{sid}_labeled_coordinates.tsv")
    if sid == "A1":
        slide.update(image=str(HER2ST / "images" / "A1_HE_dark_2000px.png"), image_scale=A1_SCALE)
    elif (HER2ST / "images" / f"{sid}_HE.jpg").exists():
        slide.update(image=str(HER2ST / "images" / f"{sid}_HE.jpg"), image_scale=1.0)
    return slide


def cohort_spec(row: str, root: Path, epochs: int, syn_epochs: int) -> Path | None:
    """Write the row's spec under ``root/row`` (None: its data is not here)."""
    d = root / row
    d.mkdir(parents=True, exist_ok=True)
    if row == "a1":
        if not HER2ST.exists():
            return None
        spec = _base("bench-a1", epochs, [{"id": "A", "slides": [_her2st_slide("A1")]}])
    elif row == "her2st6":
        if not HER2ST.exists():
            return None
        spec = _base("bench-her2st6", epochs, [{"id": sid[0] + sid, "slides": [_her2st_slide(sid)]}
                                               for sid in ("A1", "B1", "C1", "B4", "C2", "C3")])
    elif row == "dlpfc":
        if not DLPFC.exists():
            return None
        spec = _base("bench-dlpfc", epochs, [{"id": "P151673", "slides": [
            {"id": "151673", "reader": "visium", "path": str(DLPFC), "labels": str(DLPFC / "labels.tsv")}]}])
    else:  # synthetic: syn<patients>x<spots>[e<epochs>]
        from senca_platform.demo import write_demo

        shape, _, own_epochs = row[3:].partition("e")
        n, spots = (int(v) for v in shape.split("x"))
        path = write_demo(d, n_patients=n, n_spots=spots, seed=0, epochs=int(own_epochs or syn_epochs), tuning=False)
        spec = yaml.safe_load(path.read_text())
        spec["name"] = f"bench-{row}"
        spec["training"]["resources_per_worker"] = {"CPU": 1}  # as the real rows: 2 workers x 1 CPU
    path = d / "cohort.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the CLI
def run_cli(spec: Path) -> dict:
    out = spec.parent / "results"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    proc = subprocess.run([CLI, "run", str(spec), "--fresh"], capture_output=True, text=True, cwd=spec.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{spec}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    s = json.loads((out / "cohort_summary.json").read_text())
    rss = [r.get("peak_rss_mb", 0.0) for r in _cache_rows(out)]
    history = json.loads((out / "train" / "history.json").read_text())
    rss += [h.get("peak_rss_mb", 0.0) for h in history]
    aris = [x["ari"] for x in s["slides"] if x.get("ari") is not None]
    return {"wall": wall, "stages": {k: v["seconds"] for k, v in s["stages"].items()}, "timing": s["timing"],
            "train": s["stages"].get("train", {}), "peak_worker_rss": max(rss + [0.0]),
            "ari": sum(aris) / len(aris) if aris else float("nan"), "n_spots": sum(x["n_spots"] for x in s["slides"])}


def _cache_rows(out: Path) -> list[dict]:
    rows = [json.loads(p.read_text())["outputs"] for p in (out / "cache" / "prepare").glob("*.json")]
    rows += json.loads((out / "cache" / "basis.json").read_text())["outputs"]["slides"]
    rows += json.loads((out / "cache" / "infer.json").read_text())["outputs"]["summaries"]
    return rows


# ------------------------------------------------------------------------------------------------ in-process
def in_process(spec_path: Path, threads: int) -> dict:
    """The CLI's stages in this process: same functions, same epochs and threads, same files; no Ray, no MLflow."""
    import numpy as np
    import pandas as pd

    from jobs import infer, preprocess
    from jobs.pipeline import _eval_cfg, _model_cfg
    from jobs.stage_model import _checkpoint_cfg
    from jobs.train_loop import run_loop
    from jobs.train_sessions import SoloSession
    from senca_platform.runner import build_plan
    from senca_platform.spec import load_spec

    import anndata, torch  # noqa: F401,E401 - imports are start-up here as in the CLI (its workers: jobs.warmup), not stage time
    from senca_core import pp, tl  # noqa: F401

    spec = load_spec(spec_path)
    out = spec_path.parent / "inprocess"
    if out.exists():
        shutil.rmtree(out)
    spec.output_dir = out
    plan = build_plan(spec, 2)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = [preprocess.read_and_prepare({"slide": s, "cfg": plan["preprocess"], "key": "-",
                                             "out_path": str(out / "prepared" / f"{s['slide_id']}.h5ad")})
                for s in plan["slides"]]
    assert all(r["status"] == "ok" for r in prepared), [r["error"] for r in prepared]
    state, genes = preprocess.fit_shared_basis([r["path"] for r in prepared], n_comps=plan["preprocess"]["n_pca"],
                                               seed=plan["training"]["seed"])
    state_file = preprocess.save_state(state, out / "pca_state.npz")
    np.save(out / "genes.npy", np.asarray(genes, dtype=str))
    final = {}
    for r in prepared:
        p = preprocess.project_slide({"slide_id": r["slide_id"], "prepared_path": r["path"],
                                      "state_file": str(state_file), "genes_file": str(out / "genes.npy"),
                                      "out_path": str(out / "slides_pp" / f"{r['slide_id']}.h5ad")})
        final[r["slide_id"]] = p["path"]
    times["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_hist = max(r["hist_dim"] for r in prepared)
    cfg = {"model": _model_cfg(plan), "overrides": {}, "slide_paths": list(final.values()),
           "n_expr": int(state["n_comps"]), "n_hist": n_hist, "eval": _eval_cfg(plan, None, 1),
           "threads": threads, "checkpoint": _checkpoint_cfg(plan["training"])}
    session = SoloSession(out / "train_run")
    run_loop(cfg, session)
    shutil.copy(session.checkpoints()[-1] / "model.pt", out / "model.pt")
    times["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = [{**infer.embed_slide({"slide_id": sid, "path": p, "model_path": str(out / "model.pt"),
                                  "emb_path": str(out / "emb" / f"{sid}.npy")}), "path": p}
            for sid, p in final.items()]
    regions = infer.cluster_cohort(rows, plan["clustering"], out / "regions")
    patients = {s["slide_id"]: s["patient_id"] for s in plan["slides"]}
    slims = infer.cohort_slims(rows, regions)  # the cohort's names and tumour sub-regions, as the CLI's infer stage
    names = infer.name_cohort_regions(rows, regions, slims)
    subregions = (infer.cohort_subregions(rows, regions, names, out / "subregions", slims)
                  if any(names["is_tumour"]) else None)
    summaries = [infer.summarise_slide({
        "slide_id": r["slide_id"], "patient_id": patients[r["slide_id"]], "path": r["path"],
        "emb_path": r["emb_path"], "region_path": regions["region_paths"][r["slide_id"]],
        "region_names": names, "subregion_path": (subregions or {}).get("paths", {}).get(r["slide_id"]),
        "categories": regions["categories"], "h5ad_path": str(out / "slides" / f"{r['slide_id']}.h5ad"),
        "map_path": str(out / "maps" / f"{r['slide_id']}.png"),
        "markers_path": str(out / "markers" / f"{r['slide_id']}.csv"),
        "summary_file": str(out / "summaries" / f"{r['slide_id']}.json")}) for r in rows]
    table = infer.patient_table(summaries, regions["categories"])
    (out / "tables").mkdir(exist_ok=True)
    table.to_parquet(out / "tables" / "patients.parquet", index=False)
    table.to_csv(out / "tables" / "patients.csv", index=False)
    pd.DataFrame([{k: v for k, v in s.items() if isinstance(v, (int, float, str))} for s in summaries]) \
        .to_csv(out / "tables" / "slides.csv", index=False)
    times["infer"] = time.perf_counter() - t0
    aris = [s["ari"] for s in summaries if s.get("ari") is not None]
    times["ari"] = float(np.mean(aris)) if aris else float("nan")
    return times


def in_fresh_process(spec_path: Path, threads: int) -> dict:
    """:func:`in_process` in a new Python process (``--in-process``): no row warms the next one's first calls."""
    proc = subprocess.run([sys.executable, __file__, "--in-process", str(spec_path), "--threads", str(threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec_path}: in-process exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _threads_of(cli: dict) -> int:
    """The torch threads the CLI's training used: the solo task's CPUs, else one per DDP worker."""
    return 2 if cli["train"].get("launcher") == "ray_task" else 1


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="a1,her2st6,dlpfc,syn8x2000,syn8x2000e200,syn8x300,syn64x300")
    ap.add_argument("--epochs", type=int, default=spec_default_epochs(),
                    help="epochs on the real sections (default: the spec's training.epochs default)")
    ap.add_argument("--syn-epochs", type=int, default=20, help="epochs on the synthetic cohorts")
    ap.add_argument("--out", type=Path, default=Path("/tmp/senca_bench_platform"))
    ap.add_argument("--in-process", type=Path, help=argparse.SUPPRESS)  # one row's in-process run (a subprocess)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.in_process:
        print(json.dumps(in_process(args.in_process, args.threads)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for row in args.rows.split(","):
        spec = cohort_spec(row, args.out, args.epochs, args.syn_epochs)
        if spec is None:
            print(f"[bench] {row}: skipped (no data under {SHARED})", file=sys.stderr)
            continue
        cli = run_cli(spec)
        local = in_fresh_process(spec, _threads_of(cli))
        results.append((row, spec, cli, local))
        print(f"[bench] {row}: cli {cli['wall']:.1f}s {cli['stages']} {cli['timing']}; in-process {local}",
              file=sys.stderr)
    print(f"\nsenca-platform run vs in-process stages (2 CPUs; real sections {args.epochs} epochs, synthetic "
          f"{args.syn_epochs}; tuning off; MLflow local sqlite)")
    head = ("cohort", "spots", "workers", "thr", "pre in/cli", "train in/cli", "infer in/cli", "in-proc",
            "e2e", "start-up", "ratio", "worker MB", "ARI in/cli")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row, spec, cli, local in results:
        t = cli["timing"]
        local_sum = local["preprocess"] + local["train"] + local["infer"]
        start = float(t.get("startup_s", 0.0))
        ratio = (cli["wall"] - start) / local_sum
        workers = f"{cli['train'].get('workers_used', '?')} ({cli['train'].get('launcher', '?')})"
        cells = [row, str(cli["n_spots"]), workers, str(_threads_of(cli))]
        cells += [f"{local[s]:.1f} / {cli['stages'].get(s, float('nan')):.1f}" for s in ("preprocess", "train", "infer")]
        cells += [f"{local_sum:.1f}", f"{cli['wall']:.1f}",
                  f"{start:.1f} (Ray {t.get('ray_start_s', 0):.1f}, MLflow {t.get('tracking_setup_s', 0):.1f})",
                  f"{ratio:.2f}", f"{cli['peak_worker_rss']:.0f}", f"{local['ari']:.3f} / {cli['ari']:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
