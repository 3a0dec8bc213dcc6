"""Run a cohort: Ray session + MLflow parent run around ``jobs.pipeline.run_pipeline``, then the summary.

``run_cohort(spec)`` is what ``senca-platform run`` calls. It never raises for a slide's problem: the result
(also written to ``<output_dir>/cohort_summary.json``) lists every slide with its status and error, and
``result.exit_code`` is 0 only when every slide finished.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from jobs._background import Background
from jobs._say import say

from ._console import RunConsole, stage_done_line
from .model_state import attach_after_run as _attach_predict_state
from .tracking_guard import TrackingGuard, mark_untracked as _mark_untracked
from .ray_local import ray_session, start_local_ray, unreachable
from .spec import CohortSpec, build_plan, load_spec, spec_to_dict

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


def _status(slides: list[dict], error: str | None) -> str:
    failed = sum(s["status"] != "ok" for s in slides)
    if error and failed == len(slides):
        return "failed"
    if failed or error:
        return "partial"
    return "ok"


#: exit codes of ``senca-platform run`` (also ``CohortResult.exit_code``)
EXIT_OK, EXIT_FAILED, EXIT_SPEC, EXIT_NOT_STARTED, EXIT_UNTRACKED = 0, 1, 2, 3, 4


#: what a run stopped by SIGINT / SIGTERM says (console, MLflow)
INTERRUPTED = "interrupted by a signal (SIGINT/SIGTERM): finished stages are cached, training has its checkpoints"


class RunNotStarted(RuntimeError):
    """Nothing ran (no Ray started, no file written but the lock and the folder's marker): the tracking server
    cannot be reached, or the output directory is in use by another run or cannot be used. One line for the user;
    ``senca-platform run`` exits 3."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/run.lock`` (``flock``, exclusive) for the run: a second run on the same output directory is
    refused instead of interleaving with this one. The kernel drops the lock when the holder dies (even by
    ``SIGKILL``), so an interrupted run never blocks its ``--resume``."""
    import fcntl

    path = out / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every result
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


def run_cohort(spec: CohortSpec | str | Path, *, output_dir: str | Path | None = None, fresh: bool = False,
               resume: bool = False, progress: bool = True, echo: Callable[[str], None] | None = None,
               track: bool = True, spec_path: str | Path | None = None, command: bool = False,
               force_out: bool = False, verbosity: str | None = None) -> CohortResult:
    """Run every stage of the cohort. Writes ``cohort_summary.json``; returns it with the exit code.

    Raises :class:`RunNotStarted` (before any work) when the output directory is locked by another run, cannot
    be used (``outdir.claim_output_dir``: empty, a file, not writable, or a non-empty folder no run wrote unless
    ``force_out``) or the tracking server does not answer. A tracking failure later does not stop the run (exit
    code 4 when every slide finished; see :class:`TrackingGuard` and ``senca-platform sync``).

    ``verbosity`` (``quiet`` / ``normal`` / ``verbose``, the CLI's): the run's console (:class:`RunConsole`): the
    engines' output goes to ``OUTPUT/logs/run.log``; None (a notebook, a test): nothing is redirected.
    """
    from .outdir import OutputDirError, check_out_arg, claim_output_dir

    spec_path = Path(spec_path) if spec_path is not None else None
    if not isinstance(spec, CohortSpec):
        spec_path = Path(spec)
        spec = load_spec(spec_path)
    try:
        check_out_arg(output_dir)
        if output_dir is not None:
            spec.output_dir = Path(output_dir).resolve()
        out = claim_output_dir(Path(spec.output_dir).resolve(), cohort=spec.name, force=force_out)
    except OutputDirError as err:
        raise RunNotStarted(str(err)) from None
    echo = echo or say
    from jobs.pipeline import sweep_partial_files

    from .tracking_conn import RUN_HTTP_DEFAULTS, http_settings  # not .tracking: MLflow loads beside Ray

    console = RunConsole(out / "logs" if verbosity else None, verbosity or "verbose")
    with output_lock(out), http_settings(RUN_HTTP_DEFAULTS, override=False), console:
        echo = console.echo if verbosity else echo
        if console.log_path is not None and verbosity != "verbose":
            echo(f"log: {console.log_path} (Ray, Tune, MLflow and torch output; --verbose shows it here)")
        removed = sweep_partial_files(out)
        if removed:
            echo(f"removed {len(removed)} partial file(s) an interrupted run left behind")
        return _run_locked(spec, out, spec_path=spec_path, fresh=fresh, resume=resume, progress=progress,
                           echo=echo, track=track, command=command, console=console)


def _process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere): the command's own start-up is part of
    what a user waits for."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, ticks after boot
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def _probe(spec: CohortSpec, echo: Callable[[str], None]) -> str:
    """Says where the run is tracked and checks that the server answers (:class:`RunNotStarted` if not)."""
    from .registry import redact_uri
    from .tracking_conn import TrackingUnavailable, probe_tracking

    uri = spec.tracking_uri()
    echo(f"MLflow: {redact_uri(uri)} (experiment {spec.experiment_name!r})")
    try:
        probe_tracking(uri)
    except TrackingUnavailable as err:
        raise RunNotStarted(str(err)) from None
    return uri


def _open_tracker(spec: CohortSpec, spec_path: Path | None, resume: bool, echo: Callable[[str], None]):
    """The run's MLflow tracker (after :func:`_probe`); :class:`RunNotStarted` when the store is unusable."""
    from .tracking import MlflowTracker, TrackingUnavailable, redact_uris

    uri = spec.tracking_uri()
    try:
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
                echo: Callable[[str], None], track: bool, command: bool = False,
                console: RunConsole | None = None) -> CohortResult:
    from jobs import warmup
    from jobs._files import atomic_write_json
    from jobs.pipeline import Tracker, run_pipeline

    from .sync import Journal

    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    uri = _probe(spec, echo) if track else None  # an unreachable server: nothing starts, not even Ray
    if spec.ray.address and (problem := unreachable(spec.ray.address)):  # nor on an unreachable cluster
        raise RunNotStarted(problem)
    if resume and (changed := Journal(out).spec_changes(spec)):  # a resumed run is the same computation
        raise RunNotStarted(f"--resume: the spec differs from the interrupted run's in {', '.join(changed[:5])}"
                            f"{' ...' if len(changed) > 5 else ''}; run without --resume to start a new run "
                            "with it (finished stages with unchanged inputs are still reused from the cache)")

    def startup_work():  # while Ray starts: the MLflow run is opened, then the driver's stage imports load
        t = time.perf_counter()
        opened = _open_tracker(spec, spec_path, resume, echo) if track else None
        timing["tracking_setup_s"] = time.perf_counter() - t
        warmup.import_driver()
        return opened

    # the command's own imports, spec parsing and output lock (``command``: this process is `senca-platform run`)
    timing["before_run_s"] = max(0.0, _process_age() - (time.perf_counter() - t0)) if command else 0.0
    opening = Background(startup_work, name="senca-startup")  # overlapped with Ray's start
    tracker = None
    guard = TrackingGuard(echo, uri or "")
    journal = Journal(out)
    console = console or RunConsole(None)

    class _Both(Tracker):
        def stage_started(self, name, started_at):
            if name in ("train", "tune"):
                console.start_stage(name, _epochs_total(spec, name))
            if tracker is not None:
                guard.attempt(f"stage:{name}", tracker.stage_started, name, started_at)

        def epoch(self, stage, record):
            console.epoch(stage, record)
            if tracker is not None and not guard.failed:
                tracker.epoch(stage, record)  # never raises: a failure resurfaces at the stage's end

        def stage(self, name, info):
            console.end_stage()
            echo(stage_done_line(name, info))
            journal.stage(name, info)
            if tracker is not None:
                guard.call(f"stage:{name}", tracker.stage, name, info)

        def progress(self, message):
            echo(message)

    model_info: dict[str, Any] = {"name": spec.model_name, "version": None, "alias": None}
    session: dict[str, Any] | None = None
    try:
        n_slides = len(spec.slides())
        from .spec.census import needs_dashboard  # no Ray Train worker group: no dashboard, Ray starts sooner
        dashboard = needs_dashboard(spec)
        with ray_session(spec.ray.address, spec.ray.num_cpus, quiet=not progress, defer_shutdown=True,
                         dashboard=dashboard) as session:
            timing["ray_start_s"] = time.perf_counter() - t0
            warm = (warmup.start(session["num_cpus"], n_slides, spec.preprocess.concurrency)
                    if session["embedded"] else None)
            tracker = opening.result()
            journal.start(spec, spec_path=spec_path, tracker=tracker)
            if warm is not None:
                timing["warmup_s"] = warm.wait()
                warm = None  # its task refs freed while Ray is up, never beside its deferred shutdown
            timing["startup_s"] = time.perf_counter() - t0 + timing["before_run_s"]
            echo(f"Ray: {'embedded local' if session['embedded'] else 'connected'} ({session['num_cpus']} CPUs"
                 f"{', dashboard ' + session['dashboard'] if session.get('dashboard') else ''}); "
                 f"{n_slides} slide(s) of {len(spec.patients)} patient(s); "
                 f"start-up {timing['startup_s']:.1f}s")
            plan = build_plan(spec, session["num_cpus"], embedded=session["embedded"],
                              api_server=session.get("api_server"))
            t_stages = time.perf_counter()
            result = run_pipeline(plan, tracker=_Both(), fresh=fresh, resume=resume, progress=progress)
            timing["pipeline_s"] = time.perf_counter() - t_stages
        t_model = time.perf_counter()
        if result.get("model_path") and result.get("error") is None:
            journal.model(result["model_path"], result["example_slide"])
            if tracker is not None:
                logged = guard.call("model", tracker.log_model, result["model_path"], result["example_slide"],
                                    (result.get("tuning") or {}).get("selection"))
                if logged is not None:
                    model_info = logged
                    echo(f"model registered: {model_info.get('name')} version {model_info.get('version')} "
                         f"(alias {model_info.get('alias')})")
        timing["model_logging_s"] = time.perf_counter() - t_model
    except BaseException as err:  # a crash of the platform itself: record it, then raise
        _join_shutdown(session)
        if tracker is None:
            tracker = opening.result_or_none()
        if tracker is not None and isinstance(err, KeyboardInterrupt):  # SIGINT, or SIGTERM (the CLI maps it)
            guard.call("fail", tracker.fail, f"{INTERRUPTED}: resume with --resume", "KILLED")
        elif tracker is not None and isinstance(err, Exception) and not isinstance(err, RunNotStarted):
            guard.call("fail", tracker.fail, f"{type(err).__name__}: {err}")
        raise
    try:  # the closing work; Ray's deferred shutdown is joined even when it raises
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
            "slides": [{k: v for k, v in s.items() if k not in ("traceback", "has_labels", "hist_dim")}
                       for s in slides],
            "k": result.get("k"), "k_auto": result.get("k_auto"), "region_restarts": result.get("restarts"),
            "warnings": list(result.get("warnings") or []),
            "tuning": result.get("tuning"),
            "tables": {f"{name}_{fmt}": result["tables"].get(f"{name}_{fmt}_path")
                       for name in ("patients", "regions", "composition", "slides", "markers")
                       for fmt in ("parquet", "csv")},
            "model_path": result.get("model_path"),
            "stages": result.get("stages", {}),
            "mlflow": None if tracker is None else tracker.summary_info(),
            "mlflow_run_id": None if tracker is None else tracker.run_id,
            "registered_model": model_info,
            "registered_model_version": model_info.get("version"),
            "tracking": {"status": "off"} if tracker is None else {"status": "complete"},
            "tracking_error": None,
            "seconds": round(time.perf_counter() - t0, 2),
            "timing": {k: round(v, 3) for k, v in timing.items()},
        }
        summary_path = out / "cohort_summary.json"
        if guard.failed:
            _mark_untracked(summary, guard, journal, tracker, out)
        atomic_write_json(summary_path, summary)
        from jobs.report import write_report  # never raises: None and one warning line when it cannot be written

        report = write_report(out, on_error=lambda msg: echo(f"warning: {msg}"))
        if report is not None:
            echo(f"report: {report}")
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
            for w in dict.fromkeys(s.get("warnings") or []):  # each once
                echo(f"warning: slide {s['slide']}: {w}")
        for w in summary["warnings"]:
            echo(f"warning: cohort: {w}")
        if result.get("error"):
            echo(f"cohort error: {result['error']}")
        if guard.failed:
            echo(f"MLflow tracking incomplete: {guard.error}; not logged: {', '.join(guard.pending)}. Every result is "
                 f"on disk; log them with `senca-platform sync {out}` (list: {summary['tracking']['pending_file']})")
        echo(f"summary: {summary_path} ({summary['status']}, {summary['n_slides'] - summary['n_failed']}/"
             f"{summary['n_slides']} slides ok, {summary['seconds']:.0f}s)")
    finally:
        _join_shutdown(session)  # Ray's shutdown ran beside the model's registration, the summary and the report
    if summary["status"] != "ok":
        exit_code = EXIT_FAILED
    elif guard.failed:
        exit_code = EXIT_UNTRACKED
    else:
        exit_code = EXIT_OK
    return CohortResult(summary=summary, summary_path=summary_path, exit_code=exit_code,
                        extra={"worker_peak_rss_mb": result.get("worker_peak_rss_mb", []),
                               "history": result.get("history")})


def _join_shutdown(session: dict | None) -> None:
    """Wait for the embedded Ray's deferred shutdown (``ray_session(defer_shutdown=True)``), if one runs."""
    thread = (session or {}).get("shutdown")
    if thread is not None:
        thread.join()


def _epochs_total(spec: CohortSpec, stage: str) -> int:
    """Epochs a training stage runs in all (every trial's, for ``tune``): the progress display's total."""
    if stage == "tune":
        return int(spec.tuning.num_samples) * int(spec.tuning.epochs or spec.training.epochs)
    return int(spec.training.epochs)


__all__ = ["CohortResult", "RunNotStarted", "TrackingGuard", "build_plan", "output_lock", "ray_session",
           "run_cohort", "spec_to_dict", "start_local_ray"]
