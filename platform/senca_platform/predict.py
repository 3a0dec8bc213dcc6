"""Apply a registered SENCA-st model to new slides (no training): ``senca-platform predict --model models:/NAME@ALIAS``.

A prediction must preprocess a new slide exactly as the training cohort was preprocessed and put its spots in the
SAME regions. So a model version comes with its **model state** (``senca_platform.model_state``: gene panel, PCA
basis, preprocess settings, region model).

This module resolves the version, its pyfunc and its model state, hands them to the prediction stage
(``jobs.stage_predict``: the run's own per-slide functions, in this process; no Ray needed) and records the
result. For a slide of the training cohort this reproduces the training run's regions exactly (tested).

Outputs under ``--out``: ``predict_summary.json``, ``slides/<slide>.h5ad``, ``maps/<slide>_regions.png``,
``tables/patients.{parquet,csv}``, ``tables/slides.{parquet,csv}``, ``preprocess/``, ``infer/``; one MLflow run
(``senca.role=predict``, tags ``senca.model_name`` / ``senca.model_version`` / ``senca.training_run_id``, in the
training run's experiment unless ``--experiment``) with the tables, region maps and summary as artifacts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from jobs.stage_predict import Fitted, stage_predict

from ._redact import redact_text
from .model_state import (ModelState, PredictError, attach_model_state, build_model_state,  # noqa: F401
                          load_state_dir, resolve_model_state)
from .registry import ModelRef, client, get_version, parse_model_uri, redact_uri
from .runner import CohortResult
from .spec import slide_entries


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
#: what predict returns: a run's result (summary, its path, the exit code)
PredictResult = CohortResult


def _model_file(model_dir: Path) -> Path | None:
    """The SENCA-st model file in a downloaded pyfunc: its ``model`` artifact (``MLmodel``), what the pyfunc's
    ``load_context`` loads. None when there is none."""
    from mlflow.models import Model

    artifacts = Model.load(str(model_dir)).flavors.get("python_function", {}).get("artifacts") or {}
    rel = (artifacts.get("model") or {}).get("path")
    return model_dir / rel if rel and (model_dir / rel).is_file() else None


def _claim_out(out, cohort: str | None = None, force: bool = False):
    """``--out`` as ``run`` treats it (``outdir``): ``""`` refused; with ``cohort``, the folder claimed (a new,
    empty or marked one; any other non-empty folder only with ``--force-out``, nothing in it deleted). A refusal
    is :class:`RunNotStarted` (one line, exit 3)."""
    from .outdir import OutputDirError, check_out_arg, claim_output_dir
    from .runner import RunNotStarted

    try:
        if cohort is None:
            return check_out_arg(out)
        return claim_output_dir(out, cohort=cohort, force=force)
    except OutputDirError as err:
        raise RunNotStarted(str(err)) from None


def predict_cohort(model_uri: str, slides_path: str | Path, *, tracking_uri: str, output_dir: str | Path | None = None,
                   experiment: str | None = None, track: bool = True,
                   echo: Callable[[str], None] | None = None, force_out: bool = False) -> PredictResult:
    """Apply the registered model ``model_uri`` to the slides of ``slides_path``; see the module docstring."""
    import mlflow

    from jobs._files import atomic_write_json
    from jobs._say import say

    echo = echo or say
    t0 = time.perf_counter()
    _claim_out(output_dir)  # --out "": refused before anything is looked up
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
    out = _claim_out(out, spec.name, force_out)
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
        categories = list(state.manifest["categories"])
        names = state.manifest.get("region_names")  # the training run's region names (None: an older state)

        model_file = _model_file(model_dir)
        if model_file is None:
            raise PredictError(f"{name} version {version} is not a SENCA-st pyfunc (no model artifact)")
        fitted = Fitted(genes=state.genes, pca_state=state.pca_state, preprocess=dict(state.preprocess),
                        region_model=state.region_model, categories=categories, region_names=names,
                        model_file=model_file, n_hist=n_hist)
        done = stage_predict(slide_entries(spec), fitted, out, say=echo,
                             stamp={"name": name, "version": version, "uri": ref.uri,
                                    "training_run_id": mv.run_id or ""})
        rows, tables = done["rows"], done["tables"]
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


def _log_predict_run(mc, mv, ref: ModelRef, summary: dict[str, Any], slides_path, experiment: str | None,
                     echo) -> str:
    """The prediction's own MLflow run, linked to the model version (tags + the logged model as an input)."""
    from jobs._report_data import agreement_metrics
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
        if r.get("restarts"):  # the slide's own cut from the fit's clustering seeds (jobs.stage_predict)
            metrics += [Metric(name, value, now, 0)
                        for name, value in agreement_metrics({"slides": {r["slide"]: r["restarts"]}}).items()]
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


__all__ = ["ModelState", "PredictError", "PredictResult", "attach_model_state",
           "build_model_state", "load_slides", "load_state_dir", "predict_cohort",
           "resolve_model_state"]
