"""The cluster commands of ``senca-platform``: ``submit``, ``jobs …`` (and the hidden ``job-run`` that a
submitted job executes on the cluster); ``register(app)`` mounts them with the registry commands of
``cli_registry`` (``models …``, ``runs …``, ``predict``).

Mounted on the main app by ``register(app)`` (one line at the end of ``cli.py``). Every command turns the
problems it expects (cluster down, bad token, unknown model, invalid spec) into ONE line on stderr and a non-zero
exit code — no traceback (``SENCA_DEBUG=1`` shows it; ``cli_common._guard``). Exit codes: 0 ok; 1 failed (a job,
a slide, a request); 2 invalid input (spec / slides file / options).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import ADDRESS_HELP, _echo_json, _err, _guard, _progress, _table, _ts, tracking_uri_option
from .cli_registry import PREDICT_HELP, models_app, predict_cmd, runs_app

jobs_app = typer.Typer(help="Ray jobs on a cluster: status, logs [--follow], stop, list.", no_args_is_help=True,
                       add_completion=False)


#: ``--tracking-uri`` of ``submit`` and ``job-run`` (cli_common.tracking_uri_option), with their defaults
SubmitTrackingUri = tracking_uri_option(
    "MLflow tracking URI reachable FROM the cluster; default the spec's tracking.uri, then $MLFLOW_TRACKING_URI, "
    "then the cluster's own MLFLOW_TRACKING_URI, then sqlite in the cluster output_dir")
JobRunTrackingUri = tracking_uri_option(
    "default: the spec's tracking.uri, then $MLFLOW_TRACKING_URI, then sqlite in the output dir")


# ===================================================================================================== submit
def submit_cmd(
    spec: Path = typer.Argument(..., help="the cohort spec (YAML)", show_default=False),
    address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="output directory ON THE CLUSTER (absolute, "
                                      "cluster-visible); default the spec's output_dir when absolute"),
    tracking_uri: SubmitTrackingUri = None,
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
    tracking_uri: JobRunTrackingUri = None,
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
    from .job_api import job_status

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
    from .job_api import follow_logs, job_logs

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
    from .job_api import stop_job

    with _guard():
        stopped = stop_job(address, job_id)
        typer.echo(f"{job_id}: {'stop requested' if stopped else 'not running (nothing to stop)'}")


@jobs_app.command("list")
def jobs_list(address: Optional[str] = typer.Option(None, "--address", "-a", help=ADDRESS_HELP),
              all_jobs: bool = typer.Option(False, "--all", help="every job, not only senca-platform's"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Jobs on the cluster (newest first): id, status, cohort, start time."""
    from .job_api import list_jobs

    with _guard():
        rows = list_jobs(address, all_jobs=all_jobs)
        if as_json:
            _echo_json(rows)
            return
        _table([["JOB", "STATUS", "COHORT", "STARTED", "OUTPUT"]] +
               [[r["job_id"], r["status"], r["metadata"].get("senca.cohort", "-"), _ts(r["start_time"]),
                 r["metadata"].get("senca.output_dir", "-")] for r in rows])


# ===================================================================================================== mount
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
