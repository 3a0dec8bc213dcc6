"""MLflow tracking of a cohort run: one parent run, a child run per stage and per tuning trial, the model.

Default store: ``sqlite:///<output_dir>/mlflow.db`` with the experiment's artifact location inside the output
directory (``<output_dir>/mlartifacts``), so nothing lands in the working directory; browse it with
``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``.

What is logged:

- parent run: the resolved spec as params (``patients`` as counts; secrets redacted) and as the artifact
  ``spec/cohort.resolved.yaml`` (+ the original YAML text), cohort metrics (mean ARI, per-slide ARI/NMI, failed
  slides), ``cohort_summary.json``, the model (pyfunc with a signature) registered under the spec's model name
  with a version and an alias;
- child runs: ``preprocess`` (slide table), ``train`` (per-epoch metrics, ``step`` = epoch), ``tune`` with one
  grandchild run per trial (its config as params, per-epoch metrics), ``infer`` (per-patient summary table as
  ``log_table`` + Parquet + CSV, the slide table, region maps as PNG artifacts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .spec import SECRET_WORDS, CohortSpec, redact, spec_to_dict, spec_to_yaml

PARENT_TAG = "senca.role"
_MAX_PARAM = 6000


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def _param_value(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pyfunc_class():
    import mlflow.pyfunc

    class SencaEmbedder(mlflow.pyfunc.PythonModel):
        """SENCA-st as an MLflow pyfunc: preprocessed features of one slide → fused embedding (n, embed_dim).

        Input (a dict of arrays, one slide): ``X_pca`` float32 (n, n_pca) in the cohort's shared PCA basis,
        ``X_hist`` float32 (n, F) histology features (width 0 when the slide has no image), ``spatial_neighbors``
        int64 (n, k+1), column 0 = the spot itself.
        """

        def load_context(self, context):
            from senca_core.model import load_model

            self.model = load_model(context.artifacts["model"], device="cpu")

        def predict(self, context, model_input, params=None):
            import scipy.sparse as sp
            from anndata import AnnData
            from senca_core.model import embed

            X = np.asarray(model_input["X_pca"], dtype=np.float32)
            a = AnnData(X=sp.csr_matrix((X.shape[0], 0), dtype=np.float32))
            a.obsm["X_pca"] = X
            a.obsm["spatial_neighbors"] = np.asarray(model_input["spatial_neighbors"], dtype=np.int64)
            hist = model_input.get("X_hist") if hasattr(model_input, "get") else None
            if hist is not None and np.asarray(hist).ndim == 2 and np.asarray(hist).shape[1] > 0:
                a.obsm["X_hist"] = np.asarray(hist, dtype=np.float32)
            a.uns["senca"] = {"slide_id": "pyfunc"}
            return embed(self.model, a)

    return SencaEmbedder


def model_example(slide_h5ad: str | Path, n: int = 64) -> dict[str, np.ndarray]:
    """A small input example cut from one preprocessed slide (neighbours re-indexed into the cut)."""
    import anndata as ad

    a = ad.read_h5ad(slide_h5ad)
    n = min(n, a.n_obs)
    nb = np.asarray(a.obsm["spatial_neighbors"][:n], dtype=np.int64)
    nb = np.where(nb < n, nb, np.arange(n)[:, None])
    hist = np.asarray(a.obsm["X_hist"][:n], dtype=np.float32) if "X_hist" in a.obsm \
        else np.zeros((n, 0), dtype=np.float32)
    return {"X_pca": np.asarray(a.obsm["X_pca"][:n], dtype=np.float32), "X_hist": hist, "spatial_neighbors": nb}


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be used at the start of a run (one line naming the URI, credentials removed)."""


#: MLflow's HTTP retry settings for a cohort run, unless the environment sets them: a server that goes away
#: mid-run costs one call ~10 s (not MLflow's default of minutes), then tracking stops for the run (``sync``)
#: (and MLflow does not print "View run ... at <tracking URI>", which would show a URI's user:password)
RUN_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: ... and for the probe at the start (one quick try: a server that is not there is reported in seconds)
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


