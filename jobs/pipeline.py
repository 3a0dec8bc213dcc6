"""The driver: preprocess (Ray Data) → train (Ray Train) or tune (Ray Tune) → infer + summaries, with a cache.

``run_pipeline(plan, tracker=...)`` takes the resolved cohort spec as plain data (``senca_platform`` builds it;
this module never imports the control plane) and a tracker that receives each stage's results (the platform's
MLflow tracker; :class:`Tracker` here is the do-nothing default). Ray must already be initialised.

Outputs under ``plan["output_dir"]`` (every file written atomically):

- ``preprocess/prepared/<slide>.h5ad`` then ``preprocess/slides/<slide>.h5ad`` (shared panel + PCA basis),
  ``preprocess/pca_state.npz``, ``preprocess/genes.npy``
- ``train/model.pt`` + ``train/history.json`` (or ``tune/model.pt`` + ``tune/trials.json``)
- ``infer/embeddings/<slide>.npy``, ``infer/regions/<slide>.npy``, ``infer/summaries/<slide>.json``
- ``infer/region_names.json`` (``tl.name_regions``: one name, tissue label and colour per region for the run)
- ``slides/<slide>.h5ad`` (regions, their names + embedding), ``maps/<slide>_regions.png``,
  ``tables/{regions,composition,patients,slides,markers}.{parquet,csv}`` (``jobs._tables``; docs/OUTPUTS.md)
- ``cache/*.json``: the stage manifests (content hash of inputs + stage config → outputs), reused on re-run.

A slide that fails at any stage is recorded with its error and left out of the later stages; the cohort goes on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ._stage import INFER_VERSION, PIPELINE_VERSION, PipelineError, StageClock, Tracker, _model_cfg  # noqa: F401
from ._cache import StageCache, file_fingerprint, stable_hash
from ._files import atomic_write_with, is_output_dir, is_temp_of, unlink_all
from ._report_data import agreement_metrics, k_auto_line, restarts_line
from .infer import cluster_args
from .stage_model import _eval_cfg, check_slide_cpus, resolve_metric, stage_train, stage_tune  # noqa: F401

_SLIDE_FILES = ("counts", "spots", "labels", "image", "path")


#: how the infer stage's regions are cut (spec ``clustering.cut_by``), for its progress line
_REGIONS_BY = {"cohort": "pooled regions", "slide": "regions per slide matched across the cohort"}
#: the output directory's folders the pipeline (and the control plane's tracking journal) write into
OUTPUT_DIRS = ("preprocess", "train", "tune", "infer", "slides", "maps", "tables", "cache", "tracking")


def partial_files(out: str | Path) -> list[Path]:
    """Temp files of atomic writes (``_files.TEMP_NAME``) under the output directory (its top level and
    :data:`OUTPUT_DIRS`; not ``ray/`` nor ``mlartifacts/``, which Ray and MLflow own): what a killed run leaves
    half-written. Nothing at all in a folder without the run's marker (``_files.OUTPUT_MARKER``): a folder no run
    has claimed holds nothing of ours."""
    out = Path(out)
    if not is_output_dir(out):
        return []
    found = [p for p in out.glob(".*") if p.is_file() and is_temp_of(p.name)]
    for name in OUTPUT_DIRS:
        if (out / name).is_dir():
            found += [p for p in (out / name).rglob(".*") if p.is_file() and is_temp_of(p.name)]
    return sorted(found)


def sweep_partial_files(out: str | Path) -> list[Path]:
    """Delete :func:`partial_files` (a run killed between writing a temp file and renaming it never cleans up).
    Only while no other process writes into ``out`` (the runner holds the output directory's lock)."""
    return unlink_all(partial_files(out))


#: preprocessing settings that say how the work runs, never what it computes: not part of a slide's cache key
_EXECUTION_ONLY = ("cpus_per_slide", "concurrency")


def _slide_key(slide: dict[str, Any], pp_cfg: dict[str, Any]) -> str:
    files = {name: file_fingerprint(slide.get(name)) for name in _SLIDE_FILES if slide.get(name)}
    if pp_cfg.get("encoder_weights"):
        files["encoder_weights"] = file_fingerprint(pp_cfg["encoder_weights"])
    cfg = {k: v for k, v in pp_cfg.items() if k not in _EXECUTION_ONLY}
    return stable_hash({"v": PIPELINE_VERSION, "slide": slide, "files": files, "cfg": cfg})


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _default_concurrency(plan: dict[str, Any]) -> int | None:
    """The per-slide maps' task cap: the spec's ``preprocess.concurrency``; unset, as many as the CPUs hold."""
    value = plan["preprocess"].get("concurrency")
    return None if value is None else int(value)


# ----------------------------------------------------------------------------------------------- stage 1
def stage_preprocess(plan: dict[str, Any], cache: StageCache, tracker: Tracker, status: dict[str, dict],
                     progress: bool) -> dict[str, Any]:
    from .preprocess import fit_shared_basis, project_slide, read_and_prepare, run_map, save_state

    import numpy as np

    out = Path(plan["output_dir"])
    pp_cfg = dict(plan["preprocess"])
    check_slide_cpus(plan, "preprocess", tracker)  # a task larger than any node: Ray Data would wait for ever
    clock = StageClock(tracker, "preprocess")
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
    info = {
        "status": "ok" if len(final) == len(plan["slides"]) else "partial",
        "cached": cached_basis and not results,
        **clock.times(),
        # n_pca: the number of components used (the data may allow fewer than asked), beside the request
        "params": {**{k: v for k, v in pp_cfg.items() if v is not None}, "n_pca": hit["n_comps"],
                   "n_pca_requested": pp_cfg["n_pca"]},
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


# ----------------------------------------------------------------------------------------------- stage 4
def stage_infer(plan: dict[str, Any], pre: dict[str, Any], model: dict[str, Any], cache: StageCache,
                tracker: Tracker, status: dict[str, dict], progress: bool) -> dict[str, Any]:
    import pandas as pd

    from ._tables import write_tables
    from ._files import atomic_write_json
    from .infer import (cluster_cohort, cohort_slims, cohort_subregions, embed_slide, name_cohort_regions,
                        patient_mixing_warning, summarise_slide)
    from .preprocess import run_map

    out = Path(plan["output_dir"])
    patients = {s["slide_id"]: s["patient_id"] for s in plan["slides"]}
    key = stable_hash({"v": PIPELINE_VERSION, "infer": INFER_VERSION, "pre": pre["key"],
                       "model": _sha256(model["model_path"]), "clustering": plan["clustering"]})
    clock = StageClock(tracker, "infer")
    hit = cache.get("infer", key)
    cached = hit is not None
    if hit is None:
        regions_by = _REGIONS_BY[cluster_args(plan["clustering"])["cut_by"]]
        tracker.progress(f"infer: embeddings, {regions_by} and summaries of {len(pre['paths'])} slide(s)")
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
        if regions.get("k_auto"):
            tracker.progress(f"infer: {k_auto_line(regions['k_auto'])}")
        if regions.get("restarts"):
            tracker.progress(f"infer: {restarts_line(regions['restarts'])}")
        mixing = patient_mixing_warning(regions, patients)
        cohort_warnings = [] if mixing is None else [mixing]
        for w in cohort_warnings:
            tracker.progress(f"infer: warning: {w}")
        try:  # one set of names / tissue labels / tumour flags for the run
            slims = cohort_slims(ok, regions)  # each slide's expression and embedding, read once for both steps
            names = name_cohort_regions(ok, regions, slims)
            atomic_write_json(out / "infer" / "region_names.json", names)
        except Exception as err:  # noqa: BLE001 - unnamed regions (ids only) rather than no result
            names = None
            tracker.progress(f"infer: regions left unnamed ({type(err).__name__}: {err})")
        subregions = None
        if names and any(names["is_tumour"]):
            try:  # the hierarchy's second level: tumour regions split where they hold two populations
                subregions = cohort_subregions(ok, regions, names, out / "infer" / "subregions", slims)
            except Exception as err:  # noqa: BLE001 - regions without sub-regions rather than no result
                tracker.progress(f"infer: tumour sub-regions not computed ({type(err).__name__}: {err})")
        rows = [{"slide_id": r["slide_id"], "patient_id": patients[r["slide_id"]], "path": r["path"],
                 "emb_path": r["emb_path"], "region_path": regions["region_paths"][r["slide_id"]],
                 "readout_blocks": r.get("readout_blocks"),
                 "categories": regions["categories"], "region_names": names,
                 "subregion_path": (subregions or {}).get("paths", {}).get(r["slide_id"]),
                 "h5ad_path": str(out / "slides" / f"{r['slide_id']}.h5ad"),
                 "map_path": str(out / "maps" / f"{r['slide_id']}_regions.png"),
                 "markers_path": str(out / "infer" / "markers" / f"{r['slide_id']}.csv"),
                 "summary_file": str(out / "infer" / "summaries" / f"{r['slide_id']}.json")} for r in ok]
        summaries = run_map(rows, summarise_slide, concurrency=conc, num_cpus=1.0, progress=progress)
        paths = write_tables(out / "tables", summaries, regions["categories"], names,
                             (subregions or {}).get("table"))
        hit = {"k": regions["k"], "k_auto": regions.get("k_auto"), "restarts": regions.get("restarts"),
               "categories": regions["categories"],
               "region_names": names, "summaries": summaries,
               "embed_failures": [r for r in embedded if r["status"] != "ok"], "warnings": cohort_warnings, **paths}
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
            **clock.times(),
            "params": {f"clustering.{k}": v for k, v in plan["clustering"].items()},
            "metrics": {"k": hit["k"], "mean_ari": sum(aris) / len(aris) if aris else None,
                        "k_auto_design_effect": (hit.get("k_auto") or {}).get("design_effect"),
                        **agreement_metrics(hit.get("restarts")),
                        **{f"ari_{s['slide_id']}": s["ari"] for s in ok if s["ari"] is not None},
                        **{f"nmi_{s['slide_id']}": s["nmi"] for s in ok if s["nmi"] is not None}},
            "patient_table": table, "tables": {k: v for k, v in hit.items() if k.endswith("_path")},
            "region_maps": [s["map_path"] for s in ok if s.get("map_path")],
            "slides": ok, "warnings": list(hit.get("warnings") or [])}
    tracker.stage("infer", info)
    return {"key": key, "k": hit["k"], "k_auto": hit.get("k_auto"), "restarts": hit.get("restarts"),
            "table": table, "info": info,
            "tables": info["tables"]}


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
        pre["n_spots"] = sum(int(status[s].get("n_spots") or 0) for s in pre["paths"])
        with_image = [sid for sid in pre["paths"] if status[sid].get("hist_dim")]
        result["example_slide"] = pre["paths"][(with_image or list(pre["paths"]))[0]]
        result["stages"]["preprocess"] = _brief(pre["info"])
        result["worker_peak_rss_mb"] = pre["worker_peak_rss_mb"]
        if plan["tuning"].get("enabled"):
            model = stage_tune(plan, pre, cache, tracker, status, progress=progress, resume=resume)
            result["stages"]["tune"] = _brief(model["info"])
            result["tuning"] = {"metric": model["metric"], "best_config": model["best"]["config"],
                                "best_objective": model["best"]["objective"], "best_trial": model["best"]["trial_id"],
                                "selection": model["selection"]}
        else:
            model = stage_train(plan, pre, cache, tracker, resume=resume)
            result["stages"]["train"] = _brief(model["info"])
        result["model_path"] = model["model_path"]
        result["history"] = model["history"]
        inf = stage_infer(plan, pre, model, cache, tracker, status, progress)
        result["stages"]["infer"] = _brief(inf["info"])
        result["k"], result["k_auto"], result["restarts"] = inf["k"], inf.get("k_auto"), inf.get("restarts")
        result["warnings"] = inf["info"]["warnings"]
        result["tables"] = inf["tables"]
    except PipelineError as err:
        result["error"] = str(err)
        for st in status.values():
            if st["status"] == "ok" and st.get("n_regions", 0) == 0:
                st.update(status="failed", stage=err.stage, error=f"not finished: {err}")
    result["slides"] = list(status.values())
    return result


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    brief = {"status": info["status"], "cached": bool(info["cached"]), "seconds": round(float(info["seconds"]), 3)}
    for k in ("workers_used", "launcher", "precision_used"):
        if k in (info.get("params") or {}):
            brief[k] = info["params"][k]
    if info.get("restarts"):  # training continued from a checkpoint after a fault: said in the summary
        brief.update({k: info[k] for k in ("restarts", "restarted_from_epochs", "restart_exact")})
    return brief
