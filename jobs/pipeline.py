"""The driver: preprocess (Ray Data) → train (Ray Train) or tune (Ray Tune) → infer + summaries, with a cache.

``run_pipeline(plan, tracker=...)`` takes the resolved cohort spec as plain data (``senca_platform`` builds it;
this module never imports the control plane) and a tracker that receives each stage's results (the platform's
MLflow tracker; :class:`Tracker` here is the do-nothing default). Ray must already be initialised.

Outputs under ``plan["output_dir"]`` (every file written atomically):

- ``preprocess/prepared/<slide>.h5ad`` then ``preprocess/slides/<slide>.h5ad`` (shared panel + PCA basis),
  ``preprocess/pca_state.npz``, ``preprocess/genes.npy``
- ``train/model.pt`` + ``train/history.json`` (or ``tune/model.pt`` + ``tune/trials.json``)
- ``infer/embeddings/<slide>.npy``, ``infer/regions/<slide>.npy``, ``infer/summaries/<slide>.json``
- ``slides/<slide>.h5ad`` (regions + embedding), ``maps/<slide>_regions.png``,
  ``tables/patients.{parquet,csv}``, ``tables/slides.{parquet,csv}``
- ``cache/*.json``: the stage manifests (content hash of inputs + stage config → outputs), reused on re-run.

A slide that fails at any stage is recorded with its error and left out of the later stages; the cohort goes on.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ._util import StageCache, atomic_write_json, atomic_write_with, clean_float, file_fingerprint, is_temp_of, \
    stable_hash, unlink_all

#: bump when a stage's outputs change meaning (invalidates every cache entry)
PIPELINE_VERSION = 2  # 2: infer clusters the region readout, slides aligned
_SLIDE_FILES = ("counts", "spots", "labels", "image", "path")


class Tracker:
    """Receives the pipeline's results as it goes; the base class ignores them (no tracking)."""

    def stage(self, name: str, info: dict[str, Any]) -> None:  # noqa: D401 - an event
        """A stage finished: ``info`` has status, cached, seconds, params, metrics and stage-specific data
        (``history`` per epoch, ``trials``, ``slides``, ``artifacts``)."""

    def progress(self, message: str) -> None:
        """A short human-readable progress line."""


