"""Run a cohort: Ray session + MLflow parent run around ``jobs.pipeline.run_pipeline``, then the summary.

``run_cohort(spec)`` is what ``senca-platform run`` calls. It never raises for a slide's problem: the result
(also written to ``<output_dir>/cohort_summary.json``) lists every slide with its status and error, and
``result.exit_code`` is 0 only when every slide finished.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .spec import CohortSpec, load_spec, spec_to_dict

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass
class CohortResult:
    summary: dict[str, Any]
    summary_path: Path
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def start_local_ray(num_cpus: int | None = None, *, log_to_driver: bool = True, logging_level: str = "WARNING") -> str:
    """Start an embedded local Ray (dashboard on 127.0.0.1, needed by Ray Train V2) and return its GCS address.

    The GCS port is chosen here so that the cluster's own workers get ``RAY_ADDRESS`` pointing at it (job
    ``runtime_env``): Ray Train V2 helpers (the placement-group cleaner) look the cluster up by address and fail
    with "Found multiple active Ray instances" when another Ray runs on the same machine. The worker-group start
    timeout is raised (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 600 s) for busy small machines.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    port = _free_port()
    ip = ray.util.get_node_ip_address()
    env = {"RAY_ADDRESS": f"{ip}:{port}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")}
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    outer_address = os.environ.pop("RAY_ADDRESS", None)  # the spec has no address: embedded, whatever the shell says
    try:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=num_cpus, log_to_driver=log_to_driver,
                 logging_level=logging_level, runtime_env={"env_vars": env})
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
        if outer_address is not None:
            os.environ["RAY_ADDRESS"] = outer_address
    return ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *, quiet: bool = False) -> Iterator[dict]:
    """Connect to ``address`` or start an embedded local Ray (dashboard on 127.0.0.1); reuse one already up.

    Only a session started here is shut down here. Yields ``{"address", "embedded", "num_cpus"}``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=not quiet, logging_level="WARNING")
        else:
            start_local_ray(num_cpus, log_to_driver=not quiet)
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        yield {"address": address, "embedded": started and not address, "num_cpus": cpus}
    finally:
        if started:
            ray.shutdown()


def build_plan(spec: CohortSpec, num_cpus: int) -> dict[str, Any]:
    """The resolved spec as the plain data ``jobs.pipeline`` takes (one flat list of slides)."""
    data = spec.model_dump(mode="json")
    slides = []
    for patient in data["patients"]:
        for s in patient["slides"]:
            entry = {"patient_id": patient["id"], "slide_id": s["id"], **{k: v for k, v in s.items() if k != "id"}}
            slides.append(entry)
    return {"name": spec.name, "output_dir": str(Path(spec.output_dir).resolve()), "slides": slides,
            "preprocess": data["preprocess"], "model": data["model"], "training": data["training"],
            "tuning": data["tuning"], "clustering": data["clustering"], "num_cpus": num_cpus}


def _status(slides: list[dict], error: str | None) -> str:
    failed = sum(s["status"] != "ok" for s in slides)
    if error and failed == len(slides):
        return "failed"
    if failed or error:
        return "partial"
    return "ok"


def run_cohort(spec: CohortSpec | str | Path, *, output_dir: str | Path | None = None, fresh: bool = False,
               resume: bool = False, progress: bool = True, echo: Callable[[str], None] | None = None,
               track: bool = True, spec_path: str | Path | None = None) -> CohortResult:
    """Run every stage of the cohort. Writes ``cohort_summary.json``; returns it with the exit code."""
    from jobs._util import atomic_write_json
    from jobs.pipeline import Tracker, run_pipeline

    spec_path = Path(spec_path) if spec_path is not None else None
    if not isinstance(spec, CohortSpec):
        spec_path = Path(spec)
        spec = load_spec(spec_path)
    if output_dir is not None:
        spec.output_dir = Path(output_dir).resolve()
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    echo = echo or (lambda msg: print(f"[senca-platform] {msg}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()

    tracker = None
    if track:
        echo(f"MLflow: {spec.tracking_uri()} (experiment {spec.experiment_name!r})")
        from .tracking import MlflowTracker

        tracker = MlflowTracker(spec, spec_path=spec_path, resume=resume, echo=echo)

    class _Echo(Tracker):
        def stage(self, name, info):
            echo(f"{name}: {info['status']}{' (cached)' if info.get('cached') else ''} in {info['seconds']:.1f}s")

        def progress(self, message):
            echo(message)

    class _Both(Tracker):
        def stage(self, name, info):
            _Echo().stage(name, info)
            if tracker is not None:
                tracker.stage(name, info)

        def progress(self, message):
            echo(message)

    model_info: dict[str, Any] = {"name": spec.model_name, "version": None, "alias": None}
    try:
        with ray_session(spec.ray.address, spec.ray.num_cpus, quiet=not progress) as session:
            echo(f"Ray: {'embedded local' if session['embedded'] else 'connected'} ({session['num_cpus']} CPUs); "
                 f"{sum(len(p.slides) for p in spec.patients)} slide(s) of {len(spec.patients)} patient(s)")
            plan = build_plan(spec, session["num_cpus"])
            result = run_pipeline(plan, tracker=_Both(), fresh=fresh, resume=resume, progress=progress)
        if tracker is not None and result.get("model_path") and result.get("error") is None:
            try:
                model_info = tracker.log_model(result["model_path"], result["example_slide"])
                echo(f"model registered: {model_info.get('name')} version {model_info.get('version')} "
                     f"(alias {model_info.get('alias')})")
            except Exception as err:  # noqa: BLE001 - the regions are done; record and go on
                result["error"] = f"model logging failed: {type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - a crash of the platform itself: still write a summary
        if tracker is not None:
            tracker.fail(f"{type(err).__name__}: {err}")
        raise
    slides = result["slides"]
    summary = {
        "cohort": spec.name,
        "status": _status(slides, result.get("error")),
        "error": result.get("error"),
        "output_dir": str(out),
        "spec": str(spec_path) if spec_path else None,
        "n_patients": len(spec.patients),
        "n_slides": len(slides),
        "n_failed": sum(s["status"] != "ok" for s in slides),
        "slides": [{k: v for k, v in s.items() if k not in ("traceback", "has_labels", "hist_dim")} for s in slides],
        "k": result.get("k"),
        "tuning": result.get("tuning"),
        "tables": {"patients_parquet": result["tables"].get("patients_parquet_path"),
                   "patients_csv": result["tables"].get("patients_csv_path"),
                   "slides_parquet": result["tables"].get("slides_parquet_path"),
                   "slides_csv": result["tables"].get("slides_csv_path"),
                   "markers_parquet": result["tables"].get("markers_parquet_path"),
                   "markers_csv": result["tables"].get("markers_csv_path")},
        "model_path": result.get("model_path"),
        "stages": result.get("stages", {}),
        "mlflow": None if tracker is None else {
            "tracking_uri": tracker.uri, "experiment": spec.experiment_name,
            "experiment_id": tracker.experiment_id, "run_id": tracker.run_id,
            "child_runs": tracker.children,
            "ui": f"mlflow ui --backend-store-uri {tracker.uri}"},
        "mlflow_run_id": None if tracker is None else tracker.run_id,
        "registered_model": model_info,
        "registered_model_version": model_info.get("version"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    summary_path = out / "cohort_summary.json"
    atomic_write_json(summary_path, summary)
    if tracker is not None:
        tracker.finish(summary, summary_path)
        if model_info.get("version") is not None and not model_info.get("reused"):
            _attach_predict_state(tracker, model_info, out, echo)
    for s in slides:
        if s["status"] != "ok":
            echo(f"FAILED slide {s['slide']} (patient {s['patient']}): {s['error']}")
    if result.get("error"):
        echo(f"cohort error: {result['error']}")
    echo(f"summary: {summary_path} ({summary['status']}, {summary['n_slides'] - summary['n_failed']}/"
         f"{summary['n_slides']} slides ok, {summary['seconds']:.0f}s)")
    exit_code = 0 if summary["status"] == "ok" else 1
    return CohortResult(summary=summary, summary_path=summary_path, exit_code=exit_code,
                        extra={"worker_peak_rss_mb": result.get("worker_peak_rss_mb", []),
                               "history": result.get("history")})


def _attach_predict_state(tracker, model_info: dict[str, Any], out: Path, echo) -> None:
    """Log what ``predict`` needs (gene panel, PCA basis, region model) with the run, so a registered version is
    usable where this output directory is not visible. A failure here leaves the regions intact: it is reported,
    and ``senca-platform models attach-state`` can redo it."""
    from .predict import attach_model_state

    try:
        attach_model_state(tracker.uri, tracker.run_id, out, model_name=model_info.get("name"),
                           model_version=model_info.get("version"))
        echo("model state for predict logged with the run (gene panel, PCA basis, region model)")
    except Exception as err:  # noqa: BLE001 - never lose finished results over this
        echo(f"warning: model state for predict not logged ({type(err).__name__}: {err}); "
             "run `senca-platform models attach-state` later")


def format_traceback(err: BaseException) -> str:  # pragma: no cover - CLI diagnostics
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


__all__ = ["CohortResult", "build_plan", "ray_session", "run_cohort", "spec_to_dict"]
