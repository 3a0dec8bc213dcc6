"""The Ray Job API for ``senca-platform submit`` and ``jobs …``: the address, the token, the
``JobSubmissionClient``, and the job verbs (status, logs [follow], stop, list).

The token comes from ``$RAY_AUTH_TOKEN`` (or the file ``$RAY_AUTH_TOKEN_PATH``); it is sent as
``Authorization: Bearer …`` and never printed, logged or put in a job's runtime_env (:func:`scrub`). Whatever the
SDK raises becomes ONE :class:`ClusterError` line (:class:`ClusterUnreachable` when nothing reached the cluster).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from jobs._say import PREFIX

from .ray_local import ClusterError, ClusterUnreachable

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# ================================================================================================ auth + client
def auth_token() -> str | None:
    """The Ray token from ``$RAY_AUTH_TOKEN`` or the file named by ``$RAY_AUTH_TOKEN_PATH`` (never printed)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as err:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH points at an unreadable file ({err.strerror})") from None
        if not token:
            raise ClusterError("RAY_AUTH_TOKEN_PATH points at an empty file")
        return token
    return None


def scrub(text: str) -> str:
    """``text`` with the auth token (``$RAY_AUTH_TOKEN`` or the file ``$RAY_AUTH_TOKEN_PATH``) replaced by ``***``."""
    try:
        token = auth_token()
    except ClusterError:
        token = None
    return text.replace(token, "***") if token and len(token) >= 4 else text


def normalize_address(address: str | None) -> str:
    """``http://HOST:8265`` from ``--address`` / ``$RAY_API_SERVER_ADDRESS`` / ``$RAY_ADDRESS`` (``HOST:PORT`` gets
    ``http://``). Ray Client (``ray://``) and GCS addresses are refused: the Job API is the dashboard's port."""
    address = (address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address:
        raise ClusterError("no cluster address: pass --address http://HOST:8265 (the Ray dashboard / Job API) "
                           "or set RAY_API_SERVER_ADDRESS")
    if address.startswith("ray://"):
        raise ClusterError(f"{address}: Ray Client addresses are not used; give the dashboard address "
                           "http://HOST:8265")
    if address == "auto":
        raise ClusterError("'auto' is not a Job API address; give http://HOST:8265")
    if "://" not in address:
        address = f"http://{address}"
    if not re.match(r"^https?://", address):
        raise ClusterError(f"{address}: expected http://HOST:PORT (the Ray dashboard / Job API)")
    return address.rstrip("/")


def _explain(err: BaseException, address: str, what: str) -> ClusterError:
    """One line for whatever the SDK raised (connection refused, auth failure, HTTP error, unknown job)."""
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover
        AuthenticationError = ()  # type: ignore[assignment]
    text = scrub(str(err).strip())
    first = text.splitlines()[0] if text else type(err).__name__
    low = text.lower()
    if isinstance(err, AuthenticationError) or "authentication" in low or "status code 401" in low \
            or "status code 403" in low or "unauthorized" in low or "forbidden" in low:
        hint = ("the token in RAY_AUTH_TOKEN was refused" if auth_token() else
                "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token")
        return ClusterError(f"Ray cluster at {address} refused the request ({what}): authentication failed; {hint}")
    if isinstance(err, (ConnectionError, OSError)) or "failed to connect" in low or "connection refused" in low \
            or "max retries exceeded" in low or "cannot connect" in low:
        return ClusterUnreachable(f"cannot reach the Ray Job API at {address} ({what}): is the cluster up and the "
                                  "dashboard port (default 8265) reachable?")
    if "does not exist" in low or "status code 404" in low or "not found" in low:
        return ClusterError(f"{what}: not found on {address} ({first[:300]})")
    return ClusterError(f"{what} on {address} failed: {type(err).__name__}: {first[:500]}")


def job_client(address: str | None):
    """A ``JobSubmissionClient`` on the cluster (connection and auth checked now)."""
    address = normalize_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    import logging

    from ray.job_submission import JobSubmissionClient

    for name in ("ray", "ray.dashboard", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not the SDK's per-package upload chatter

    try:
        c = JobSubmissionClient(address, headers=headers)
        c._do_request("GET", "/api/jobs/")  # version check may be open; this one needs the token
    except Exception as err:  # noqa: BLE001 - translated into one line
        raise _explain(err, address, "connecting") from None
    c._senca_address = address  # type: ignore[attr-defined]
    return c


def _address_of(c) -> str:
    return getattr(c, "_senca_address", "the cluster")


# ================================================================================================ job verbs
def _request(address: str | None, what: str, call: Callable[[Any], Any]) -> Any:
    """``call(client)`` on the cluster's Job API; whatever the SDK raises becomes one :class:`ClusterError` line."""
    c = job_client(address)
    try:
        return call(c)
    except Exception as err:  # noqa: BLE001 - translated into one line
        raise _explain(err, _address_of(c), what) from None


def job_status(address: str | None, job_id: str) -> dict[str, Any]:
    return _info_dict(_request(address, f"job {job_id}", lambda c: c.get_job_info(job_id)))


def _info_dict(info) -> dict[str, Any]:
    status = getattr(info.status, "value", str(info.status))
    return {"job_id": info.submission_id or info.job_id, "status": str(status),
            "entrypoint": info.entrypoint, "message": scrub(info.message or ""),
            "start_time": info.start_time, "end_time": info.end_time, "metadata": dict(info.metadata or {}),
            "driver_exit_code": getattr(info, "driver_exit_code", None)}


def job_logs(address: str | None, job_id: str) -> str:
    return scrub(_request(address, f"logs of job {job_id}", lambda c: c.get_job_logs(job_id)))


def follow_logs(address: str | None, job_id: str, write: Callable[[str], None], *, poll_s: float = 1.0,
                timeout_s: float | None = None) -> dict[str, Any]:
    """Stream the job's logs to ``write`` until it ends; returns its final status dict."""
    c = job_client(address)
    try:
        c.get_job_info(job_id)
    except Exception as err:  # noqa: BLE001
        raise _explain(err, _address_of(c), f"job {job_id}") from None

    async def _tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            write(scrub(chunk))

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        if deadline is None:
            asyncio.run(_tail())
        else:
            asyncio.run(asyncio.wait_for(_tail(), timeout=timeout_s))
    except asyncio.TimeoutError:
        raise ClusterError(f"job {job_id} still running after {timeout_s:.0f}s (it goes on; "
                           f"`senca-platform jobs stop {job_id}` stops it)") from None
    except ClusterError:
        raise
    except Exception as err:  # noqa: BLE001 - the stream broke: fall back to polling
        write(f"{PREFIX} log stream interrupted ({type(err).__name__}); polling for the end\n")
    while True:
        info = job_status(address, job_id)
        if info["status"] in TERMINAL:
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} still {info['status']} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def stop_job(address: str | None, job_id: str) -> bool:
    return bool(_request(address, f"stopping job {job_id}", lambda c: c.stop_job(job_id)))


def list_jobs(address: str | None, *, all_jobs: bool = False) -> list[dict[str, Any]]:
    jobs = _request(address, "listing jobs", lambda c: c.list_jobs())
    rows = [_info_dict(j) for j in jobs if j.submission_id]
    if not all_jobs:
        rows = [r for r in rows if "senca.cohort" in r["metadata"]]
    return sorted(rows, key=lambda r: r["start_time"] or 0, reverse=True)


__all__ = ["TERMINAL", "ClusterError", "ClusterUnreachable", "auth_token", "follow_logs", "job_client", "job_logs",
           "job_status", "list_jobs", "normalize_address", "scrub", "stop_job"]
