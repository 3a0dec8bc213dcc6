"""Apply a registered SENCA-st model to new slides (no training): ``senca-platform predict --model models:/NAME@ALIAS``.

A prediction must preprocess a new slide exactly as the training cohort was preprocessed and put its spots in the
SAME regions. So a model version comes with its **model state** (``senca_platform.model_state``: gene panel, PCA
basis, preprocess settings, region model).

Per slide (in this process; no Ray needed): read + ``jobs.preprocess.prepare_slide`` with the training
``preprocess`` settings → subset to the shared panel and ``senca_core.pp.pca_project`` on the cohort basis → the
registered model's region readout (``senca_core.model.readout`` on the SencaModel inside the registered pyfunc, as
the pipeline's infer stage does) → regions with the region model → ``jobs.infer.summarise_slide`` (ARI/NMI when labels,
heterogeneity, micro-environment, markers, region map, ``slides/<slide>.h5ad``) → per-patient table.
For a slide of the training cohort this reproduces the training run's regions exactly (tested).

Outputs under ``--out``: ``predict_summary.json``, ``slides/<slide>.h5ad``, ``maps/<slide>_regions.png``,
``tables/patients.{parquet,csv}``, ``tables/slides.{parquet,csv}``, ``preprocess/``, ``infer/``; one MLflow run
(``senca.role=predict``, tags ``senca.model_name`` / ``senca.model_version`` / ``senca.training_run_id``, in the
training run's experiment unless ``--experiment``) with the tables, region maps and summary as artifacts.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._redact import redact_text
from .model_state import (ModelState, PredictError, assign_regions, attach_model_state, build_model_state,  # noqa: F401
                          load_state_dir, resolve_model_state)
from .registry import ModelRef, client, get_version, parse_model_uri, redact_uri

# ============================================================================================ slides spec
def load_slides(path: str | Path):
    """A slides file: ``patients:`` as in a cohort spec (readers, paths relative to the file, labels optional),
    plus optional ``name`` and ``output_dir``; a full cohort.yaml is accepted (only its patients are used).
    Errors name the field and the line (``SpecError``)."""
    from .spec import SpecError, SpecIssue, parse_yaml, validate_data

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(path, [SpecIssue("<file>", None, f"cannot read the slides file: {err.strerror or err}")]) \
            from None
    data, lines = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise SpecError(path, [SpecIssue("<root>", 1, "the slides file must be a mapping with 'patients:'")])
    explicit_out = "output_dir" in data
    data = dict(data)
    data.setdefault("name", path.stem.replace(" ", "_") or "predict")
    spec = validate_data(data, source=str(path), base_dir=path.resolve().parent, lines=lines)
    return spec, explicit_out


# ============================================================================================ predict
@dataclass
class PredictResult:
    summary: dict[str, Any]
    summary_path: Path
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)


def _project(prepared: Path, state: ModelState, out_path: Path) -> dict[str, Any]:
    """Subset a prepared slide to the shared panel (genes it lacks are left out: ``pca_project`` takes them at
    the basis mean) and project it on the cohort's PCA basis. Same result as ``jobs.preprocess.project_slide``
    for a slide that has every panel gene."""
    import anndata as ad
    from senca_core import pp

    from jobs._util import atomic_write_with

    adata = ad.read_h5ad(prepared)
    idx = adata.var_names.get_indexer(state.genes)
    present = idx >= 0
    adata = adata[:, idx[present]].copy()
    pp.pca_project(adata, state.pca_state)
    adata.uns.setdefault("senca", {})["gene_panel"] = {"n_genes": int(len(state.genes)), "shared": True,
                                                       "n_missing": int((~present).sum())}
    atomic_write_with(out_path, lambda tmp: adata.write_h5ad(tmp, compression=None))
    return {"n_missing_genes": int((~present).sum()), "n_genes": int(present.sum()),
            "hist_dim": int(adata.obsm["X_hist"].shape[1]) if "X_hist" in adata.obsm else 0}


def predict_cohort(model_uri: str, slides_path: str | Path, *, tracking_uri: str, output_dir: str | Path | None = None,
                   experiment: str | None = None, track: bool = True,
                   echo: Callable[[str], None] | None = None) -> PredictResult:
    """Apply the registered model ``model_uri`` to the slides of ``slides_path``; see the module docstring."""
    import mlflow
    import torch

    from jobs._util import atomic_write_json, atomic_write_with, error_text, short_traceback
    from jobs.infer import latent_path_of, summarise_slide
    from jobs.preprocess import read_and_prepare
    from senca_core.model import readout

    echo = echo or (lambda m: print(f"[senca-platform] {m}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    ref = parse_model_uri(model_uri)
    spec, explicit_out = load_slides(slides_path)
    mc = client(tracking_uri)
    mv = get_version(mc, tracking_uri, ref)
    name, version = mv.name, int(mv.version)
    out = Path(output_dir) if output_dir else (Path(spec.output_dir) if explicit_out
                                               else Path(slides_path).resolve().parent / "predict_out")
    out = out.resolve()
    if (out / "cohort_summary.json").exists():
        raise PredictError(f"{out} holds a training run (cohort_summary.json): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    echo(f"model {name} version {version} ({ref.uri}) from {redact_uri(tracking_uri)}")

    work = Path(tempfile.mkdtemp(prefix="senca-predict-"))
    try:
        import mlflow.artifacts

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                                 dst_path=str(work / "model"),
                                                                 tracking_uri=tracking_uri))
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pyfunc = mlflow.pyfunc.load_model(str(model_dir))
        except Exception as err:  # noqa: BLE001
            raise PredictError(f"cannot load {name} version {version}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from None
        net = getattr(pyfunc.unwrap_python_model(), "model", None)
        if net is None:
            raise PredictError(f"{name} version {version} is not a SENCA-st pyfunc (no .model inside)")
        state = resolve_model_state(mc, tracking_uri, mv, model_dir, work, echo)
        echo(f"model state: {state.source} (panel {len(state.genes)} genes, PCA {state.pca_state['n_comps']}, "
             f"{state.manifest['method']} k={state.manifest['k']})")
        if state.manifest.get("model_sha256") and (mv.tags or {}).get("senca.model_sha256") and \
                state.manifest["model_sha256"] != mv.tags["senca.model_sha256"]:
            raise PredictError("the model state was built for another model (sha256 differs from the version's)")
        n_expr, n_hist = int(getattr(net, "n_expr", 0)), int(getattr(net, "n_hist", 0))
        if n_expr and n_expr != int(state.pca_state["n_comps"]):
            raise PredictError(f"the model expects {n_expr} PCA components, the model state has "
                               f"{state.pca_state['n_comps']}")
        pp_cfg = dict(state.preprocess)
        categories = list(state.manifest["categories"])
        names = state.manifest.get("region_names")  # the training run's region names (None: an older state)

        torch.set_num_threads(1)  # as the pipeline's infer stage: bit-identical embeddings
        slides = []
        patients = {}
        for pid, s in spec.slides():
            d = s.model_dump(mode="json")
            entry = {"patient_id": pid, "slide_id": d.pop("id"), **d}
            slides.append(entry)
            patients[entry["slide_id"]] = pid
        status: dict[str, dict[str, Any]] = {}
        summaries = []
        for entry in slides:
            sid = entry["slide_id"]
            st = {"patient": entry["patient_id"], "slide": sid, "n_spots": 0, "n_regions": 0, "ari": None,
                  "nmi": None, "status": "ok", "error": None}
            status[sid] = st
            echo(f"slide {sid}: preprocess, project on the cohort basis, embed, regions, summaries")
            row = read_and_prepare({"slide": entry, "cfg": pp_cfg, "key": "predict",
                                    "out_path": str(out / "preprocess" / "prepared" / f"{sid}.h5ad")})
            if row["status"] != "ok":
                st.update(status="failed", stage="preprocess", error=row["error"])
                continue
            try:
                proj = _project(Path(row["path"]), state, out / "preprocess" / "slides" / f"{sid}.h5ad")
                if proj["n_missing_genes"]:
                    st.setdefault("warnings", []).append(
                        f"{proj['n_missing_genes']} of {len(state.genes)} panel genes absent (taken at the basis mean)")
                import anndata as ad

                adata = ad.read_h5ad(out / "preprocess" / "slides" / f"{sid}.h5ad")
                if "X_hist" in adata.obsm and n_hist and adata.obsm["X_hist"].shape[1] != n_hist:
                    raise PredictError(f"histology features have {adata.obsm['X_hist'].shape[1]} columns, the "
                                       f"model expects {n_hist} (same encoder / patch settings as training?)")
                if "X_hist" in adata.obsm and not n_hist:
                    del adata.obsm["X_hist"]  # the model has no image branch
                latent, Z = readout(net, adata)  # what the infer stage clusters (float32 as stored there)
                Z = Z.astype(np.float32)
                if not (np.isfinite(Z).all() and np.isfinite(latent).all()):
                    raise PredictError("the embedding has NaN/inf values")
                emb_path = out / "infer" / "embeddings" / f"{sid}.npy"
                atomic_write_with(emb_path, lambda tmp, Z=Z: np.save(open(tmp, "wb"), Z))
                atomic_write_with(latent_path_of(emb_path), lambda tmp, z=latent: np.save(open(tmp, "wb"), z))
                labels = assign_regions(state.region_model, Z, np.asarray(adata.obsm["spatial_neighbors"]))
                reg_path = out / "infer" / "regions" / f"{sid}.npy"
                atomic_write_with(reg_path, lambda tmp, labels=labels: np.save(open(tmp, "wb"), labels))
                del adata
            except Exception as err:  # noqa: BLE001 - this slide's failure, recorded
                st.update(status="failed", stage="predict", error=error_text(err, sid),
                          traceback=short_traceback(err))
                continue
            summ = summarise_slide({"slide_id": sid, "patient_id": entry["patient_id"],
                                    "path": str(out / "preprocess" / "slides" / f"{sid}.h5ad"),
                                    "emb_path": str(emb_path), "region_path": str(reg_path),
                                    "categories": categories, "h5ad_path": str(out / "slides" / f"{sid}.h5ad"),
                                    "map_path": str(out / "maps" / f"{sid}_regions.png"),
                                    "markers_path": str(out / "infer" / "markers" / f"{sid}.csv"),
                                    "summary_file": str(out / "infer" / "summaries" / f"{sid}.json"),
                                    "region_names": names})
            summaries.append(summ)
            if summ["status"] != "ok":
                st.update(status="failed", stage="summarise", error=summ["error"])
                continue
            _stamp_h5ad(Path(summ["h5ad_path"]), {"name": name, "version": version, "uri": ref.uri,
                                                  "training_run_id": mv.run_id or ""})
            st.update(n_spots=summ["n_spots"], n_regions=summ["n_regions"], ari=summ["ari"], nmi=summ["nmi"],
                      silhouette=summ["silhouette"], h5ad=summ["h5ad_path"], region_map=summ["map_path"],
                      warnings=st.get("warnings", []) + (summ.get("warnings") or []))

        tables = {}
        if any(s["status"] == "ok" for s in summaries):  # the same tables as the run's infer stage
            from jobs._tables import write_tables

            tables = {k.removesuffix("_path"): v for k, v in
                      write_tables(out / "tables", summaries, categories, names).items()}
        rows = [{k: v for k, v in s.items() if k != "traceback"} for s in status.values()]
        n_failed = sum(r["status"] != "ok" for r in rows)
        aris = [r["ari"] for r in rows if r.get("ari") is not None]
        summary: dict[str, Any] = {
            "kind": "predict", "status": "ok" if not n_failed else ("failed" if n_failed == len(rows) else "partial"),
            "model": {"name": name, "version": version, "uri": ref.uri, "training_run_id": mv.run_id,
                      "cohort": state.manifest.get("cohort"), "model_state": state.source,
                      "training_regions_reproduced": state.manifest.get("reproduced")},
            "slides_spec": str(Path(slides_path).resolve()), "output_dir": str(out), "n_slides": len(rows),
            "n_failed": n_failed, "slides": rows, "k": state.manifest["k"], "categories": categories,
            "mean_ari": float(np.mean(aris)) if aris else None, "tables": tables, "mlflow_run_id": None,
            "seconds": None}
        if track:
            summary["mlflow_run_id"] = _log_predict_run(mc, mv, ref, summary, slides_path, experiment, echo)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        summary_path = atomic_write_json(out / "predict_summary.json", summary)
        if track and summary["mlflow_run_id"]:
            mc.log_artifact(summary["mlflow_run_id"], str(summary_path))
            mc.set_terminated(summary["mlflow_run_id"], "FAILED" if summary["status"] == "failed" else "FINISHED")
        for r in rows:
            if r["status"] != "ok":
                echo(f"FAILED slide {r['slide']} (patient {r['patient']}): {r['error']}")
        echo(f"summary: {summary_path} ({summary['status']}, {len(rows) - n_failed}/{len(rows)} slides ok)")
        return PredictResult(summary, Path(summary_path), 0 if not n_failed else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stamp_h5ad(path: Path, model: dict[str, Any]) -> None:
    """Record the model version that produced the regions in ``uns["senca"]["model"]``."""
    import anndata as ad

    from jobs._util import atomic_write_with

    a = ad.read_h5ad(path)
    a.uns.setdefault("senca", {})["model"] = {k: str(v) for k, v in model.items()}
    atomic_write_with(path, lambda tmp: a.write_h5ad(tmp, compression="gzip"))


def _log_predict_run(mc, mv, ref: ModelRef, summary: dict[str, Any], slides_path, experiment: str | None,
                     echo) -> str:
    """The prediction's own MLflow run, linked to the model version (tags + the logged model as an input)."""
    from mlflow.entities import Metric, Param

    if experiment:
        exp = mc.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else mc.create_experiment(experiment)
    elif mv.run_id:
        exp_id = mc.get_run(mv.run_id).info.experiment_id
    else:
        exp = mc.get_experiment_by_name(f"{mv.name}-predict")
        exp_id = exp.experiment_id if exp is not None else mc.create_experiment(f"{mv.name}-predict")
    run = mc.create_run(exp_id, run_name=f"predict-{mv.name}-v{mv.version}-{time.strftime('%Y%m%d-%H%M%S')}",
                        tags={"senca.role": "predict", "senca.model_name": mv.name,
                              "senca.model_version": str(mv.version), "senca.model_uri": ref.uri,
                              "senca.training_run_id": mv.run_id or "",
                              "senca.cohort": str(summary["model"].get("cohort") or ""),
                              "senca.status": summary["status"],
                              "mlflow.note.content": f"Regions of new slides with registered model "
                                                     f"{mv.name} version {mv.version} ({ref.uri})."})
    rid = run.info.run_id
    rows = summary["slides"]
    params = [Param("model_uri", ref.uri), Param("model_name", mv.name), Param("model_version", str(mv.version)),
              Param("n_slides", str(len(rows))), Param("slides", ",".join(r["slide"] for r in rows)[:6000]),
              Param("k", str(summary["k"])), Param("output_dir", summary["output_dir"])]
    now = int(time.time() * 1000)
    metrics = [Metric("n_slides_ok", len(rows) - summary["n_failed"], now, 0),
               Metric("n_slides_failed", summary["n_failed"], now, 0)]
    if summary.get("mean_ari") is not None:
        metrics.append(Metric("mean_ari", summary["mean_ari"], now, 0))
    for r in rows:
        for key in ("ari", "nmi", "silhouette"):
            if r.get(key) is not None:
                metrics.append(Metric(f"{key}_{r['slide']}", float(r[key]), now, 0))
        if r["status"] != "ok":
            mc.set_tag(rid, f"senca.error.{r['slide']}", (r.get("error") or "?")[:5000])
    mc.log_batch(rid, metrics=metrics, params=params)
    try:  # MLflow 3: show the model as this run's input
        from mlflow.entities import LoggedModelInput

        model_id = getattr(mv, "model_id", None) or (mv.source.split("/", 1)[1]
                                                      if str(mv.source).startswith("models:/m-") else None)
        if model_id:
            mc.log_inputs(rid, models=[LoggedModelInput(model_id=model_id)])
    except Exception:  # noqa: BLE001 - older servers: the tags are the link
        pass
    for key, path in summary["tables"].items():
        mc.log_artifact(rid, path, "tables")
    for r in rows:
        if r.get("region_map") and Path(r["region_map"]).exists():
            mc.log_artifact(rid, r["region_map"], "region_maps")
    with tempfile.TemporaryDirectory() as tmp:  # the YAML as written, comments and secrets removed
        copy = Path(tmp) / Path(slides_path).name
        copy.write_text(redact_text(Path(slides_path).read_text(encoding="utf-8-sig")))
        mc.log_artifact(rid, str(copy), "spec")
    echo(f"MLflow prediction run {rid}")
    return rid


__all__ = ["ModelState", "PredictError", "PredictResult", "assign_regions", "attach_model_state",
           "build_model_state", "load_slides", "load_state_dir", "predict_cohort",
           "resolve_model_state"]
