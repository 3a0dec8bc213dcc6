"""The cluster and registry commands of ``senca-platform``: ``submit``, ``jobs …``, ``models …``, ``runs …``,
``predict`` (and the hidden ``job-run`` that a submitted job executes on the cluster).

Mounted on the main app by ``register(app)`` (one line at the end of ``cli.py``). Every command turns the
problems it expects (cluster down, bad token, unknown model, invalid spec) into ONE line on stderr and a non-zero
exit code — no traceback (``SENCA_DEBUG=1`` shows it). Exit codes: 0 ok; 1 failed (a job, a slide, a request);
2 invalid input (spec / slides file / options).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from ._console import stdout_to_stderr

ADDRESS_HELP = ("Ray Job API address http://HOST:8265 (the dashboard port); default $RAY_API_SERVER_ADDRESS or "
                "$RAY_ADDRESS. Token auth: $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH (never printed).")
TRACKING_HELP = "MLflow tracking URI (http://HOST:5000, sqlite:////abs/mlflow.db); default $MLFLOW_TRACKING_URI"

jobs_app = typer.Typer(help="Ray jobs on a cluster: status, logs [--follow], stop, list.", no_args_is_help=True,
                       add_completion=False)
models_app = typer.Typer(help="The MLflow model registry: list, show, promote (alias), attach-state.",
                         no_args_is_help=True, add_completion=False)
runs_app = typer.Typer(help="Cohort (and prediction) runs in MLflow: list, show.", no_args_is_help=True,
                       add_completion=False)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """Expected problems → one line + exit code; anything else → one line too (traceback with SENCA_DEBUG=1)."""
    from .predict import PredictError
    from .registry import RegistryError
    from .runner import EXIT_NOT_STARTED, RunNotStarted
    from .spec import SpecError
    from .submit import ClusterError, ClusterUnreachable, scrub

    try:
        yield
    except typer.Exit:
        raise
    except SpecError as err:
        _err(scrub(str(err)))
        raise typer.Exit(2)
    except ClusterUnreachable as err:  # nothing reached the cluster: like a run that did not start
        _err(f"error: {scrub(str(err))}")
        raise typer.Exit(EXIT_NOT_STARTED)
    except (ClusterError, RegistryError, PredictError) as err:
        _err(f"error: {scrub(str(err))}")
        raise typer.Exit(1)
    except RunNotStarted as err:  # job-run: the tracking server is unreachable / the output directory is busy
        _err(f"error: {scrub(str(err))}")
        raise typer.Exit(EXIT_NOT_STARTED)
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130)
    except BrokenPipeError:  # `… | head`: stop quietly
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")
        raise typer.Exit(0)
    except Exception as err:  # noqa: BLE001 - never a bare traceback for the user
        if os.environ.get("SENCA_DEBUG"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        _err(f"error: {type(err).__name__}: {scrub(first)[:500]} (SENCA_DEBUG=1 shows the traceback)")
        raise typer.Exit(1)


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _ts(ms: Any) -> str:
    if not ms:
        return "-"
    return _dt.datetime.fromtimestamp(int(ms) / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]]) -> None:
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _progress(msg: str) -> None:
    print(f"[senca-platform] {msg}", file=sys.stderr, flush=True)


# ===================================================================================================== submit
def submit_cmd(
    spec: Path = typer.Argument(..., help="the cohort spec (YAML)", show_default=False),
    address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="output directory ON THE CLUSTER (absolute, "
                                      "cluster-visible); default the spec's output_dir when absolute"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI reachable FROM "
                                               "the cluster; default the spec's tracking.uri, then "
                                               "$MLFLOW_TRACKING_URI, then the cluster's own MLFLOW_TRACKING_URI, "
                                               "then sqlite in the cluster output_dir"),
    data: str = typer.Option("auto", "--data", help="auto: input files under the cohort YAML's folder are "
                             "packaged with the job (<= --max-upload-mb), others must be cluster-visible absolute "
                             "paths; shared: nothing is packaged, every path must be cluster-visible"),
    code: str = typer.Option("upload", "--code", help="upload: ship this project's source as the working_dir "
                             "(the cluster Python must have the dependencies); installed: the cluster image has "
                             "senca-platform installed"),
    image: Optional[str] = typer.Option(None, "--image", help="container image for the job (runtime_env "
                                        "image_uri; implies --code installed)"),
    max_upload_mb: float = typer.Option(100.0, "--max-upload-mb", help="limit on the packaged cohort files"),
    env: Optional[List[str]] = typer.Option(None, "--env", help="NAME or NAME=VALUE passed to the job (repeat)"),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="submission id (default senca-<cohort>-<time>)"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore cached stage outputs on the cluster"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream the job's logs until it ends; exit code = "
                                "the job's result"),
    as_json: bool = typer.Option(False, "--json", help="print {job_id, ...} as JSON"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and show what would be sent; submit nothing"),
) -> None:
    """Submit a cohort run to a Ray cluster (Ray Job Submission SDK); the job runs the same pipeline as `run`."""
    from .submit import follow_logs, prepare_submission, submit

    with _guard():
        kwargs = dict(out=out, tracking_uri=tracking_uri, code=code, image=image, data=data,
                      max_upload_mb=max_upload_mb, env=env, fresh=fresh, submission_id=job_id)
        if dry_run:
            sub = prepare_submission(spec, **kwargs)
            try:
                for w in sub.warnings:
                    _err(f"warning: {w}")
                _echo_json({"submission_id": sub.submission_id, "entrypoint": sub.entrypoint,
                            "runtime_env": {k: (v if k != "working_dir" else "<staging dir>")
                                            for k, v in sub.runtime_env.items() if k != "py_modules"},
                            "metadata": sub.metadata,
                            "packaged": [{"field": f, "path": p, "bytes": b} for f, p, b in sub.packaged],
                            "cluster_paths": [{"field": f, "path": p} for f, p in sub.shared],
                            "upload_mib": round(sub.upload_bytes / 2**20, 2)})
            finally:
                sub.cleanup()
            return
        jid, sub = submit(spec, address=address, echo=_progress, **kwargs)
        if as_json:
            _echo_json({"job_id": jid, "entrypoint": sub.entrypoint, "metadata": sub.metadata})
        else:
            typer.echo(jid)
            _progress(f"submitted: `senca-platform jobs logs {jid} --follow` / `jobs status {jid}` / "
                      f"`jobs stop {jid}`")
        if follow:
            info = follow_logs(address, jid, lambda s: (sys.stdout.write(s), sys.stdout.flush()))
            _progress(f"job {jid}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
            raise typer.Exit(0 if info["status"] == "SUCCEEDED" else 1)


def job_run_cmd(
    spec: Path = typer.Argument(..., show_default=False),
    fresh: bool = typer.Option(False, "--fresh"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="default: the spec's tracking.uri, "
                                               "then $MLFLOW_TRACKING_URI, then sqlite in the output dir"),
) -> None:
    """(Runs on the cluster, inside a Ray job: what `submit` and deploy/kuberay/rayjob.yaml start.) The cohort
    pipeline joined to this Ray cluster, then the model state attached for `predict`."""
    from .submit import job_entry

    with _guard():
        code, _ = job_entry(spec, fresh=fresh, tracking_uri=tracking_uri)
    raise typer.Exit(code)


# ===================================================================================================== jobs
@jobs_app.command("status")
def jobs_status(job_id: str = typer.Argument(...),
                address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """A job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    from .submit import job_status

    with _guard():
        info = job_status(address, job_id)
        if as_json:
            _echo_json(info)
        else:
            typer.echo(f"{info['job_id']}: {info['status']}" + (f" - {info['message']}" if info["message"] else ""))


