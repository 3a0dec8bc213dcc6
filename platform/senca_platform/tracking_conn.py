"""The tracking server as a cohort run uses it: MLflow's HTTP settings, the probe before any work, credentials kept
out of logged text, and which driver process a parent run belongs to (``senca.driver``). Imported by (and
re-exported from) :mod:`senca_platform.tracking`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ._environ import env_settings as http_settings  # noqa: F401 - MLflow's HTTP settings for the duration
from ._redact import redact_text, redact_uris  # noqa: F401 - re-exported


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


__all__ = ["PROBE_HTTP", "RUN_HTTP_DEFAULTS", "TrackingUnavailable", "driver_alive", "driver_id", "http_settings",
           "is_remote", "probe_tracking", "redact_text", "redact_uris"]
