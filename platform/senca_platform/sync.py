"""What a run keeps on disk for MLflow (the tracking journal), and ``senca-platform sync``, which replays it.

Every ``senca-platform run`` writes, next to its results, ``<output_dir>/tracking/``:

- ``run.json``: the cohort, the resolved spec (secrets redacted) and the YAML as written (secrets redacted), the
  tracking URI (credentials removed), the experiment, the MLflow parent run id and the attempt's ``run_key``;
- ``stages.json``: every stage's results as the tracker received them (params, metrics, per-epoch history,
  trials, slide rows, the per-patient table, the table / region-map paths), in order;
- ``model.json``: the model file and the slide the pyfunc signature is cut from;
- ``pending.json`` (only when tracking failed mid-run): the error and what was not logged (``stage:train``,
  ``model``, ``finish``, ...). Removed once the run is fully tracked.

``sync_output(out, tracking_uri)`` logs all of it into MLflow: it continues the run's parent run where the URI
holds it (same run id; else the run an earlier sync created, tag ``senca.run_key``; else a new parent run tagged
``senca.synced_from``), logs each stage whose child run is not there yet (children cut off mid-logging are
deleted and logged again), the model (registered once: a version with the same weights, tag
``senca.model_sha256``, is reused), its model state for ``predict``, then the summary; the parent is tagged
``senca.tracking=complete``. A second sync finds it complete and changes nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

TRACKING_DIR = "tracking"
FORMAT = 1


class SyncError(RuntimeError):
    """Why a sync cannot be done, as one line (no traceback)."""


# ------------------------------------------------------------------------------------------------ the journal
def _plain(obj: Any) -> Any:
    """JSON-able copy of a stage's info (DataFrames as ``{"__dataframe__": {columns, data}}``)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    try:
        import pandas as pd

        if isinstance(obj, pd.DataFrame):
            frame = obj.astype(object).where(obj.notna(), None)
            return {"__dataframe__": {"columns": [str(c) for c in obj.columns],
                                      "data": _plain(frame.values.tolist())}}
    except ImportError:  # pragma: no cover
        pass
    return obj