@jobs_app.command("logs")
def jobs_logs(job_id: str = typer.Argument(...),
              address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP),
              follow: bool = typer.Option(False, "--follow", "-f", help="stream until the job ends; exit code = "
                                          "0 when it SUCCEEDED, 1 otherwise"),
              timeout: Optional[float] = typer.Option(None, "--timeout", help="stop following after SECONDS")
              ) -> None:
    """A job's driver logs (everything so far, or streamed with --follow)."""
    from .submit import follow_logs, job_logs

    with _guard():
        if not follow:
            typer.echo(job_logs(address, job_id), nl=False)
            return
        info = follow_logs(address, job_id, lambda s: (sys.stdout.write(s), sys.stdout.flush()), timeout_s=timeout)
        _progress(f"job {job_id}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
        raise typer.Exit(0 if info["status"] == "SUCCEEDED" else 1)


@jobs_app.command("stop")
def jobs_stop(job_id: str = typer.Argument(...),
              address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP)) -> None:
    """Stop a running job."""
    from .submit import stop_job

    with _guard():
        stopped = stop_job(address, job_id)
        typer.echo(f"{job_id}: {'stop requested' if stopped else 'not running (nothing to stop)'}")


@jobs_app.command("list")
def jobs_list(address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP),
              all_jobs: bool = typer.Option(False, "--all", help="every job, not only senca-platform's"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Jobs on the cluster (newest first): id, status, cohort, start time."""
    from .submit import list_jobs

    with _guard():
        rows = list_jobs(address, all_jobs=all_jobs)
        if as_json:
            _echo_json(rows)
            return
        _table([["JOB", "STATUS", "COHORT", "STARTED", "OUTPUT"]] +
               [[r["job_id"], r["status"], r["metadata"].get("senca.cohort", "-"), _ts(r["start_time"]),
                 r["metadata"].get("senca.output_dir", "-")] for r in rows])


# ===================================================================================================== models
def _uri(tracking_uri: Optional[str]) -> str:
    from .registry import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri)


@models_app.command("list")
def models_list(tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered models: versions, latest, aliases, the cohort of the latest version."""
    from .registry import list_models

    with _guard():
        rows = list_models(_uri(tracking_uri))
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            typer.echo("no registered models")
            return
        _table([["NAME", "VERSIONS", "LATEST", "ALIASES", "COHORT", "UPDATED"]] +
               [[r["name"], str(r["n_versions"]), _fmt(r["latest_version"]),
                 ",".join(f"{a}->v{v}" for a, v in r["aliases"].items()) or "-", r["cohort"] or "-",
                 _ts(r["updated"])] for r in rows])


@models_app.command("show")
def models_show(name: str = typer.Argument(...),
                version: Optional[int] = typer.Option(None, "--version", "-v", help="a version number"),
                alias: Optional[str] = typer.Option(None, "--alias", help="an alias (e.g. champion)"),
                tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """One model version (default: the latest): metrics, params, the cohort it was trained on, the per-patient
    summary table, its aliases, model state and prediction runs."""
    from .registry import show_model

    with _guard():
        info = show_model(_uri(tracking_uri), name, version=version, alias=alias)
        if as_json:
            _echo_json(info)
            return
        typer.echo(f"{info['name']} version {info['version']}"
                   + (f"  aliases: {', '.join(info['aliases'])}" if info["aliases"] else "")
                   + f"  ({info['status']}, registered {_ts(info['created'])})")
        typer.echo(f"  uri:        {info['uri']}")
        typer.echo(f"  source:     {info['source']}")
        typer.echo(f"  run:        {info['run_id']} ({info.get('run_name', '-')}, {info.get('run_status', '-')})")
        if info.get("ui"):
            typer.echo(f"  ui:         {info['ui']}")
        c = info.get("cohort") or {}
        if c:
            typer.echo(f"  cohort:     {c.get('name')}: {c.get('n_patients')} patient(s), {c.get('n_slides')} "
                       f"slide(s) [{', '.join(c.get('slides') or [])}], status {c.get('status') or '-'}")
            if c.get("spec"):
                typer.echo(f"  spec:       {c['spec']}")
        for key, link in (info.get("summary") or {}).items():
            if not key.startswith("runs:/"):
                typer.echo(f"  per-patient summary ({key}): {link}")
        typer.echo(f"  model state: {info.get('model_state') or 'not attached (predict builds it on first use)'}")
        if info["metrics"]:
            typer.echo("  metrics:")
            for k, v in info["metrics"].items():
                typer.echo(f"    {k} = {_fmt(v)}")
        if info["params"]:
            typer.echo("  params:")
            for k, v in info["params"].items():
                typer.echo(f"    {k} = {v}")
        for p in info.get("predict_runs") or []:
            typer.echo(f"  predict run: {p['run_id']} ({p['name']}, {p['status']})")


@models_app.command("promote")
def models_promote(name: str = typer.Argument(...), version: int = typer.Argument(...),
                   alias: str = typer.Option("champion", "--alias", help="the alias to point at VERSION"),
                   tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP)) -> None:
    """Point an alias (default champion) at a version: `predict --model models:/NAME@ALIAS` then uses it."""
    from .registry import promote_model

    with _guard():
        r = promote_model(_uri(tracking_uri), name, version, alias)
        prev = f" (was version {r['previous']})" if r["previous"] not in (None, r["version"]) else ""
        typer.echo(f"{r['name']}@{r['alias']} -> version {r['version']}{prev}")


@models_app.command("attach-state")
def models_attach_state(name: str = typer.Argument(...),
                        version: Optional[int] = typer.Option(None, "--version", "-v"),
                        alias: Optional[str] = typer.Option(None, "--alias"),
                        output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="the training run's "
                                                                  "output directory (default: its param)"),
                        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP)
                        ) -> None:
    """Log a model version's preprocessing state (gene panel, PCA basis) and region model from its training
    run's output directory to the run's model_state/ (predict needs it; submitted jobs attach it themselves)."""
    from .predict import attach_model_state
    from .registry import ModelRef, client, get_version

    with _guard():
        uri = _uri(tracking_uri)
        mv = get_version(client(uri), uri, ModelRef(name, version=str(version) if version else None, alias=alias))
        m = attach_model_state(uri, mv.run_id, output_dir, model_name=mv.name, model_version=mv.version,
                               echo=typer.echo)
        typer.echo(json.dumps({"reproduced": m["reproduced"]}))