@contextlib.contextmanager
def http_settings(values: dict[str, str], *, override: bool) -> Iterator[None]:
    """Set MLflow's HTTP env settings for the duration (``override=False``: only those the user did not set)."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if override or saved[k] is None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def probe_tracking(uri: str, what: str = "starting the cohort run") -> None:
    """Fail fast (seconds) when a tracking server does not answer: one request with one retry, before any work.

    Local stores (``sqlite:``, ``file:``, paths) are not probed. Raises :class:`TrackingUnavailable`."""
    if not is_remote(uri):
        return
    from mlflow.tracking import MlflowClient

    from .registry import _explain

    with http_settings(PROBE_HTTP, override=True):
        try:
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 - any failure here means: do not start
            raise TrackingUnavailable(str(_explain(err, uri, what))) from None


_TEXT_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_TEXT_SECRET_LINE = re.compile(r"(?im)^(\s*-?\s*[\"']?[\w.-]*" + SECRET_WORDS + r"[\w.-]*[\"']?\s*:\s*)(\S.*)$")


def redact_uris(text: str) -> str:
    """``text`` (a message) with the ``user:password@`` of every URI in it removed."""
    return _TEXT_USERINFO.sub(r"\1***@", text)


def redact_text(text: str) -> str:
    """The original YAML text safe to log: values of secret-looking keys and URI ``user:password@`` removed."""
    text = _TEXT_USERINFO.sub(r"\1***@", text)
    return _TEXT_SECRET_LINE.sub(lambda m: m.group(1) + '"***"', text)


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[19]


def driver_id() -> str:
    """``host:pid:start`` of this process (the start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid()) or 0}"


