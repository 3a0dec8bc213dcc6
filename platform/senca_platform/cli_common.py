"""What the cluster and registry commands share: the option help texts and the ``--tracking-uri`` option, the
one error guard (expected problems → ONE line on stderr and an exit code, no traceback unless ``SENCA_DEBUG=1``)
and the output formatting (JSON, tables, times, numbers, progress lines)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
from typing import Annotated, Any, Iterator, Optional

import typer

from jobs._say import say

ADDRESS_HELP = ("Ray Job API address http://HOST:8265 (the dashboard port); default $RAY_API_SERVER_ADDRESS or "
                "$RAY_ADDRESS. Token auth: $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH (never printed).")
TRACKING_HELP = "MLflow tracking URI (http://HOST:5000, sqlite:////abs/mlflow.db); default $MLFLOW_TRACKING_URI"


def tracking_uri_option(help: str = TRACKING_HELP) -> Any:
    """The ``--tracking-uri`` option of every command (declared here only), as an ``Annotated`` type:
    ``tracking_uri: TrackingUri = None``; ``help`` says what the default is for a command that differs."""
    return Annotated[Optional[str], typer.Option("--tracking-uri", help=help)]


#: ``--tracking-uri`` with :data:`TRACKING_HELP` (the registry commands)
TrackingUri = tracking_uri_option()


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """Expected problems → one line + exit code; anything else → one line too (traceback with SENCA_DEBUG=1)."""
    from .model_state import PredictError
    from .registry import RegistryError
    from .runner import EXIT_NOT_STARTED, RunNotStarted
    from .spec import SpecError
    from .job_api import ClusterError, ClusterUnreachable, scrub

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
    say(msg)

