"""Browse the MLflow registry and the cohort runs: what ``senca-platform models …`` and ``runs …`` print.

Every function takes the tracking URI explicitly (``resolve_tracking_uri``: the ``--tracking-uri`` option, else
``MLFLOW_TRACKING_URI``); the registry lives at the same URI. Nothing here writes except :func:`promote_model`
(one alias). Problems (no such model / version / alias / run, a server that does not answer) raise
:class:`RegistryError` with one clear line; the CLI prints it without a traceback.

What a cohort run looks like in MLflow (written by ``senca_platform.tracking``): a parent run tagged
``senca.role=parent`` + ``senca.cohort=<name>``, its resolved spec under ``spec/``, per-patient tables under
``tables/`` (``patients.{json,parquet,csv}``), the model (pyfunc) registered under the spec's model name with an
alias; ``model_state/`` (gene panel, PCA basis, region model; see ``senca_platform.predict``) once attached.
Prediction runs (``senca-platform predict``) are tagged ``senca.role=predict`` and name their model version.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ._redact import redact_uri  # noqa: F401 - re-exported

TRACKING_ENV = "MLFLOW_TRACKING_URI"
ROLE_TAG = "senca.role"


class RegistryError(RuntimeError):
    """A registry / tracking problem, as one line for the user (no traceback)."""


def _quiet_mlflow() -> None:
    """Fail fast against a server that is down (MLflow's default retries take minutes), no progress bars."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def resolve_tracking_uri(uri: str | None = None, *, fallback: str | None = None) -> str:
    """``uri`` (the ``--tracking-uri`` option), else ``$MLFLOW_TRACKING_URI``, else ``fallback``; else an error."""
    uri = uri or os.environ.get(TRACKING_ENV) or fallback
    if not uri:
        raise RegistryError("no MLflow tracking URI: pass --tracking-uri http://HOST:5000 (or sqlite:///path/mlflow.db)"
                            f" or set {TRACKING_ENV}")
    return uri


def client(uri: str):
    """An ``MlflowClient`` on ``uri`` for both tracking and registry."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _explain(err: BaseException, uri: str, what: str) -> RegistryError:
    """One line for an MLflow / connection exception."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    low = text.lower()
    if any(s in low for s in ("connection refused", "max retries exceeded", "failed to establish",
                              "name or service not known", "connectionerror", "timed out")):
        return RegistryError(f"cannot reach the MLflow tracking server at {redact_uri(uri)} ({what}): is it running?")
    if "resource_does_not_exist" in low or "not found" in low or "does not exist" in low:
        return RegistryError(f"{what}: not found in {redact_uri(uri)} ({text})")
    return RegistryError(f"{what}: {type(err).__name__}: {text[:500]}")


# ------------------------------------------------------------------------------------------------- models
@dataclass
class ModelRef:
    """A parsed model reference: ``NAME`` + at most one of ``version`` / ``alias``."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        if self.version:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}"


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME`` (latest version)."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([A-Za-z0-9_-]+)|/(\d+))?/?", uri.strip())
    if not m:
        raise RegistryError(f"not a registered-model URI: {uri!r} "
                            "(expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    return ModelRef(m.group(1), version=m.group(3), alias=m.group(2))


def get_version(mc, uri: str, ref: ModelRef):
    """The ``ModelVersion`` a reference points at (latest version when neither version nor alias is given)."""
    try:
        if ref.alias:
            return mc.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version:
            return mc.get_model_version(ref.name, str(ref.version))
        versions = mc.search_model_versions(f"name = '{ref.name}'")
    except Exception as err:  # noqa: BLE001 - MlflowException / requests errors → one line
        raise _explain(err, uri, f"model {ref.uri}") from None
    if not versions:
        raise RegistryError(f"model {ref.name!r}: no registered versions in {redact_uri(uri)}")
    return max(versions, key=lambda v: int(v.version))


def list_models(uri: str) -> list[dict[str, Any]]:
    """One row per registered model: name, number of versions, latest version, aliases, cohort, updated."""
    mc = client(uri)
    try:
        models = list(mc.search_registered_models(max_results=1000))
    except Exception as err:  # noqa: BLE001
        raise _explain(err, uri, "listing registered models") from None
    rows = []
    for m in sorted(models, key=lambda m: m.name):
        try:
            versions = list(mc.search_model_versions(f"name = '{m.name}'"))
        except Exception:  # noqa: BLE001 - still list the model
            versions = []
        latest = max(versions, key=lambda v: int(v.version)) if versions else None
        aliases = dict(getattr(m, "aliases", {}) or {})
        rows.append({"name": m.name, "n_versions": len(versions),
                     "latest_version": int(latest.version) if latest else None,
                     "aliases": {a: int(v) for a, v in sorted(aliases.items())},
                     "cohort": (latest.tags or {}).get("senca.cohort") if latest else None,
                     "updated": getattr(m, "last_updated_timestamp", None)})
    return rows


def _artifact_paths(mc, run_id: str, path: str | None = None) -> list[str]:
    try:
        return [a.path for a in mc.list_artifacts(run_id, path)]
    except Exception:  # noqa: BLE001
        return []


def summary_links(mc, run) -> dict[str, str]:
    """Artifact URIs of the per-patient summary table (``tables/patients.*``) of a run, plus the run's UI path."""
    links: dict[str, str] = {}
    root = run.info.artifact_uri.rstrip("/")
    for path in _artifact_paths(mc, run.info.run_id, "tables"):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("patients."):
            links[name] = f"{root}/{path}"
            links[f"runs:/{name}"] = f"runs:/{run.info.run_id}/{path}"
    return links


def show_model(uri: str, name: str, *, version: str | int | None = None, alias: str | None = None) -> dict[str, Any]:
    """A model version with what it was trained on: metrics, params, the cohort (patients / slides), the
    per-patient summary table's artifact links, the aliases, whether its preprocessing state is attached, and
    the prediction runs made with it."""
    if version is not None and alias is not None:
        raise RegistryError("give --version or --alias, not both")
    mc = client(uri)
    ref = ModelRef(name, version=str(version) if version is not None else None, alias=alias)
    mv = get_version(mc, uri, ref)
    try:
        registered = mc.get_registered_model(name)
    except Exception as err:  # noqa: BLE001
        raise _explain(err, uri, f"model {name!r}") from None
    aliases = sorted(a for a, v in (getattr(registered, "aliases", {}) or {}).items() if str(v) == str(mv.version))
    out: dict[str, Any] = {"name": name, "version": int(mv.version), "aliases": aliases,
                           "uri": f"models:/{name}/{mv.version}", "source": mv.source, "status": mv.status,
                           "created": mv.creation_timestamp, "tags": dict(mv.tags or {}), "run_id": mv.run_id,
                           "metrics": {}, "params": {}, "cohort": None, "summary": {}, "model_state": None,
                           "predict_runs": []}
    if not mv.run_id:
        return out
    try:
        run = mc.get_run(mv.run_id)
    except Exception as err:  # noqa: BLE001
        out["run_error"] = str(_explain(err, uri, f"run {mv.run_id}"))
        return out
    params = dict(run.data.params)
    out["metrics"] = dict(sorted(run.data.metrics.items()))
    out["params"] = dict(sorted(params.items()))
    out["experiment_id"] = run.info.experiment_id
    out["run_name"] = run.info.run_name
    out["run_status"] = run.info.status
    out["cohort"] = {"name": run.data.tags.get("senca.cohort") or params.get("name"),
                     "n_patients": _int(params.get("n_patients")), "n_slides": _int(params.get("n_slides")),
                     "slides": [s for s in (params.get("slides") or "").split(",") if s],
                     "status": run.data.tags.get("senca.status"),
                     "spec": f"runs:/{run.info.run_id}/spec/cohort.resolved.yaml"
                     if "spec/cohort.resolved.yaml" in _artifact_paths(mc, run.info.run_id, "spec") else None}
    out["summary"] = summary_links(mc, run)
    if uri.startswith(("http://", "https://")):
        out["ui"] = f"{redact_uri(uri).rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    state = _artifact_paths(mc, run.info.run_id, "model_state")
    out["model_state"] = f"runs:/{run.info.run_id}/model_state" if state else None
    try:
        preds = mc.search_runs([run.info.experiment_id],
                               f"tags.`{ROLE_TAG}` = 'predict' and tags.`senca.model_name` = '{name}' "
                               f"and tags.`senca.model_version` = '{mv.version}'", max_results=20,
                               order_by=["attributes.start_time DESC"])
        out["predict_runs"] = [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status}
                               for r in preds]
    except Exception:  # noqa: BLE001
        pass
    return out


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def promote_model(uri: str, name: str, version: str | int, alias: str = "champion") -> dict[str, Any]:
    """Point ``alias`` at ``version`` of ``name``. Returns ``{name, version, alias, previous}`` (previous holder)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", alias or ""):
        raise RegistryError(f"invalid alias {alias!r}: letters, digits, '_' and '-', starting with a letter")
    if re.fullmatch(r"v\d+", alias, flags=re.I):
        raise RegistryError(f"invalid alias {alias!r}: MLflow reserves v<number> for versions")
    mc = client(uri)
    mv = get_version(mc, uri, ModelRef(name, version=str(version)))
    previous = None
    try:
        previous = int(mc.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - the alias is new
        previous = None
    try:
        mc.set_registered_model_alias(name, alias, str(mv.version))
    except Exception as err:  # noqa: BLE001
        raise _explain(err, uri, f"setting alias {alias!r} on {name} version {mv.version}") from None
    return {"name": name, "version": int(mv.version), "alias": alias, "previous": previous}


# ------------------------------------------------------------------------------------------------- runs
def _experiments(mc, uri: str, experiment: str | None) -> list:
    try:
        if experiment:
            exp = mc.get_experiment_by_name(experiment)
            if exp is None:
                raise RegistryError(f"no experiment {experiment!r} in {redact_uri(uri)}")
            return [exp]
        return list(mc.search_experiments(max_results=1000))
    except RegistryError:
        raise
    except Exception as err:  # noqa: BLE001
        raise _explain(err, uri, "listing experiments") from None


def list_runs(uri: str, *, experiment: str | None = None, kind: str = "cohort", max_results: int = 50
              ) -> list[dict[str, Any]]:
    """Cohort runs (parent runs) and/or prediction runs, newest first."""
    roles = {"cohort": ["parent"], "predict": ["predict"], "all": ["parent", "predict"]}.get(kind)
    if roles is None:
        raise RegistryError(f"unknown run kind {kind!r}: cohort, predict or all")
    mc = client(uri)
    exps = _experiments(mc, uri, experiment)
    if not exps:
        return []
    names = {e.experiment_id: e.name for e in exps}
    role_filter = " or ".join(f"tags.`{ROLE_TAG}` = '{r}'" for r in roles)
    try:
        runs = []
        for role in roles:
            runs += list(mc.search_runs(list(names), f"tags.`{ROLE_TAG}` = '{role}'", max_results=max_results,
                                        order_by=["attributes.start_time DESC"]))
    except Exception as err:  # noqa: BLE001
        raise _explain(err, uri, f"searching runs ({role_filter})") from None
    runs.sort(key=lambda r: -(r.info.start_time or 0))
    rows = []
    for r in runs[:max_results]:
        tags, m = r.data.tags, r.data.metrics
        rows.append({"run_id": r.info.run_id, "name": r.info.run_name, "experiment": names.get(r.info.experiment_id),
                     "kind": "cohort" if tags.get(ROLE_TAG) == "parent" else "predict",
                     "cohort": tags.get("senca.cohort"), "status": r.info.status,
                     "senca_status": tags.get("senca.status"), "start_time": r.info.start_time,
                     "mean_ari": m.get("mean_ari"), "n_slides_ok": m.get("n_slides_ok"),
                     "n_slides_failed": m.get("n_slides_failed"),
                     "model": (f"models:/{tags['senca.model_name']}/{tags['senca.model_version']}"
                               if tags.get("senca.model_name") else None)})
    return rows


def show_run(uri: str, run_id: str) -> dict[str, Any]:
    """A run: params, metrics, senca tags (status, per-slide errors), child runs, artifacts, model versions."""
    mc = client(uri)
    try:
        run = mc.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        raise _explain(err, uri, f"run {run_id}") from None
    info = run.info
    out: dict[str, Any] = {
        "run_id": info.run_id, "name": info.run_name, "experiment_id": info.experiment_id, "status": info.status,
        "start_time": info.start_time, "end_time": info.end_time, "artifact_uri": info.artifact_uri,
        "tags": {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith("mlflow.")},
        "params": dict(sorted(run.data.params.items())), "metrics": dict(sorted(run.data.metrics.items())),
        "artifacts": _artifact_paths(mc, run_id), "children": [], "model_versions": [],
        "summary": summary_links(mc, run)}
    try:
        kids = mc.search_runs([info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=200)
        out["children"] = [{"run_id": k.info.run_id, "name": k.info.run_name, "status": k.info.status}
                           for k in sorted(kids, key=lambda k: k.info.start_time or 0)]
    except Exception:  # noqa: BLE001
        pass
    try:
        versions = mc.search_model_versions(f"run_id = '{run_id}'")
        out["model_versions"] = [{"name": v.name, "version": int(v.version), "aliases": list(v.aliases or [])}
                                 for v in versions]
    except Exception:  # noqa: BLE001
        pass
    return out


__all__ = ["ModelRef", "RegistryError", "client", "get_version", "list_models", "list_runs", "parse_model_uri",
           "promote_model", "redact_uri", "resolve_tracking_uri", "show_model", "show_run", "summary_links"]