def driver_alive(tag: str | None) -> bool | None:
    """Is the driver named by a ``senca.driver`` tag still running? ``None``: unknown (another host, no tag)."""
    try:
        host, pid, start = (tag or "").rsplit(":", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return _proc_start(int(pid)) == start


class MlflowTracker:
    """The pipeline's tracker (``jobs.pipeline.Tracker`` interface) writing to MLflow.

    Parent run: created, or continued. ``resume=True`` continues the newest parent run of this cohort and output
    directory that did not finish (its driver was killed or crashed; not one whose driver still runs): same run
    id, its finished stage child runs are kept and not logged again, child runs cut off mid-logging are deleted.
    ``run_id`` / ``run_key`` (``senca-platform sync``): continue that run when it exists at this URI, else the run
    created by an earlier sync of the same attempt (tag ``senca.run_key``), else create one. A new parent run marks
    every unfinished parent of the same cohort + output directory whose driver is gone (same host) as ``FAILED``
    with the tag ``senca.superseded_by`` = the new run id.
    """

    def __init__(self, spec: CohortSpec, *, spec_path: str | Path | None = None, resume: bool = False,
                 echo=None, spec_text: str | None = None, spec_name: str | None = None, run_key: str | None = None,
                 run_id: str | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.spec = spec
        self.uri = spec.tracking_uri()
        self.out = Path(spec.output_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.echo = echo or (lambda msg: None)
        self.run_key = run_key or uuid.uuid4().hex
        if spec_text is None and spec_path is not None and Path(spec_path).exists():
            spec_text = Path(spec_path).read_text()
        self.spec_text = None if spec_text is None else redact_text(spec_text)
        self.spec_name = spec_name or (Path(spec_path).name if spec_path is not None else "cohort.yaml")
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        exp = self.client.get_experiment_by_name(spec.experiment_name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:") or self.uri.startswith("file:") or "://" not in self.uri:
                location = (self.out / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(spec.experiment_name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.children: dict[str, str] = {}
        self._done: dict[str, str] = {}  # stage -> its FINISHED child run of a continued parent
        self.run_id = None
        self.continued = False
        self.complete = False  # a continued run that is already fully tracked (sync: nothing to do)
        self.superseded: list[str] = []
        prior = self._prior_parents()
        if run_id is not None or run_key is not None:
            self._continue_synced(run_id, prior)
        elif resume:
            for run in prior:
                tags = run.data.tags
                if tags.get("senca.tracking") != "complete" and "senca.superseded_by" not in tags \
                        and not driver_alive(tags.get("senca.driver")):
                    self._continue(run)
                    break
        if self.run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                         tags={PARENT_TAG: "parent", "senca.cohort": spec.name,
                                               "senca.output_dir": str(self.out), "senca.run_key": self.run_key,
                                               "senca.driver": driver_id(),
                                               **({"senca.synced_from": run_id} if run_id else {})})
            self.run_id = run.info.run_id
            self._log_spec()
        elif self.complete:  # sync of a fully tracked run: nothing changes
            return
        else:
            self.client.set_tag(self.run_id, "senca.driver", driver_id())
        for run in prior:  # attempts killed earlier, not continued: superseded by this run
            if run.info.run_id != self.run_id and run.info.status == "RUNNING" \
                    and driver_alive(run.data.tags.get("senca.driver")) is False:
                self.client.set_tag(run.info.run_id, "senca.superseded_by", self.run_id)
                self.client.set_terminated(run.info.run_id, "FAILED")
                self.superseded.append(run.info.run_id)

    # ------------------------------------------------------------------ continue / supersede
    def _prior_parents(self) -> list:
        """Parent runs of this cohort writing to this output directory, newest first."""
        out = str(self.out).replace("'", "\\'")
        return list(self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = 'parent' and tags.`senca.cohort` = '{self.spec.name}' "
                                  f"and tags.`senca.output_dir` = '{out}'",
            max_results=50, order_by=["attributes.start_time DESC"]))

    def _continue(self, run) -> None:
        self.run_id = run.info.run_id
        self.run_key = run.data.tags.get("senca.run_key") or self.run_key
        self.continued = True
        self.complete = run.data.tags.get("senca.tracking") == "complete"
        if not self.complete:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "senca.continued", str(int(run.data.tags.get("senca.continued", 0)) + 1))
        self._adopt_children()
        if not self.complete and not self.client.list_artifacts(self.run_id, "spec"):
            self._log_spec()  # the earlier attempt was cut off before its spec was logged

    def _continue_synced(self, run_id: str | None, prior: list) -> None:
        run = None
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - not at this URI (another server): find or create
                run = None
            if run is not None and run.data.tags.get("senca.run_key") not in (None, self.run_key):
                run = None
        if run is None:
            found = self.client.search_runs([self.experiment_id], f"tags.`senca.run_key` = '{self.run_key}' and "
                                            f"tags.`{PARENT_TAG}` = 'parent'", max_results=1,
                                            order_by=["attributes.start_time DESC"])
            run = found[0] if found else None
        if run is not None:
            self._continue(run)

    def _adopt_children(self) -> None:
        """Keep the continued run's finished stage children (not logged again); delete those cut off mid-logging."""
        kids = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'",
                                       max_results=1000, order_by=["attributes.start_time ASC"])
        for kid in kids:
            stage = kid.data.tags.get("senca.stage")
            if kid.info.status == "FINISHED" and stage and stage not in self._done:
                self._done[stage] = kid.info.run_id
                self.children[stage] = kid.info.run_id
            else:
                self._delete_tree(kid.info.run_id)

    def _delete_tree(self, run_id: str) -> None:
        for kid in self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                           max_results=1000):
            self._delete_tree(kid.info.run_id)
        self.client.delete_run(run_id)

    # ------------------------------------------------------------------ helpers
    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], _param_value(v)) for k, v in redact(params).items() if v is not None]
        for i in range(0, len(items), 100):
            try:
                self.client.log_batch(run_id, params=items[i:i + 100])
            except Exception:  # noqa: BLE001 - a resumed run: params already set (MLflow refuses changes)
                for item in items[i:i + 100]:
                    try:
                        self.client.log_batch(run_id, params=[item])
                    except Exception:  # noqa: BLE001
                        self.client.set_tag(run_id, f"senca.param_changed.{item.key}"[:250], item.value[:5000])

    def _metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), v, now, step) for k, v in ((k, _finite(v)) for k, v in metrics.items())
                 if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def _history(self, run_id: str, history: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for i, row in enumerate(history):
            step = int(row.get("epoch", i))
            for k, v in row.items():
                if k in ("epoch", "checkpoint_path", "training_iteration"):
                    continue
                v = _finite(v)
                if v is not None:
                    items.append(Metric(str(k), v, now, step))
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def _child(self, name: str, parent: str | None = None, tags: dict | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": parent or self.run_id, PARENT_TAG: "stage",
                                           "senca.cohort": self.spec.name, **(tags or {})})
        return run.info.run_id

    def _log_spec(self) -> None:
        data = spec_to_dict(self.spec)
        patients = data.pop("patients")
        params = _flatten(data)
        params["n_patients"] = len(patients)
        params["n_slides"] = sum(len(p["slides"]) for p in patients)
        params["slides"] = ",".join(s["id"] for p in patients for s in p["slides"])
        self._params(self.run_id, params)
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "cohort.resolved.yaml"
            resolved.write_text(spec_to_yaml(self.spec))
            self.client.log_artifact(self.run_id, str(resolved), "spec")
            if self.spec_text is not None:  # the YAML as written, secrets removed
                original = Path(tmp) / self.spec_name
                original.write_text(self.spec_text)
                self.client.log_artifact(self.run_id, str(original), "spec")

    # ------------------------------------------------------------------ the Tracker interface
    def progress(self, message: str) -> None:
        self.echo(message)

    def stage(self, name: str, info: dict[str, Any]) -> None:
        if name in self._done:  # a continued run: this stage was logged (completely) by the earlier attempt
            self.children[name] = self._done[name]
            return
        child = self._child(name, tags={"senca.stage": name, "senca.cached": str(bool(info.get("cached")))})
        self.children[name] = child
        self._params(child, info.get("params") or {})
        self._metrics(child, {**(info.get("metrics") or {}), "seconds": info.get("seconds")})
        if info.get("history"):
            self._history(child, info["history"])
        if name == "preprocess" and info.get("slides"):
            import pandas as pd

            import mlflow

            mlflow.log_table(pd.DataFrame(info["slides"]), artifact_file="tables/preprocess_slides.json",
                             run_id=child)
        if name == "tune":
            for trial in info.get("trials", []):
                tid = self._child(f"trial-{trial['trial_id']}", parent=child,
                                  tags={"senca.stage": "tune-trial", "senca.trial_status": trial["status"]})
                self._params(tid, trial["config"])
                if trial.get("error"):
                    self.client.set_tag(tid, "senca.error", trial["error"][:5000])
                self._history(tid, trial.get("history") or [])
                self._metrics(tid, {"objective": trial.get("objective"), "epochs": trial.get("epochs")})
                self.client.set_terminated(tid, "FINISHED" if trial["status"] == "ok" else "FAILED")
            best = info.get("best") or {}
            self._params(self.run_id, {f"best.{k}": v for k, v in (best.get("config") or {}).items()})
            self._history(self.run_id, [{"epoch": h.get("epoch", i), "train_loss": h.get("loss"),
                                         "tune_objective": h.get("objective")}
                                        for i, h in enumerate(best.get("history") or [])])
            self._metrics(self.run_id, {"tune_best_objective": best.get("objective")})
        if name == "train" and info.get("history"):
            self._history(self.run_id, [{"epoch": h.get("epoch", i), "train_loss": h.get("loss")}
                                        for i, h in enumerate(info["history"])])
        if name == "infer":
            self._log_infer(child, info)
        self.client.set_terminated(child, "FINISHED" if info.get("status") in ("ok", "partial") else "FAILED")

    def _log_infer(self, child: str, info: dict[str, Any]) -> None:
        import mlflow

        table = info.get("patient_table")
        if table is not None and len(table):
            for run in (child, self.run_id):
                mlflow.log_table(table, artifact_file="tables/patients.json", run_id=run)
        for key, path in (info.get("tables") or {}).items():
            for run in (child, self.run_id):
                self.client.log_artifact(run, path, "tables")
        for path in info.get("region_maps", []):
            if path and Path(path).exists():
                self.client.log_artifact(self.run_id, path, "region_maps")
        self._metrics(self.run_id, info.get("metrics") or {})

    # ------------------------------------------------------------------ model + end
    def log_model(self, model_path: str | Path, example_slide: str | Path) -> dict[str, Any]:
        """Log the model as a pyfunc with a signature, register it under the spec's name, set the alias."""
        import mlflow
        from mlflow.models import infer_signature

        name = self.spec.model_name
        sha = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
        registered = self._registered_with(name, sha) if self.spec.tracking.register_model else None
        if registered is not None:  # the same weights are registered already (a cached re-run): reuse
            self.client.set_registered_model_alias(name, self.spec.tracking.alias, str(registered.version))
            self.client.set_tag(self.run_id, "senca.model_version_reused", str(registered.version))
            return {"name": name, "uri": registered.source, "version": int(registered.version),
                    "alias": self.spec.tracking.alias, "registered_uri": f"models:/{name}@{self.spec.tracking.alias}",
                    "reused": True}
        example = model_example(example_slide)
        import torch
        from senca_core.model import load_model

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        with warnings.catch_warnings():  # "add type hints to predict": the input is a dict of arrays, on purpose
            warnings.simplefilter("ignore")
            embedder = _pyfunc_class()()
        embedder.model = load_model(model_path, device="cpu")
        output = embedder.predict(None, example)
        signature = infer_signature(example, output)
        # slides without an image send X_hist with width 0: make its feature axis free
        for spec in signature.inputs.inputs:
            if getattr(spec, "name", None) == "X_hist":
                spec._shape = (-1, -1)
        with mlflow.start_run(run_id=self.run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=_pyfunc_class()(), artifacts={"model": str(model_path)},
                signature=signature,
                pip_requirements=["torch", "anndata", "numpy", "scipy", "senca-platform"],
            )
        self.client.update_run(self.run_id, status="RUNNING")  # leaving start_run() ended it: finish() does
        result = {"name": name, "uri": info.model_uri, "version": None, "alias": None}
        if self.spec.tracking.register_model:
            # registered with its identifying tags in one request: a version never exists without its sha256, so a
            # re-run / resume / sync after a kill at any point finds it and never registers the weights twice
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mv = mlflow.register_model(info.model_uri, name, await_registration_for=60,
                                           tags={"senca.cohort": self.spec.name, "senca.model_sha256": sha})
            version = int(mv.version)
            self.client.set_registered_model_alias(name, self.spec.tracking.alias, str(version))
            result.update(version=version, alias=self.spec.tracking.alias,
                          registered_uri=f"models:/{name}@{self.spec.tracking.alias}")
        return result

    def _registered_with(self, name: str, sha: str):
        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except Exception:  # noqa: BLE001 - no such model yet
            return None
        for v in sorted(versions, key=lambda v: -int(v.version)):
            if (v.tags or {}).get("senca.model_sha256") == sha:
                return v
        return None

    def summary_info(self) -> dict[str, Any]:
        """The ``mlflow`` block of ``cohort_summary.json`` (credentials removed from the URI)."""
        from .registry import redact_uri

        uri = redact_uri(self.uri)
        return {"tracking_uri": uri, "experiment": self.spec.experiment_name, "experiment_id": self.experiment_id,
                "run_id": self.run_id, "child_runs": self.children, "continued": self.continued,
                "superseded": self.superseded, "ui": f"mlflow ui --backend-store-uri {uri}"}

    def finish(self, summary: dict[str, Any], summary_path: str | Path) -> None:
        slides = summary.get("slides", [])
        failed = [s for s in slides if s["status"] != "ok"]
        self._metrics(self.run_id, {"n_slides_failed": len(failed), "n_slides_ok": len(slides) - len(failed),
                                    "seconds_total": summary.get("seconds")})
        for s in failed:
            self.client.set_tag(self.run_id, f"senca.error.{s['slide']}", (s.get("error") or "?")[:5000])
        if summary.get("error"):
            self.client.set_tag(self.run_id, "senca.error", summary["error"][:5000])
        self.client.set_tag(self.run_id, "senca.status", summary["status"])
        self.client.log_artifact(self.run_id, str(summary_path))
        self.client.set_tag(self.run_id, "senca.tracking", "complete")
        self.client.set_terminated(self.run_id, "FAILED" if summary["status"] == "failed" else "FINISHED")

    def model_state_attached(self, model_info: dict[str, Any]) -> bool:
        """Does the registered version already carry its model state (``senca.model_state`` tag)?"""
        if model_info.get("version") is None:
            return True
        mv = self.client.get_model_version(model_info["name"], str(model_info["version"]))
        return bool((mv.tags or {}).get("senca.model_state"))

    def fail(self, message: str) -> None:
        self.client.set_tag(self.run_id, "senca.error", message[:5000])
        self.client.set_terminated(self.run_id, "FAILED")
