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

Times are real: a stage's child run is created when the stage starts (``stage_started``) and ends when it ended
(``info["ended_at"]``); the training curve (child metrics and the parent's ``train_loss``) is sent live, epoch by
epoch, each point at the time its epoch ended (:class:`~senca_platform.tracking_log.LiveLog`, at most one send per
half second); rows logged later (a cached stage, ``sync``) keep their recorded ``time``.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .spec import CohortSpec, spec_to_dict, spec_to_yaml
from .tracking_conn import (PROBE_HTTP, RUN_HTTP_DEFAULTS, TrackingUnavailable, driver_alive, driver_id,  # noqa: F401
                            http_settings, is_remote, probe_tracking, redact_text, redact_uris)
from .tracking_log import (LiveLog, _flatten, history_items, log_items, log_metrics, log_params, ms, now_ms,
                           selection_tags, set_tags, slide_tags, source_tags)
from .tracking_model import _pyfunc_class, log_pyfunc, model_example  # noqa: F401 - importable here too
from .tracking_store import new_local_store

PARENT_TAG = "senca.role"


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
        new_local_store(self.uri)  # a new sqlite store: a copy of the migrated empty one, not 2 s of migrations
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
                                               **source_tags(spec, spec_path),
                                               **({"senca.synced_from": run_id} if run_id else {})})
            self.run_id = run.info.run_id
            self._log_spec()
        elif not self.complete:
            self.client.set_tag(self.run_id, "senca.driver", driver_id())
        self.live = LiveLog(self.client, self.run_id, continued=self.continued)
        if self.complete:  # sync of a fully tracked run: nothing changes
            return
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
        log_params(self.client, run_id, params)

    def _metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0, timestamp: int | None = None) -> None:
        log_metrics(self.client, run_id, metrics, step, timestamp)

    def _history(self, run_id: str, history: list[dict[str, Any]], now: int | None = None) -> None:
        """Per-epoch rows, each at its own ``time`` when it has one (else ``now``, default: the current time)."""
        log_items(self.client, run_id, history_items(history, now))

    def _child(self, name: str, parent: str | None = None, tags: dict | None = None,
               start_time: int | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, start_time=start_time,
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

    def stage_started(self, name: str, started_at: float) -> None:
        """Create the stage's child run now, started at ``started_at``. Never raises: a failure is raised by
        :meth:`stage` (the tracking guard records it there)."""
        with self.live.lock:
            if name in self._done or name in self.live.open or self.live.error is not None:
                return
            try:
                child = self._child(name, tags={"senca.stage": name}, start_time=ms(started_at))
            except Exception as err:  # noqa: BLE001 - never into the pipeline
                self.live.fail(err)
                return
            self.live.open[name] = self.children[name] = child

    def epoch(self, stage: str, record: dict[str, Any]) -> None:
        """One epoch, live: its metrics on the stage's child run (``step`` = epoch, at the record's ``time``), and in
        ``train`` its loss as the parent's ``train_loss``. Tuning trials are logged at the stage's end. Never raises."""
        if "trial" in record or stage in self._done:
            return
        self.live.record(stage, record, parent_key="train_loss" if stage == "train" else None)

    def flush(self) -> None:
        """Send the live metrics buffered so far (raises the first failure of live logging)."""
        self.live.flush()

    def stage(self, name: str, info: dict[str, Any]) -> None:
        """The stage ended: its child run gets params, metrics, the history rows not sent live (each at its own
        ``time``) and ends at ``info["ended_at"]``; created now when the stage did not announce its start."""
        if name in self._done:  # a continued run: this stage was logged (completely) by the earlier attempt
            self.children[name] = self._done[name]
            return
        child = self.live.close(name)  # raises what went wrong while the stage ran
        cached = {"senca.cached": str(bool(info.get("cached")))}
        if child is None:  # no stage_started (a cached stage, a sync): created now, with the recorded times
            child = self._child(name, tags={"senca.stage": name, **cached}, start_time=ms(info.get("started_at")))
        else:
            self.client.set_tag(child, "senca.cached", cached["senca.cached"])
        self.children[name] = child
        end = ms(info.get("ended_at"))
        stamp = now_ms() if end is None else end
        self._params(child, info.get("params") or {})
        self._metrics(child, {**(info.get("metrics") or {}), "seconds": info.get("seconds")}, timestamp=stamp)
        history = self.live.unsent(name, info.get("history") or [])
        self._history(child, history, stamp)
        if name == "preprocess" and info.get("slides"):
            import pandas as pd

            import mlflow

            mlflow.log_table(pd.DataFrame(info["slides"]), artifact_file="tables/preprocess_slides.json",
                             run_id=child)
        if name == "tune":
            self._log_tune(child, info, stamp)
        if name == "train":  # the epochs not sent live
            log_items(self.client, self.run_id, self.live.parent_items(
                "train_loss", ((h["epoch"], h.get("time"), h.get("loss")) for h in history), stamp))
        if name == "infer":
            self._log_infer(child, info, stamp)
        self.client.set_terminated(child, "FINISHED" if info.get("status") in ("ok", "partial") else "FAILED",
                                   end_time=end)

    def _log_tune(self, child: str, info: dict[str, Any], stamp: int) -> None:
        for trial in info.get("trials", []):
            tid = self._child(f"trial-{trial['trial_id']}", parent=child,
                              tags={"senca.stage": "tune-trial", "senca.trial_status": trial["status"]})
            self._params(tid, trial["config"])
            if trial.get("error"):
                self.client.set_tag(tid, "senca.error", trial["error"][:5000])
            self._history(tid, trial.get("history") or [], stamp)
            self._metrics(tid, {"objective": trial.get("objective"), "epochs": trial.get("epochs")}, timestamp=stamp)
            self.client.set_terminated(tid, "FINISHED" if trial["status"] == "ok" else "FAILED")
        best = info.get("best") or {}
        self._params(self.run_id, {f"best.{k}": v for k, v in (best.get("config") or {}).items()})
        rows = [(int(h.get("epoch", i)), h.get("time"), h) for i, h in enumerate(best.get("history") or [])]
        for key, source in (("train_loss", "loss"), ("tune_objective", "objective")):
            log_items(self.client, self.run_id,
                      self.live.parent_items(key, ((e, t, h.get(source)) for e, t, h in rows), stamp))
        self._metrics(self.run_id, {"tune_best_objective": best.get("objective")}, timestamp=stamp)
        set_tags(self.client, self.run_id, selection_tags(info.get("selection")))

    def _log_infer(self, child: str, info: dict[str, Any], stamp: int | None = None) -> None:
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
        self._metrics(self.run_id, info.get("metrics") or {}, timestamp=stamp)

    # ------------------------------------------------------------------ model + end
    def log_model(self, model_path: str | Path, example_slide: str | Path,
                  selection: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log the model as a pyfunc with a signature, register it under the spec's name, set the alias; the
        version carries how it was chosen (``selection``, a tuned run: ``jobs.stage_model.selection_rule``)."""
        return log_pyfunc(self, model_path, example_slide, selection)

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
        set_tags(self.client, self.run_id, slide_tags(slides))  # senca.error.<slide>, senca.warning.<slide>
        if summary.get("warnings"):  # cohort-level (per-slide warnings are in slide_tags)
            self.client.set_tag(self.run_id, "senca.warning.cohort", "\n".join(summary["warnings"])[:5000])
        if summary.get("error"):
            self.client.set_tag(self.run_id, "senca.error", summary["error"][:5000])
        self.client.set_tag(self.run_id, "senca.status", summary["status"])
        self.client.log_artifact(self.run_id, str(summary_path))
        if (Path(summary_path).parent / "report.html").is_file():  # jobs.report, written just before finish()
            self.client.log_artifact(self.run_id, str(Path(summary_path).parent / "report.html"))
        self.client.set_tag(self.run_id, "senca.tracking", "complete")
        self.client.set_terminated(self.run_id, "FAILED" if summary["status"] == "failed" else "FINISHED")

    def model_state_attached(self, model_info: dict[str, Any]) -> bool:
        """Does the registered version already carry its model state (``senca.model_state`` tag)?"""
        if model_info.get("version") is None:
            return True
        mv = self.client.get_model_version(model_info["name"], str(model_info["version"]))
        return bool((mv.tags or {}).get("senca.model_state"))

    def fail(self, message: str, status: str = "FAILED") -> None:
        """End the parent run as ``status`` (FAILED; KILLED when the user stopped the run) with the reason."""
        self.client.set_tag(self.run_id, "senca.error", message[:5000])
        self.client.set_terminated(self.run_id, status)