class PipelineError(RuntimeError):
    """The cohort cannot go on (no slide left, training failed); names the stage."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage {stage!r}: {message}")


#: the output directory's folders the pipeline (and the control plane's tracking journal) write into
OUTPUT_DIRS = ("preprocess", "train", "tune", "infer", "slides", "maps", "tables", "cache", "tracking")


def partial_files(out: str | Path) -> list[Path]:
    """Temp files of atomic writes (``_util.TEMP_NAME``) under the output directory (its top level and
    :data:`OUTPUT_DIRS`; not ``ray/`` nor ``mlartifacts/``, which Ray and MLflow own): what a killed run leaves
    half-written."""
    out = Path(out)
    found = [p for p in out.glob(".*") if p.is_file() and is_temp_of(p.name)]
    for name in OUTPUT_DIRS:
        if (out / name).is_dir():
            found += [p for p in (out / name).rglob(".*") if p.is_file() and is_temp_of(p.name)]
    return sorted(found)


def sweep_partial_files(out: str | Path) -> list[Path]:
    """Delete :func:`partial_files` (a run killed between writing a temp file and renaming it never cleans up).
    Only while no other process writes into ``out`` (the runner holds the output directory's lock)."""
    return unlink_all(partial_files(out))


def _slide_key(slide: dict[str, Any], pp_cfg: dict[str, Any]) -> str:
    files = {name: file_fingerprint(slide.get(name)) for name in _SLIDE_FILES if slide.get(name)}
    if pp_cfg.get("encoder_weights"):
        files["encoder_weights"] = file_fingerprint(pp_cfg["encoder_weights"])
    return stable_hash({"v": PIPELINE_VERSION, "slide": slide, "files": files, "cfg": pp_cfg})


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _default_concurrency(plan: dict[str, Any]) -> int:
    return int(plan["preprocess"].get("concurrency") or plan.get("num_cpus") or 1)


def _model_cfg(plan: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    t = plan["training"]
    return dict(plan.get("model") or {}, epochs=int(epochs or t["epochs"]), seed=int(t["seed"]),
                device="cuda" if t.get("use_gpu") else "cpu")


# ----------------------------------------------------------------------------------------------- stage 1
def stage_preprocess(plan: dict[str, Any], cache: StageCache, tracker: Tracker, status: dict[str, dict],
                     progress: bool) -> dict[str, Any]:
    from .preprocess import fit_shared_basis, project_slide, read_and_prepare, run_map, save_state

    import numpy as np

    out = Path(plan["output_dir"])
    pp_cfg = dict(plan["preprocess"])
    t0 = time.perf_counter()
    prepared_rows, todo = [], []
    for slide in plan["slides"]:
        sid = slide["slide_id"]
        key = _slide_key(slide, pp_cfg)
        hit = cache.get(f"prepare/{sid}", key)
        if hit is not None:
            prepared_rows.append(dict(hit, cached=True))
        else:
            todo.append({"slide": slide, "cfg": pp_cfg, "key": key, "cache_root": str(cache.root),
                         "out_path": str(out / "preprocess" / "prepared" / f"{sid}.h5ad")})
    tracker.progress(f"preprocess: {len(todo)} slide(s) to read ({len(prepared_rows)} cached)")
    results = run_map(todo, read_and_prepare, concurrency=_default_concurrency(plan),
                      num_cpus=float(pp_cfg.get("cpus_per_slide", 1.0)), progress=progress)
    for r in results:  # each finished slide's cache entry is written by its own task (``cache_root``)
        r["cached"] = False
        prepared_rows.append(r)
    order = {s["slide_id"]: i for i, s in enumerate(plan["slides"])}
    prepared_rows.sort(key=lambda r: order[r["slide_id"]])
    for r in prepared_rows:
        st = status[r["slide_id"]]
        st.update(n_spots=r.get("n_spots", 0), has_labels=r.get("has_labels", False), hist_dim=r.get("hist_dim", 0))
        if r["status"] != "ok":
            st.update(status="failed", stage="preprocess", error=r["error"], traceback=r.get("traceback"))
    ok = [r for r in prepared_rows if r["status"] == "ok"]
    if not ok:
        raise PipelineError("preprocess", "no slide could be read: " + "; ".join(
            r["error"] or "?" for r in prepared_rows))

    # shared gene panel + PCA basis (driver), then projection (Ray Data)
    basis_key = stable_hash({"v": PIPELINE_VERSION, "slides": [r["key"] for r in ok],
                             "n_pca": pp_cfg["n_pca"], "seed": plan["training"]["seed"]})
    hit = cache.get("basis", basis_key)
    cached_basis = hit is not None
    if hit is None:
        tracker.progress(f"preprocess: shared gene panel + PCA basis over {len(ok)} slide(s)")
        state, genes = fit_shared_basis([r["path"] for r in ok], n_comps=int(pp_cfg["n_pca"]),
                                        seed=int(plan["training"]["seed"]))
        state_file = save_state(state, out / "preprocess" / "pca_state.npz")
        genes_file = atomic_write_with(out / "preprocess" / "genes.npy",
                                       lambda tmp: np.save(open(tmp, "wb"), np.asarray(genes, dtype=str)))
        rows = [{"slide_id": r["slide_id"], "prepared_path": r["path"], "state_file": str(state_file),
                 "genes_file": str(genes_file), "out_path": str(out / "preprocess" / "slides" / f"{r['slide_id']}.h5ad")}
                for r in ok]
        projected = run_map(rows, project_slide, concurrency=_default_concurrency(plan),
                            num_cpus=float(pp_cfg.get("cpus_per_slide", 1.0)), progress=progress)
        hit = {"state_file": str(state_file), "genes_file": str(genes_file), "n_genes": len(genes),
               "n_comps": int(state["n_comps"]), "variance_ratio": float(np.sum(state["variance_ratio"])),
               "n_selected_genes": int(len(state["genes"])), "slides": projected}
        if all(p["status"] == "ok" for p in projected):
            cache.put("basis", basis_key, hit)
    for p in hit["slides"]:
        if p["status"] != "ok":
            status[p["slide_id"]].update(status="failed", stage="preprocess", error=p["error"],
                                         traceback=p.get("traceback"))
    final = {p["slide_id"]: p["path"] for p in hit["slides"] if p["status"] == "ok"}
    if not final:
        raise PipelineError("preprocess", "no slide could be projected on the shared basis")
    seconds = time.perf_counter() - t0
    info = {
        "status": "ok" if len(final) == len(plan["slides"]) else "partial",
        "cached": cached_basis and not results,
        "seconds": seconds,
        "params": {k: v for k, v in pp_cfg.items() if v is not None},
        "metrics": {"n_slides_ok": len(final), "n_slides_failed": len(plan["slides"]) - len(final),
                    "n_shared_genes": hit["n_genes"], "n_pca": hit["n_comps"],
                    "pca_variance_ratio": hit["variance_ratio"],
                    "max_worker_peak_rss_mb": max([r.get("peak_rss_mb", 0.0) for r in results] + [0.0]),
                    "max_task_peak_rss_mb": max([r.get("task_peak_rss_mb", 0.0) for r in results] + [0.0])},
        "slides": [{k: r.get(k) for k in ("slide_id", "patient_id", "status", "error", "n_spots", "n_genes",
                                          "hist_dim", "seconds", "peak_rss_mb", "task_peak_rss_mb", "cached")}
                   for r in prepared_rows],
    }
    tracker.stage("preprocess", info)
    return {"key": basis_key, "paths": final, "n_expr": hit["n_comps"], "info": info,
            "worker_peak_rss_mb": [r.get("peak_rss_mb", 0.0) for r in results]}


# ----------------------------------------------------------------------------------------------- stages 2/3
def _eval_cfg(plan: dict[str, Any], metric: str | None, every: int) -> dict[str, Any]:
    c = plan["clustering"]
    return {"metric": metric, "every": every, "k": c.get("k"), "method": c.get("method", "gmm"),
            "refine": c.get("refine", True), "align": c.get("align", "matched"), "seed": c.get("seed", 0)}


def resolve_metric(plan: dict[str, Any], status: dict[str, dict]) -> str:
    metric = plan["tuning"].get("metric", "auto")
    if metric != "auto":
        return metric
    return "ari" if any(s.get("has_labels") and s["status"] == "ok" for s in status.values()) else "silhouette"


def stage_train(plan: dict[str, Any], pre: dict[str, Any], cache: StageCache, tracker: Tracker, *,
                resume: bool, overrides: dict[str, Any] | None = None, stage: str = "train") -> dict[str, Any]:
    from .train import run_training

    out = Path(plan["output_dir"])
    t = plan["training"]
    paths = list(pre["paths"].values())
    cfg = {"model": _model_cfg(plan), "overrides": dict(overrides or {}), "slide_paths": paths,
           "n_expr": pre["n_expr"], "n_hist": pre["n_hist"], "eval": _eval_cfg(plan, None, 1), "threads": 1}
    key = stable_hash({"v": PIPELINE_VERSION, "pre": pre["key"], "cfg": {k: v for k, v in cfg.items()
                                                                         if k != "slide_paths"},
                       "scaling": {k: t[k] for k in ("num_workers", "use_gpu", "resources_per_worker")}})
    t0 = time.perf_counter()
    hit = cache.get(stage, key)
    cached = hit is not None
    if hit is None:
        tracker.progress(f"{stage}: Ray Train, {t['num_workers']} worker(s), {cfg['model']['epochs']} epochs, "
                         f"{len(paths)} slide(s)")
        if resume:
            _check_train_snapshot(out / "ray" / "train" / f"{stage}-{key[:12]}", tracker)
        try:
            res = run_training(cfg, out_dir=out / stage, name=f"{stage}-{key[:12]}",
                               storage_path=out / "ray" / "train", num_workers=int(t["num_workers"]),
                               use_gpu=bool(t.get("use_gpu")), resources_per_worker=t.get("resources_per_worker"),
                               max_failures=int(t.get("max_failures", 1)), resume=resume)
        except Exception as err:  # noqa: BLE001 - a failed fit stops the cohort, with the reason
            raise PipelineError(stage, f"{type(err).__name__}: {err}") from err
        hit = {"model_path": res["model_path"], "history_file": str(out / stage / "history.json"),
               "final": {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))}}
        cache.put(stage, key, hit)
    history = json.loads(Path(hit["history_file"]).read_text())
    info = {"status": "ok", "cached": cached, "seconds": time.perf_counter() - t0,
            "params": {**{f"model.{k}": v for k, v in {**cfg["model"], **cfg["overrides"]}.items()},
                       "num_workers": t["num_workers"], "use_gpu": t.get("use_gpu", False),
                       "resources_per_worker": json.dumps(t.get("resources_per_worker")),
                       "max_failures": t.get("max_failures", 1), "n_slides": len(paths)},
            "metrics": {"final_loss": clean_float(history[-1].get("loss")) if history else None,
                        "epochs": len(history)},
            "history": history, "model_path": hit["model_path"]}
    tracker.stage(stage, info)
    return {"key": key, "model_path": hit["model_path"], "history": history, "info": info}


