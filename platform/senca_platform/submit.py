"""Run a cohort on a Ray cluster through the Ray Job Submission SDK: ``senca-platform submit cohort.yaml``.

What is sent (``runtime_env``)
------------------------------
- ``--code upload`` (default): ``working_dir`` = a copy of this project (``platform/``, ``jobs/``, ``senca_core/``,
  ``pyproject.toml`` … without ``.venv``, ``runs``, ``data``, ``.git``, caches, and what ``.gitignore`` lists) plus
  the cohort bundle ``.senca_cohort/``; ``py_modules`` = ``platform/senca_platform`` (it lives one folder down in
  the source tree). The cluster's Python must already have the dependencies (the image of ``deploy/Dockerfile``);
  only the code travels, so local edits run without rebuilding the image. Entrypoint:
  ``python -m senca_platform.cli job-run .senca_cohort/<cohort>.yaml``.
- ``--code installed`` / ``--image URI``: the project is installed on the cluster (``deploy/Dockerfile``);
  ``working_dir`` is the cohort bundle only; entrypoint ``senca-platform job-run …``; ``--image`` also sets the
  runtime_env ``image_uri`` (Ray's container support) for the job.

The cohort file and its paths (the rule)
----------------------------------------
The spec is validated here first. Every input path of the spec (slide ``counts``/``spots``/``labels``/``image``/
``path``, ``preprocess.encoder_weights``) is resolved relative to the YAML file, as ``run`` does. Then:

1. ``--data auto`` (default): a file (or Visium folder) **under the cohort YAML's folder** is copied into the
   bundle, keeping its relative path, and the job reads it from there — as long as the bundle stays under
   ``--max-upload-mb`` (100 MiB; Ray's package limit is 512 MiB). Anything **outside** that folder (absolute
   paths, ``../``) is sent as its absolute path and must be readable at that same path on every Ray node
   (a shared filesystem / PVC); that is not checked (a warning when it is not visible here).
2. ``--data shared``: nothing is copied; every input path is sent absolute and must be cluster-visible.

Remote object-store URIs (``s3://``) are not read by the slide readers: mount the bucket (s3fs, a CSI driver)
and use its path. ``output_dir`` must be a cluster path: ``--out /shared/runs/x`` or an absolute ``output_dir``
in the spec (a relative one would land in the job's temporary working dir and be deleted). The tracking URI
must be reachable from the cluster: ``--tracking-uri``, else the spec's ``tracking.uri``, else
``$MLFLOW_TRACKING_URI`` here, else the cluster's own ``MLFLOW_TRACKING_URI`` (deploy/), else a sqlite store in
the cluster-side ``output_dir``. Credentials are never put in the job:
use ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` on the cluster (or ``--env`` at your own risk).

Ray token auth
--------------
The token comes from ``$RAY_AUTH_TOKEN`` (or the file ``$RAY_AUTH_TOKEN_PATH``); it is sent as
``Authorization: Bearer …`` and never printed, logged or put in the job's runtime_env. Without either, Ray's own
lookup applies (``RAY_AUTH_MODE=token`` + ``~/.ray/auth_token``). Cluster-side, the job driver uses the cluster's
own token (the nodes' environment).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from .job_api import (ClusterError, ClusterUnreachable, _address_of, _explain, auth_token, follow_logs, job_client,
                      job_logs, job_status, list_jobs, normalize_address, stop_job)
from ._confine import is_inside
from .project_copy import _size, copy_project, project_root

BUNDLE = ".senca_cohort"
_SECRET_ENV = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY)", re.I)


# ================================================================================================ submission
@dataclass
class Submission:
    """What ``submit`` sends: the staging directory (working_dir), the entrypoint, the runtime_env, metadata."""

    staging: Path
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    submission_id: str
    bundle_spec: str
    packaged: list[tuple[str, str, int]] = field(default_factory=list)  # (field, relative path, bytes)
    shared: list[tuple[str, str]] = field(default_factory=list)          # (field, absolute path)
    warnings: list[str] = field(default_factory=list)
    upload_bytes: int = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

def resolve_tracking(option: str | None, spec_uri: str | None) -> tuple[str | None, str]:
    """(uri, where it came from): ``--tracking-uri`` > the spec's ``tracking.uri`` > ``$MLFLOW_TRACKING_URI``;
    ``(None, "default")`` leaves it to the cluster (its ``MLFLOW_TRACKING_URI``, else sqlite in output_dir).
    Refuses URIs with credentials and relative sqlite/file stores."""
    if option:
        uri, source = option, "--tracking-uri"
    elif spec_uri:
        uri, source = spec_uri, "the spec's tracking.uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    else:
        return None, "default"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]+@", uri):
        raise ClusterError(f"the tracking URI from {source} carries credentials: the job would store them; set "
                           "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on the cluster instead")
    m = re.match(r"^sqlite:///(.*)$", uri)
    if m and not m.group(1).startswith("/"):
        raise ClusterError(f"{uri}: a sqlite store for a cluster job needs an absolute path (sqlite:////abs/mlflow.db)")
    if "://" not in uri and not uri.startswith("/"):
        raise ClusterError(f"{uri}: a file store for a cluster job needs an absolute path")
    return uri, source


def _job_prefix(name: str) -> str:
    return name if name.lower().startswith("senca") else f"senca-{name}"


def prepare_submission(spec_path: str | Path, *, out: str | None = None, tracking_uri: str | None = None,
                       code: str = "upload", image: str | None = None, data: str = "auto",
                       max_upload_mb: float = 100.0, env: list[str] | None = None, fresh: bool = False,
                       submission_id: str | None = None, project: str | Path | None = None) -> Submission:
    """Validate the spec, build the staging directory (project copy + cohort bundle) and the job description.

    Raises ``SpecError`` (invalid spec) or :class:`ClusterError` (a path / size / option problem)."""
    import yaml

    from .spec import PATH_FIELDS, load_spec, parse_yaml

    spec_path = Path(spec_path)
    spec = load_spec(spec_path)  # SpecError: field + line
    raw, _ = parse_yaml(spec_path.read_text(), str(spec_path))
    cohort_dir = spec_path.resolve().parent
    if data not in ("auto", "shared"):
        raise ClusterError(f"--data {data!r}: use auto (package files under the cohort folder) or shared")
    if image:
        code = "installed"
    if code not in ("upload", "installed"):
        raise ClusterError(f"--code {code!r}: use upload or installed")

    # output dir: a cluster path
    out_dir = out or (raw.get("output_dir") if isinstance(raw.get("output_dir"), str) else None)
    if not out_dir or not PurePosixPath(out_dir).is_absolute():
        raise ClusterError(f"output_dir {out_dir or '(default senca_out)'!s} is not an absolute path: a cluster job "
                           "needs a cluster-visible output directory, e.g. --out /shared/senca/runs/"
                           f"{spec.name}")
    uri, uri_source = resolve_tracking(tracking_uri, (raw.get("tracking") or {}).get("uri"))

    staging = Path(tempfile.mkdtemp(prefix="senca-submit-"))
    sub = Submission(staging=staging, entrypoint="", runtime_env={}, metadata={},
                     submission_id=submission_id or f"{_job_prefix(spec.name)}-{time.strftime('%Y%m%d-%H%M%S')}-"
                                                    f"{secrets.token_hex(2)}",
                     bundle_spec=f"{BUNDLE}/{spec_path.name}")
    try:
        bundle = staging / BUNDLE
        bundle.mkdir()
        limit = int(max_upload_mb * 1024 * 1024)
        missing: list[str] = []

        def place(field_name: str, value: str) -> str:
            p = Path(value).expanduser()
            local = p if p.is_absolute() else (cohort_dir / p)
            local = Path(os.path.normpath(local))
            if data == "auto" and is_inside(local, cohort_dir):
                rel = local.relative_to(cohort_dir)
                if not local.exists():
                    missing.append(f"{field_name}: {local}")
                    return rel.as_posix()
                target = bundle / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    (shutil.copytree if local.is_dir() else shutil.copy2)(local, target)
                    sub.packaged.append((field_name, rel.as_posix(), _size(local)))
                    if sum(b for _, _, b in sub.packaged) > limit:
                        raise ClusterError(
                            f"the cohort's files under {cohort_dir} exceed --max-upload-mb {max_upload_mb:g} MiB: "
                            "put the data on storage every Ray node mounts at the same path and submit with "
                            "--data shared (absolute paths), or raise --max-upload-mb (Ray's limit: 512 MiB)")
                return rel.as_posix()
            sub.shared.append((field_name, str(local)))
            if not local.exists():
                sub.warnings.append(f"{field_name}: {local} is not visible here; it must exist at that path on "
                                    "every Ray node")
            return str(local)

        for pi, patient in enumerate(raw.get("patients") or []):
            for si, slide in enumerate(patient.get("slides") or []):
                for name in PATH_FIELDS:
                    if isinstance(slide.get(name), str):
                        slide[name] = place(f"patients[{pi}].slides[{si}].{name}", slide[name])
        pre = raw.get("preprocess") or {}
        if isinstance(pre.get("encoder_weights"), str):
            pre["encoder_weights"] = place("preprocess.encoder_weights", pre["encoder_weights"])
        if missing:
            raise ClusterError("files to package are missing here: " + "; ".join(missing))
        raw["output_dir"] = out_dir
        raw.pop("ray", None)  # the job always joins the cluster it runs on
        if uri:
            raw.setdefault("tracking", {})["uri"] = uri
        else:
            sub.warnings.append("no tracking URI: the job uses the cluster's MLFLOW_TRACKING_URI, else "
                                f"sqlite:///{out_dir}/mlflow.db on the cluster (--tracking-uri http://MLFLOW:5000 "
                                "to choose)")
        if uri and re.match(r"^https?://(localhost|127\.0\.0\.1)[:/]", uri):
            sub.warnings.append(f"tracking URI {uri} is this machine's loopback: only a cluster on this machine "
                                "reaches it")
        (bundle / spec_path.name).write_text(
            f"# {spec_path.name} as submitted by senca-platform submit (paths rewritten for the cluster)\n"
            + yaml.safe_dump(raw, sort_keys=False))

        runtime_env: dict[str, Any] = {"working_dir": str(staging)}
        if code == "upload":
            root = Path(project) if project else project_root()
            if root is None or not (root / "platform" / "senca_platform").is_dir():
                raise ClusterError("the project source tree is not found next to this installation: use --project "
                                   "DIR, or --code installed when the cluster image has senca-platform installed")
            code_bytes = copy_project(root, staging)
            runtime_env["py_modules"] = [str(staging / "platform" / "senca_platform")]
            entry = ["python", "-m", "senca_platform.cli", "job-run", sub.bundle_spec]
        else:
            code_bytes = 0
            entry = ["senca-platform", "job-run", sub.bundle_spec]
        if image:
            runtime_env["image_uri"] = image
        if fresh:
            entry.append("--fresh")
        import shlex

        sub.entrypoint = " ".join(shlex.quote(x) for x in entry)
        from .ray_local import TRAIN_POLL_S

        env_vars = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_S}  # report latency (see ray_local)
        for item in env or []:
            key, sep, value = item.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ClusterError(f"--env {item!r}: expected NAME or NAME=VALUE")
            if key.startswith("RAY_AUTH"):
                raise ClusterError(f"--env {key}: the Ray token is never sent in a job; the cluster has its own")
            if not sep:
                if key not in os.environ:
                    raise ClusterError(f"--env {key}: not set in this environment")
                value = os.environ[key]
            if _SECRET_ENV.search(key):
                sub.warnings.append(f"--env {key}: a secret in the runtime_env is visible to anyone who can read "
                                    "the job's details on the dashboard")
            env_vars[key] = value
        runtime_env["env_vars"] = env_vars
        sub.runtime_env = runtime_env
        sub.metadata = {"senca.cohort": spec.name, "senca.spec": spec_path.name, "senca.output_dir": out_dir,
                        "senca.tracking_uri": uri or "(cluster default)",
                        "senca.tracking_source": uri_source, "senca.code": code, "senca.data": data}
        sub.upload_bytes = code_bytes + sum(b for _, _, b in sub.packaged)
        return sub
    except BaseException:
        sub.cleanup()
        raise


def submit(spec_path: str | Path, *, address: str | None, echo: Callable[[str], None] | None = None,
           **kwargs: Any) -> tuple[str, Submission]:
    """Prepare and submit the job; returns ``(submission_id, submission)``. The staging dir is removed after."""
    echo = echo or (lambda m: None)
    sub = prepare_submission(spec_path, **kwargs)
    try:
        for w in sub.warnings:
            echo(f"warning: {w}")
        c = job_client(address)
        echo(f"submitting {sub.submission_id} to {_address_of(c)}: {len(sub.packaged)} packaged input(s), "
             f"{len(sub.shared)} cluster path(s), {sub.upload_bytes / 2**20:.1f} MiB to upload")
        try:
            job_id = c.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, metadata=sub.metadata,
                                  submission_id=sub.submission_id)
        except Exception as err:  # noqa: BLE001
            raise _explain(err, _address_of(c), "submitting the job") from None
        return job_id, sub
    finally:
        sub.cleanup()


# ================================================================================================ cluster side
def job_entry(spec_path: str | Path, *, fresh: bool = False, tracking_uri: str | None = None,
              echo: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any] | None]:
    """What the job's entrypoint runs ON the cluster: the same ``run_cohort`` as ``senca-platform run``, joined to
    the cluster it runs on (``RAY_ADDRESS`` set by the job supervisor, else ``auto``), then the model state
    (gene panel, PCA basis, region model) attached to the MLflow run for ``predict``.

    Tracking URI: ``tracking_uri`` > the spec's ``tracking.uri`` > ``$MLFLOW_TRACKING_URI`` (the cluster's) >
    sqlite in the output directory."""
    import senca_platform
    from jobs._say import say

    from .runner import run_cohort
    from .spec import load_spec

    echo = echo or say
    echo(f"job-run: {spec_path} (code: {Path(senca_platform.__file__).parent})")
    spec = load_spec(spec_path)
    if tracking_uri:
        spec.tracking.uri = tracking_uri
    elif not spec.tracking.uri and os.environ.get("MLFLOW_TRACKING_URI"):
        spec.tracking.uri = os.environ["MLFLOW_TRACKING_URI"]
    spec.ray.address = os.environ.get("RAY_ADDRESS") or "auto"
    spec.ray.num_cpus = None
    result = run_cohort(spec, spec_path=spec_path, fresh=fresh, progress=False, echo=echo)
    summary = result.summary
    model = summary.get("registered_model") or {}
    if summary.get("mlflow_run_id") and model.get("version") is not None:
        try:
            from .model_state import attach_model_state

            attach_model_state(summary["mlflow"]["tracking_uri"], model_run_id(summary), spec.output_dir,
                               model_name=model["name"], model_version=model["version"], echo=echo)
        except Exception as err:  # noqa: BLE001 - the cohort is done; predict can still build it later
            echo(f"warning: model state not attached ({type(err).__name__}: {err})")
    print(json.dumps({"senca_summary": {k: summary.get(k) for k in
                                        ("cohort", "status", "n_slides", "n_failed", "mlflow_run_id",
                                         "registered_model_version", "output_dir")}}), flush=True)
    return result.exit_code, summary


def model_run_id(summary: dict[str, Any]) -> str:
    """The run that holds the registered model version: this run, or the earlier one whose version was reused."""
    model = summary.get("registered_model") or {}
    if model.get("reused") and model.get("version") is not None:
        from .registry import client

        mv = client(summary["mlflow"]["tracking_uri"]).get_model_version(model["name"], str(model["version"]))
        return mv.run_id or summary["mlflow_run_id"]
    return summary["mlflow_run_id"]


__all__ = ["BUNDLE", "ClusterError", "ClusterUnreachable", "Submission", "auth_token", "copy_project",
           "follow_logs", "job_client", "job_entry", "job_logs", "job_status", "list_jobs", "normalize_address",
           "prepare_submission", "project_root", "resolve_tracking", "stop_job", "submit"]
