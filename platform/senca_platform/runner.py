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
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Ray's switch for "this machine may join a multi-node cluster"; off, every Ray server of the node binds the
#: loopback interface (127.0.0.1) instead of all interfaces (ray/_private/services.py get_node_ip_address)
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While starting an embedded Ray: its node IP is 127.0.0.1, so that the GCS, raylet, object manager, workers,
    dashboard, dashboard agent and metrics endpoints listen on 127.0.0.1 only (nothing can join an embedded
    single-machine cluster anyway). The process-wide setting is restored afterwards, so that a later
    ``ray.init(address=...)`` to a real cluster in the same process advertises a reachable IP."""
    import ray._private.ray_constants as ray_constants

    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    saved_env = os.environ.get(_RAY_CLUSTER_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_RAY_CLUSTER_ENV] = "0"  # the Ray processes started now (dashboard, raylet -> workers) agree
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved_env


def start_local_ray(num_cpus: int | None = None, *, log_to_driver: bool = True, logging_level: str = "WARNING") -> str:
    """Start an embedded local Ray bound to 127.0.0.1 (dashboard included: Ray Train V2 needs it) and return its
    GCS address.

    Every server of the embedded node (GCS, raylet, workers, dashboard on 127.0.0.1:8265 or the next free port,
    dashboard agent, metrics) listens on 127.0.0.1 only (:func:`_loopback_node`), and so does the DDP rendezvous
    store of Ray Train's workers and their Gloo connections (``senca_platform._loopback``, the workers' setup
    hook, and ``GLOO_SOCKET_IFNAME=lo``); Ray's token authentication (on by default in Ray 2.60) applies too.

    The GCS port is chosen here so that the cluster's own workers get ``RAY_ADDRESS`` pointing at it (job
    ``runtime_env``): Ray Train V2 helpers (the placement-group cleaner) look the cluster up by address and fail
    with "Found multiple active Ray instances" when another Ray runs on the same machine. The worker-group start timeout is raised (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 600 s)
    for busy small machines.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    with _loopback_node():
        port = _free_port()
        ip = ray.util.get_node_ip_address()
        env = {"RAY_ADDRESS": f"{ip}:{port}", "RAY_USAGE_STATS_ENABLED": "0", _RAY_CLUSTER_ENV: "0",
               "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",
                                                                        "600")}
        if sys.platform.startswith("linux"):  # torch.distributed's Gloo connections between the DDP workers
            env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
        saved = os.environ.get("RAY_GCS_SERVER_PORT")
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        outer_address = os.environ.pop("RAY_ADDRESS", None)  # the spec has no address: embedded, whatever the shell says
        try:
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", num_cpus=num_cpus,
                     log_to_driver=log_to_driver, logging_level=logging_level,
                     runtime_env={"env_vars": env,
                                  "worker_process_setup_hook": "senca_platform._loopback.torch_store_on_loopback"})
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


#: exit codes of ``senca-platform run`` (also ``CohortResult.exit_code``)
EXIT_OK, EXIT_FAILED, EXIT_SPEC, EXIT_NOT_STARTED, EXIT_UNTRACKED = 0, 1, 2, 3, 4