def _check_train_snapshot(run_dir: Path, tracker: Tracker) -> None:
    """Before resuming a Ray Train run: its ``checkpoint_manager_snapshot.json`` (Ray writes it in place, not
    atomically) must be whole, and name a checkpoint that exists; a driver killed while Ray wrote it leaves it cut
    off, and Ray Train would fail on it. Then it is removed: training starts over (the checkpoints stay)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        name = latest.get("checkpoint_dir_name")
        if name is None or (run_dir / name / "model.pt").exists():
            if name is not None:
                tracker.progress(f"train: resuming from the checkpoint {name} of the interrupted run")
            return
    except (OSError, ValueError, AttributeError):
        pass
    tracker.progress(f"train: the interrupted run's checkpoint index {snapshot} is incomplete: training starts over")
    snapshot.unlink(missing_ok=True)


def stage_tune(plan: dict[str, Any], pre: dict[str, Any], cache: StageCache, tracker: Tracker,
               status: dict[str, dict], *, progress: bool, resume: bool) -> dict[str, Any]:
    from ._util import atomic_write_bytes
    from .train import read_checkpoint
    from .tune import run_tuning

    out = Path(plan["output_dir"])
    t, tuning = plan["training"], plan["tuning"]
    metric = resolve_metric(plan, status)
    epochs = int(tuning.get("epochs") or t["epochs"])
    paths = list(pre["paths"].values())
    cfg = {"model": _model_cfg(plan, epochs), "slide_paths": paths, "n_expr": pre["n_expr"],
           "n_hist": pre["n_hist"], "eval": _eval_cfg(plan, metric, int(tuning.get("eval_every", 1))),
           "threads": 1}
    key = stable_hash({"v": PIPELINE_VERSION, "pre": pre["key"],
                       "cfg": {k: v for k, v in cfg.items() if k != "slide_paths"}, "tuning": tuning,
                       "scaling": {k: t[k] for k in ("num_workers", "use_gpu", "resources_per_worker")}})
    t0 = time.perf_counter()
    hit = cache.get("tune", key)
    cached = hit is not None
    if hit is None:
        tracker.progress(f"tune: Ray Tune, {tuning['num_samples']} trial(s) x {epochs} epochs, metric {metric}")
        try:
            res = run_tuning(cfg, tuning, storage_path=out / "ray" / "tune", num_workers=int(t["num_workers"]),
                             use_gpu=bool(t.get("use_gpu")), resources_per_worker=t.get("resources_per_worker"),
                             max_failures=int(t.get("max_failures", 1)), progress=progress)
        except Exception as err:  # noqa: BLE001
            raise PipelineError("tune", f"{type(err).__name__}: {err}") from err
        best = res["best"]
        model_file, _ = read_checkpoint(best["checkpoint_path"])
        atomic_write_bytes(out / "tune" / "model.pt", Path(model_file).read_bytes())
        trials_file = atomic_write_json(out / "tune" / "trials.json", res)
        hit = {"model_path": str(out / "tune" / "model.pt"), "trials_file": str(trials_file)}
        cache.put("tune", key, hit)
    res = json.loads(Path(hit["trials_file"]).read_text())
    best = res["best"]
    info = {"status": "ok", "cached": cached, "seconds": time.perf_counter() - t0,
            "params": {"metric": metric, "mode": res["mode"], "num_samples": tuning["num_samples"],
                       "scheduler": tuning.get("scheduler", "asha"), "epochs_per_trial": epochs,
                       "search_space": json.dumps(tuning["search_space"]), "keep": tuning.get("keep", "checkpoint")},
            "metrics": {"best_objective": best["objective"], "n_trials": len(res["trials"]),
                        "n_trials_failed": sum(tr["status"] != "ok" for tr in res["trials"])},
            "trials": res["trials"], "best": best, "model_path": hit["model_path"]}
    tracker.stage("tune", info)
    result = {"key": key, "model_path": hit["model_path"], "best": best, "metric": metric, "info": info,
              "history": best["history"]}
    if tuning.get("keep", "checkpoint") == "retrain":
        trained = stage_train(plan, pre, cache, tracker, resume=resume, overrides=best["config"], stage="train")
        result.update(model_path=trained["model_path"], key=trained["key"], history=trained["history"])
    return result


# ----------------------------------------------------------------------------------------------- stage 4
def stage_infer(plan: dict[str, Any], pre: dict[str, Any], model: dict[str, Any], cache: StageCache,
                tracker: Tracker, status: dict[str, dict], progress: bool) -> dict[str, Any]:
    import pandas as pd

    from .infer import cluster_cohort, embed_slide, patient_table, summarise_slide
    from .preprocess import run_map

    out = Path(plan["output_dir"])
    patients = {s["slide_id"]: s["patient_id"] for s in plan["slides"]}
    key = stable_hash({"v": PIPELINE_VERSION, "pre": pre["key"], "model": _sha256(model["model_path"]),
                       "clustering": plan["clustering"]})
    t0 = time.perf_counter()
    hit = cache.get("infer", key)
    cached = hit is not None
    if hit is None:
        tracker.progress(f"infer: embeddings, pooled regions and summaries of {len(pre['paths'])} slide(s)")
        conc = _default_concurrency(plan)
        rows = [{"slide_id": sid, "path": p, "model_path": model["model_path"],
                 "emb_path": str(out / "infer" / "embeddings" / f"{sid}.npy")} for sid, p in pre["paths"].items()]
        embedded = run_map(rows, embed_slide, concurrency=conc, num_cpus=1.0, progress=progress)
        ok = []
        for r in embedded:
            if r["status"] == "ok":
                ok.append({**r, "path": pre["paths"][r["slide_id"]]})
            else:
                status[r["slide_id"]].update(status="failed", stage="infer", error=r["error"],
                                             traceback=r.get("traceback"))
        if not ok:
            raise PipelineError("infer", "no slide could be embedded")
        regions = cluster_cohort(ok, plan["clustering"], out / "infer" / "regions")
        rows = [{"slide_id": r["slide_id"], "patient_id": patients[r["slide_id"]], "path": r["path"],
                 "emb_path": r["emb_path"], "region_path": regions["region_paths"][r["slide_id"]],
                 "categories": regions["categories"], "h5ad_path": str(out / "slides" / f"{r['slide_id']}.h5ad"),
                 "map_path": str(out / "maps" / f"{r['slide_id']}_regions.png"),
                 "markers_path": str(out / "infer" / "markers" / f"{r['slide_id']}.csv"),
                 "summary_file": str(out / "infer" / "summaries" / f"{r['slide_id']}.json")} for r in ok]
        summaries = run_map(rows, summarise_slide, concurrency=conc, num_cpus=1.0, progress=progress)
        table = patient_table(summaries, regions["categories"])
        tables = out / "tables"
        tables.mkdir(parents=True, exist_ok=True)
        slides_df = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in s.items()
                                   if k not in ("traceback", "microenvironment", "markers")} for s in summaries])
        marker_files = [s["markers_path"] for s in summaries if s.get("markers_path")]
        markers_df = pd.concat([pd.read_csv(f) for f in marker_files], ignore_index=True) if marker_files \
            else pd.DataFrame()
        paths = {}
        for name, df in (("patients", table), ("slides", slides_df), ("markers", markers_df)):
            paths[f"{name}_parquet_path"] = str(atomic_write_with(tables / f"{name}.parquet",
                                                                  lambda tmp, df=df: df.to_parquet(tmp, index=False)))
            paths[f"{name}_csv_path"] = str(atomic_write_with(tables / f"{name}.csv",
                                                              lambda tmp, df=df: df.to_csv(tmp, index=False)))
        hit = {"k": regions["k"], "categories": regions["categories"], "summaries": summaries,
               "embed_failures": [r for r in embedded if r["status"] != "ok"], **paths}
        if all(s["status"] == "ok" for s in summaries) and not hit["embed_failures"]:
            cache.put("infer", key, hit)
    for r in hit.get("embed_failures", []):
        status[r["slide_id"]].update(status="failed", stage="infer", error=r["error"], traceback=r.get("traceback"))
    for s in hit["summaries"]:
        st = status[s["slide_id"]]
        if s["status"] != "ok":
            st.update(status="failed", stage="infer", error=s["error"], traceback=s.get("traceback"))
            continue
        st.update(n_spots=s["n_spots"], n_regions=s["n_regions"], ari=s["ari"], nmi=s["nmi"],
                  silhouette=s["silhouette"], h5ad=s["h5ad_path"], region_map=s["map_path"],
                  warnings=s.get("warnings") or [])
    table = pd.read_parquet(hit["patients_parquet_path"])
    ok = [s for s in hit["summaries"] if s["status"] == "ok"]
    aris = [s["ari"] for s in ok if s["ari"] is not None]
    info = {"status": "ok" if len(ok) == len(pre["paths"]) else "partial", "cached": cached,
            "seconds": time.perf_counter() - t0,
            "params": {f"clustering.{k}": v for k, v in plan["clustering"].items()},
            "metrics": {"k": hit["k"], "mean_ari": sum(aris) / len(aris) if aris else None,
                        **{f"ari_{s['slide_id']}": s["ari"] for s in ok if s["ari"] is not None},
                        **{f"nmi_{s['slide_id']}": s["nmi"] for s in ok if s["nmi"] is not None}},
            "patient_table": table, "tables": {k: v for k, v in hit.items() if k.endswith("_path")},
            "region_maps": [s["map_path"] for s in ok if s.get("map_path")],
            "slides": ok}
    tracker.stage("infer", info)
    return {"key": key, "k": hit["k"], "table": table, "info": info, "tables": info["tables"]}


# ----------------------------------------------------------------------------------------------- the driver
def run_pipeline(plan: dict[str, Any], *, tracker: Tracker | None = None, fresh: bool = False,
                 resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every stage of the cohort (Ray must be initialised). Never raises for a slide's problem.

    Returns ``{"slides": [...], "stages": {...}, "k", "model_path", "example_slide", "tuning", "error"}`` where each
    slide row is ``{patient, slide, n_spots, n_regions, ari, nmi, status, error}`` (+ paths when finished) and
    ``error`` is a cohort-level failure (a stage that could not run at all) or None.
    """
    tracker = tracker or Tracker()
    out = Path(plan["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out / "cache", fresh=fresh)
    status = {s["slide_id"]: {"patient": s["patient_id"], "slide": s["slide_id"], "n_spots": 0, "n_regions": 0,
                              "ari": None, "nmi": None, "status": "ok", "error": None}
              for s in plan["slides"]}
    result: dict[str, Any] = {"stages": {}, "error": None, "model_path": None, "tuning": None, "k": None,
                              "example_slide": None, "tables": {}}
    try:
        pre = stage_preprocess(plan, cache, tracker, status, progress)
        use_hist = (plan.get("model") or {}).get("use_hist", True)
        pre["n_hist"] = max((status[s].get("hist_dim", 0) for s in pre["paths"]), default=0) if use_hist else 0
        with_image = [sid for sid in pre["paths"] if status[sid].get("hist_dim")]
        result["example_slide"] = pre["paths"][(with_image or list(pre["paths"]))[0]]
        result["stages"]["preprocess"] = _brief(pre["info"])
        result["worker_peak_rss_mb"] = pre["worker_peak_rss_mb"]
        if plan["tuning"].get("enabled"):
            model = stage_tune(plan, pre, cache, tracker, status, progress=progress, resume=resume)
            result["stages"]["tune"] = _brief(model["info"])
            result["tuning"] = {"metric": model["metric"], "best_config": model["best"]["config"],
                                "best_objective": model["best"]["objective"], "best_trial": model["best"]["trial_id"]}
        else:
            model = stage_train(plan, pre, cache, tracker, resume=resume)
            result["stages"]["train"] = _brief(model["info"])
        result["model_path"] = model["model_path"]
        result["history"] = model["history"]
        inf = stage_infer(plan, pre, model, cache, tracker, status, progress)
        result["stages"]["infer"] = _brief(inf["info"])
        result["k"] = inf["k"]
        result["tables"] = inf["tables"]
    except PipelineError as err:
        result["error"] = str(err)
        for st in status.values():
            if st["status"] == "ok" and st.get("n_regions", 0) == 0:
                st.update(status="failed", stage=err.stage, error=f"not finished: {err}")
    result["slides"] = list(status.values())
    return result


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    return {"status": info["status"], "cached": bool(info["cached"]), "seconds": round(float(info["seconds"]), 3)}