# ===================================================================================================== runs
@runs_app.command("list")
def runs_list(tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
              experiment: Optional[str] = typer.Option(None, "--experiment", "-e"),
              kind: str = typer.Option("cohort", "--kind", help="cohort, predict or all"),
              limit: int = typer.Option(50, "--limit"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Cohort runs (MLflow parent runs), newest first; --kind predict for prediction runs."""
    from .registry import list_runs

    with _guard():
        rows = list_runs(_uri(tracking_uri), experiment=experiment, kind=kind, max_results=limit)
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            typer.echo("no runs")
            return
        _table([["RUN", "KIND", "COHORT", "STATUS", "STARTED", "MEAN_ARI", "SLIDES OK/FAILED", "MODEL"]] +
               [[r["run_id"], r["kind"], r["cohort"] or "-", r["senca_status"] or r["status"], _ts(r["start_time"]),
                 _fmt(r["mean_ari"]), f"{_fmt(r['n_slides_ok'] and int(r['n_slides_ok']))}/"
                 f"{_fmt(r['n_slides_failed'] if r['n_slides_failed'] is None else int(r['n_slides_failed']))}",
                 r["model"] or "-"] for r in rows])


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(...),
              tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """A run: status, per-slide errors, metrics, params, child runs (stages, trials), artifacts, model versions."""
    from .registry import show_run

    with _guard():
        info = show_run(_uri(tracking_uri), run_id)
        if as_json:
            _echo_json(info)
            return
        typer.echo(f"run {info['run_id']} ({info['name']}): {info['status']}, {_ts(info['start_time'])} -> "
                   f"{_ts(info['end_time'])}")
        typer.echo(f"  artifacts: {info['artifact_uri']}  [{', '.join(info['artifacts'])}]")
        for k, v in info["tags"].items():
            if k.startswith("senca."):
                typer.echo(f"  {k}: {v}")
        for mv in info["model_versions"]:
            typer.echo(f"  model: {mv['name']} version {mv['version']} {mv['aliases'] or ''}")
        for ch in info["children"]:
            typer.echo(f"  child: {ch['name']} {ch['run_id']} {ch['status']}")
        for k, v in info["metrics"].items():
            typer.echo(f"  metric {k} = {_fmt(v)}")
        for k, v in info["params"].items():
            typer.echo(f"  param {k} = {v}")


# ===================================================================================================== predict
def predict_cmd(
    slides: Path = typer.Argument(..., help="slides.yaml: `patients:` as in a cohort spec (a cohort.yaml works "
                                  "too: only its patients are used)", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="models:/NAME@ALIAS or models:/NAME/VERSION"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default: the slides file's "
                                       "output_dir if set, else predict_out/ next to it)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment of the prediction run "
                                             "(default: the training run's)"),
    no_track: bool = typer.Option(False, "--no-track", help="do not log a prediction run"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Apply a registered model to new slides (no training); see PREDICT_HELP."""
    from .predict import predict_cohort

    with _guard():
        with stdout_to_stderr(as_json):
            result = predict_cohort(model, slides, tracking_uri=_uri(tracking_uri), output_dir=out,
                                    experiment=experiment, track=not no_track, echo=_progress)
        if as_json:
            _echo_json(result.summary)
        else:
            _table([["patient", "slide", "spots", "regions", "ARI", "NMI", "status"]] +
                   [[s["patient"], s["slide"], str(s["n_spots"]), str(s["n_regions"]), _fmt(s["ari"]),
                     _fmt(s["nmi"]), s["status"] if s["status"] == "ok" else f"FAILED: {s['error']}"]
                    for s in result.summary["slides"]])
            m = result.summary["model"]
            typer.echo(f"model: {m['name']} version {m['version']} ({m['uri']}); "
                       f"summary: {result.summary_path}" + (f"; MLflow run {result.summary['mlflow_run_id']}"
                                                            if result.summary["mlflow_run_id"] else ""))
    raise typer.Exit(result.exit_code)


# ===================================================================================================== mount
PREDICT_HELP = (
    "Apply a registered model to new slides (no training): the slides are preprocessed with the training "
    "cohort's gene panel and PCA basis and assigned to its regions (the cohort's fitted region model), then "
    "summaries, h5ad, region maps and tables as `run` writes them; logged as an MLflow run linked to the model "
    "version. A slide of the training cohort gets its training regions back.")

SUBMIT_HELP = (
    "Submit a cohort run to a Ray cluster (Ray Job Submission SDK); the job runs the same pipeline as `run` "
    "(then attaches the model state that `predict` needs).\n\n"
    "PATHS: input files under the cohort YAML's folder are packaged with the job (up to --max-upload-mb); "
    "anything else (absolute paths, ../) is sent as its absolute path and must exist at that path on every Ray "
    "node (shared storage). --data shared packages nothing. Object-store URIs (s3://) are not read: mount them. "
    "--out must be an absolute cluster path; the MLflow URI must be reachable from the cluster.")


def register(app: typer.Typer) -> None:
    """Mount the cluster / registry commands on the main ``senca-platform`` app."""
    app.command("submit", help=SUBMIT_HELP)(submit_cmd)
    app.command("job-run", hidden=True)(job_run_cmd)
    app.command("predict", help=PREDICT_HELP)(predict_cmd)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.add_typer(runs_app, name="runs")


__all__ = ["jobs_app", "models_app", "register", "runs_app"]