def _restore(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__dataframe__"}:
            import pandas as pd

            return pd.DataFrame(obj["__dataframe__"]["data"], columns=obj["__dataframe__"]["columns"])
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    return obj


class Journal:
    """``<output_dir>/tracking/``: what MLflow was (or should have been) sent, so that ``sync`` can replay it."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.root = self.out / TRACKING_DIR
        self.run_file = self.root / "run.json"
        self.stages_file = self.root / "stages.json"
        self.model_file = self.root / "model.json"
        self.pending_file = self.root / "pending.json"
        self._stages: list[dict[str, Any]] = []

    def _write(self, path: Path, obj: Any) -> Path:
        from jobs._files import atomic_write_json

        return atomic_write_json(path, obj)

    def spec_changes(self, spec) -> list[str]:
        """The settings (dotted paths) in which ``spec`` differs from the spec the interrupted run recorded
        (``output_dir`` aside); empty when they agree or nothing was recorded."""
        from .spec import spec_to_dict

        try:
            before = json.loads(self.run_file.read_text())["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            return []

        def flat(d: Any, prefix: str = "") -> dict[str, Any]:
            if not isinstance(d, dict):
                return {prefix: d}
            return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()} or {prefix: d}

        old, new = flat(before), flat(json.loads(json.dumps(spec_to_dict(spec), default=str)))
        return sorted(k.rstrip(".") for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and not k.startswith("output_dir"))

    def start(self, spec, *, spec_path: str | Path | None, tracker) -> None:
        """A new attempt: the spec and where it is tracked; the stage list and model record start empty."""
        from .registry import redact_uri
        from .spec import spec_to_dict
        from .tracking import redact_text

        text = None
        if spec_path is not None and Path(spec_path).exists():
            text = redact_text(Path(spec_path).read_text())
        uri = spec.tracking_uri()
        self._stages = []
        self._write(self.stages_file, [])
        self.model_file.unlink(missing_ok=True)
        self._write(self.run_file, {
            "format": FORMAT, "cohort": spec.name, "output_dir": str(self.out),
            "spec": spec_to_dict(spec), "spec_text": text,
            "spec_name": Path(spec_path).name if spec_path is not None else "cohort.yaml",
            "tracking_uri": redact_uri(uri), "tracked": tracker is not None,
            "experiment": spec.experiment_name,
            "run_id": getattr(tracker, "run_id", None), "run_key": getattr(tracker, "run_key", None),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def stage(self, name: str, info: dict[str, Any]) -> None:
        self._stages = [s for s in self._stages if s["name"] != name] + [{"name": name, "info": _plain(info)}]
        self._write(self.stages_file, self._stages)

    def model(self, model_path: str | Path, example_slide: str | Path) -> None:
        self._write(self.model_file, {"model_path": str(model_path), "example_slide": str(example_slide)})

    def write_pending(self, tracker, error: str | None, pending: list[str], logged: list[str]) -> Path:
        from .registry import redact_uri

        return self._write(self.pending_file, {
            "tracking_uri": redact_uri(tracker.uri) if tracker is not None else None,
            "run_id": getattr(tracker, "run_id", None), "error": error, "pending": pending, "logged": logged,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sync": f"senca-platform sync {self.out}"})

    def clear_pending(self) -> None:
        self.pending_file.unlink(missing_ok=True)

    # -------------------------------------------------------------------------------------------- reading
    def read(self) -> dict[str, Any]:
        def load(path: Path, default: Any) -> Any:
            try:
                return json.loads(path.read_text())
            except FileNotFoundError:
                return default

        return {"run": load(self.run_file, None), "stages": _restore(load(self.stages_file, [])),
                "model": load(self.model_file, None), "pending": load(self.pending_file, None)}


# ------------------------------------------------------------------------------------------------ sync
def sync_output(output_dir: str | Path, tracking_uri: str | None = None, *,
                echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Log a finished run's results from ``output_dir`` into MLflow at ``tracking_uri`` (default: the URI the run
    used). Idempotent. Returns ``{"run_id", "tracking_uri", "synced": bool, "logged": [...], "model": {...}}``.

    Raises :class:`SyncError` (one line) when there is nothing to sync from, or the server cannot be used.
    """
    from jobs._files import atomic_write_json

    from .registry import _explain, redact_uri
    from .model_state import attach_after_run as _attach_predict_state
    from .runner import RunNotStarted, output_lock
    from .spec import CohortSpec
    from .tracking import (RUN_HTTP_DEFAULTS, MlflowTracker, TrackingUnavailable, http_settings, probe_tracking,
                           redact_uris)

    echo = echo or (lambda m: None)
    out = Path(output_dir).resolve()
    journal = Journal(out)
    summary_path = out / "cohort_summary.json"
    if not journal.run_file.exists():
        raise SyncError(f"{out}: no tracking record ({TRACKING_DIR}/run.json): not the output directory of a "
                        "`senca-platform run`")
    if not summary_path.exists():
        raise SyncError(f"{out}: no cohort_summary.json: the run did not finish; finish it with "
                        "`senca-platform run SPEC --resume`, then sync")
    record = journal.read()
    run = record["run"]
    uri = tracking_uri or run.get("tracking_uri")
    if not uri or "***@" in uri:
        raise SyncError("the run's tracking URI was recorded without its credentials: pass --tracking-uri "
                        "(and the credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    try:
        spec = CohortSpec.model_validate(run["spec"])
    except Exception as err:  # noqa: BLE001
        raise SyncError(f"{journal.run_file}: the recorded spec cannot be read back ({type(err).__name__})") from None
    spec.tracking.uri = uri
    spec.output_dir = out
    logged: list[str] = []
    try:
        with output_lock(out), http_settings(RUN_HTTP_DEFAULTS, override=False):
            probe_tracking(uri, "syncing a cohort run")
            tracker = MlflowTracker(spec, spec_text=run.get("spec_text"), spec_name=run.get("spec_name"),
                                    run_key=run.get("run_key") or None, run_id=run.get("run_id"), echo=echo)
            summary = json.loads(summary_path.read_text())
            if tracker.complete:
                echo(f"already in sync: run {tracker.run_id} at {redact_uri(uri)}")
                journal.clear_pending()
                return {"run_id": tracker.run_id, "tracking_uri": redact_uri(uri), "synced": False, "logged": [],
                        "model": summary.get("registered_model")}
            echo(f"{'continuing' if tracker.continued else 'created'} parent run {tracker.run_id} at {redact_uri(uri)}")
            for entry in record["stages"]:
                if entry["name"] not in tracker.children:
                    tracker.stage(entry["name"], entry["info"])
                    logged.append(f"stage:{entry['name']}")
            model_info = {"name": spec.model_name, "version": None, "alias": None}
            model = record["model"]
            if model and summary.get("error") is None and Path(model["model_path"]).exists():
                model_info = tracker.log_model(model["model_path"], model["example_slide"],
                                               (summary.get("tuning") or {}).get("selection"))
                logged.append("model")
                echo(f"model: {model_info['name']} version {model_info.get('version')}"
                     f"{' (already registered)' if model_info.get('reused') else ''}")
            summary.update({
                "mlflow": tracker.summary_info(),
                "mlflow_run_id": tracker.run_id, "registered_model": model_info,
                "registered_model_version": model_info.get("version"),
                "tracking": {"status": "complete", "synced": {"tracking_uri": redact_uri(uri),
                                                              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}},
                "tracking_error": None})
            atomic_write_json(summary_path, summary)
            if model_info.get("version") is not None and not tracker.model_state_attached(model_info):
                _attach_predict_state(tracker, model_info, out, echo)
            tracker.finish(summary, summary_path)
            logged.append("finish")
            journal._write(journal.run_file, {**run, "run_id": tracker.run_id, "run_key": tracker.run_key,
                                              "tracking_uri": redact_uri(uri)})
            journal.clear_pending()
    except RunNotStarted as err:
        raise SyncError(str(err)) from None
    except TrackingUnavailable as err:
        raise SyncError(str(err)) from None
    except SyncError:
        raise
    except Exception as err:  # noqa: BLE001 - one line; a later sync continues where this one stopped
        raise SyncError(redact_uris(f"{_explain(err, uri, 'syncing')}; logged so far: {', '.join(logged) or 'nothing'}"
                                    " (run sync again)")) from None
    echo(f"synced {out} -> run {tracker.run_id} ({', '.join(logged)})")
    return {"run_id": tracker.run_id, "tracking_uri": redact_uri(uri), "synced": True, "logged": logged,
            "model": model_info}


__all__ = ["Journal", "SyncError", "TRACKING_DIR", "sync_output"]