class RunNotStarted(RuntimeError):
    """Nothing ran (no Ray started, no file written but the lock): the tracking server cannot be reached, or the
    output directory is in use by another run. One line for the user; ``senca-platform run`` exits 3."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/run.lock`` (``flock``, exclusive) for the run: a second run on the same output directory is
    refused instead of interleaving with this one. The kernel drops the lock when the holder dies (even by
    ``SIGKILL``), so an interrupted run never blocks its ``--resume``."""
    import fcntl

    path = out / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunNotStarted(f"{out} is in use by another senca-platform run (pid {holder}): wait for it to end, or "
                            "choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class TrackingGuard:
    """Calls into the MLflow tracker. The first failure (server gone, network, refused request) is recorded, and
    tracking stops for the rest of the run — every further call would wait out MLflow's retries again — while the
    run itself goes on; each item that was not logged is listed (``pending``) for ``senca-platform sync``."""

    def __init__(self, echo: Callable[[str], None], uri: str = ""):
        self.echo = echo
        self.uri = uri
        self.error: str | None = None
        self.pending: list[str] = []
        self.logged: list[str] = []

    @property
    def failed(self) -> bool:
        return self.error is not None

    def call(self, item: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            self.pending.append(item)
            return None
        try:
            value = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking never stops the cohort
            from .registry import _explain
            from .tracking import redact_uris

            self.error = redact_uris(str(_explain(err, self.uri, f"logging {item}")))
            self.pending.append(item)
            self.echo(f"warning: MLflow tracking failed ({self.error}); the run goes on without it: results stay "
                      "on disk, `senca-platform sync OUTPUT_DIR` logs them later")
            return None
        self.logged.append(item)
        return value


def run_cohort(spec: CohortSpec | str | Path, *, output_dir: str | Path | None = None, fresh: bool = False,
               resume: bool = False, progress: bool = True, echo: Callable[[str], None] | None = None,
               track: bool = True, spec_path: str | Path | None = None) -> CohortResult:
    """Run every stage of the cohort. Writes ``cohort_summary.json``; returns it with the exit code.

    Raises :class:`RunNotStarted` (before any work) when the output directory is locked by another run or the
    tracking server does not answer. A tracking failure later does not stop the run (exit code 4 when every slide
    finished; see :class:`TrackingGuard` and ``senca-platform sync``).
    """
    spec_path = Path(spec_path) if spec_path is not None else None
    if not isinstance(spec, CohortSpec):
        spec_path = Path(spec)
        spec = load_spec(spec_path)
    if output_dir is not None:
        spec.output_dir = Path(output_dir).resolve()
    out = Path(spec.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    echo = echo or (lambda msg: print(f"[senca-platform] {msg}", file=sys.stderr, flush=True))
    from jobs.pipeline import sweep_partial_files

    from .tracking import RUN_HTTP_DEFAULTS, http_settings

    with output_lock(out), http_settings(RUN_HTTP_DEFAULTS, override=False):
        removed = sweep_partial_files(out)
        if removed:
            echo(f"removed {len(removed)} partial file(s) an interrupted run left behind")
        return _run_locked(spec, out, spec_path=spec_path, fresh=fresh, resume=resume, progress=progress,
                           echo=echo, track=track)


def _open_tracker(spec: CohortSpec, spec_path: Path | None, resume: bool, echo: Callable[[str], None]):
    from .registry import redact_uri
    from .tracking import MlflowTracker, TrackingUnavailable, probe_tracking, redact_uris

    uri = spec.tracking_uri()
    echo(f"MLflow: {redact_uri(uri)} (experiment {spec.experiment_name!r})")
    try:
        probe_tracking(uri)
        tracker = MlflowTracker(spec, spec_path=spec_path, resume=resume, echo=echo)
    except TrackingUnavailable as err:
        raise RunNotStarted(str(err)) from None
    except Exception as err:  # noqa: BLE001 - unusable tracking store: say so before any work
        text = str(err).strip().splitlines()[0][:500] if str(err).strip() else ""
        raise RunNotStarted(redact_uris(f"MLflow tracking at {uri} cannot be used: {type(err).__name__}: {text}")) \
            from None
    if tracker.continued:
        echo(f"MLflow: continuing parent run {tracker.run_id} of the interrupted run")
    for old in tracker.superseded:
        echo(f"MLflow: run {old} of an interrupted earlier attempt marked FAILED, superseded by {tracker.run_id}")
    return tracker


def _run_locked(spec: CohortSpec, out: Path, *, spec_path: Path | None, fresh: bool, resume: bool, progress: bool,
                echo: Callable[[str], None], track: bool) -> CohortResult:
    from jobs._util import atomic_write_json
    from jobs.pipeline import Tracker, run_pipeline

    from .sync import Journal

    t0 = time.perf_counter()
    tracker = _open_tracker(spec, spec_path, resume, echo) if track else None
    guard = TrackingGuard(echo, tracker.uri if tracker is not None else "")
    journal = Journal(out)
    journal.start(spec, spec_path=spec_path, tracker=tracker)

    class _Both(Tracker):
        def stage(self, name, info):
            echo(f"{name}: {info['status']}{' (cached)' if info.get('cached') else ''} in {info['seconds']:.1f}s")
            journal.stage(name, info)
            if tracker is not None:
                guard.call(f"stage:{name}", tracker.stage, name, info)

        def progress(self, message):
            echo(message)

    model_info: dict[str, Any] = {"name": spec.model_name, "version": None, "alias": None}
    try:
        with ray_session(spec.ray.address, spec.ray.num_cpus, quiet=not progress) as session:
            echo(f"Ray: {'embedded local' if session['embedded'] else 'connected'} ({session['num_cpus']} CPUs); "
                 f"{sum(len(p.slides) for p in spec.patients)} slide(s) of {len(spec.patients)} patient(s)")
            plan = build_plan(spec, session["num_cpus"])
            result = run_pipeline(plan, tracker=_Both(), fresh=fresh, resume=resume, progress=progress)
        if result.get("model_path") and result.get("error") is None:
            journal.model(result["model_path"], result["example_slide"])
            if tracker is not None:
                logged = guard.call("model", tracker.log_model, result["model_path"], result["example_slide"])
                if logged is not None:
                    model_info = logged
                    echo(f"model registered: {model_info.get('name')} version {model_info.get('version')} "
                         f"(alias {model_info.get('alias')})")
    except Exception as err:  # noqa: BLE001 - a crash of the platform itself: record it, then raise
        if tracker is not None:
            guard.call("fail", tracker.fail, f"{type(err).__name__}: {err}")
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
        "mlflow": None if tracker is None else tracker.summary_info(),
        "mlflow_run_id": None if tracker is None else tracker.run_id,
        "registered_model": model_info,
        "registered_model_version": model_info.get("version"),
        "tracking": {"status": "off"} if tracker is None else {"status": "complete"},
        "tracking_error": None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    summary_path = out / "cohort_summary.json"
    if guard.failed:
        _mark_untracked(summary, guard, journal, tracker, out)
    atomic_write_json(summary_path, summary)
    if tracker is not None and not guard.failed:
        if model_info.get("version") is not None:
            attached = guard.call("model_state", tracker.model_state_attached, model_info)
            if attached is False:
                _attach_predict_state(tracker, model_info, out, echo)
        guard.call("finish", tracker.finish, summary, summary_path)
        if guard.failed:  # the server went away at the very end: the summary says so
            _mark_untracked(summary, guard, journal, tracker, out)
            atomic_write_json(summary_path, summary)
        else:
            journal.clear_pending()
    for s in slides:
        if s["status"] != "ok":
            echo(f"FAILED slide {s['slide']} (patient {s['patient']}): {s['error']}")
    if result.get("error"):
        echo(f"cohort error: {result['error']}")
    if guard.failed:
        echo(f"MLflow tracking incomplete: {guard.error}; not logged: {', '.join(guard.pending)}. Every result is "
             f"on disk; log them with `senca-platform sync {out}` (list: {summary['tracking']['pending_file']})")
    echo(f"summary: {summary_path} ({summary['status']}, {summary['n_slides'] - summary['n_failed']}/"
         f"{summary['n_slides']} slides ok, {summary['seconds']:.0f}s)")
    if summary["status"] != "ok":
        exit_code = EXIT_FAILED
    elif guard.failed:
        exit_code = EXIT_UNTRACKED
    else:
        exit_code = EXIT_OK
    return CohortResult(summary=summary, summary_path=summary_path, exit_code=exit_code,
                        extra={"worker_peak_rss_mb": result.get("worker_peak_rss_mb", []),
                               "history": result.get("history")})


def _mark_untracked(summary: dict[str, Any], guard: TrackingGuard, journal, tracker, out: Path) -> None:
    """The summary of a run whose tracking failed: what failed, what was not logged, how to log it later."""
    pending = list(guard.pending)
    if "finish" not in pending:
        pending.append("finish")
    pending_file = journal.write_pending(tracker, guard.error, pending, guard.logged)
    summary["tracking"] = {"status": "incomplete", "error": guard.error, "pending": pending,
                           "pending_file": str(pending_file), "sync": f"senca-platform sync {out}"}
    summary["tracking_error"] = guard.error


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


__all__ = ["CohortResult", "RunNotStarted", "TrackingGuard", "build_plan", "output_lock", "ray_session",
           "run_cohort", "spec_to_dict", "start_local_ray"]
