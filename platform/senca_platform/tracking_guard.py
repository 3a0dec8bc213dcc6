"""Tracking that never stops a run: :class:`TrackingGuard` books every call into MLflow as logged or pending, and
:func:`mark_untracked` writes what ``senca-platform sync`` needs when tracking failed mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


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
            self._failed(item, err)
            self.pending.append(item)
            return None
        self.logged.append(item)
        return value

    def attempt(self, item: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A preliminary call (a stage's start) whose item the later :meth:`call` of the same item books as
        logged or pending: a failure here stops tracking like any other, without booking the item twice."""
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001
            self._failed(item, err)
            return None

    def _failed(self, item: str, err: Exception) -> None:
        from .registry import _explain
        from .tracking import redact_uris

        self.error = redact_uris(str(_explain(err, self.uri, f"logging {item}")))
        self.echo(f"warning: MLflow tracking failed ({self.error}); the run goes on without it: results stay "
                  "on disk, `senca-platform sync OUTPUT_DIR` logs them later")


def mark_untracked(summary: dict[str, Any], guard: TrackingGuard, journal, tracker, out: Path) -> None:
    """The summary of a run whose tracking failed: what failed, what was not logged, how to log it later."""
    pending = list(guard.pending)
    if "finish" not in pending:
        pending.append("finish")
    pending_file = journal.write_pending(tracker, guard.error, pending, guard.logged)
    summary["tracking"] = {"status": "incomplete", "error": guard.error, "pending": pending,
                           "pending_file": str(pending_file), "sync": f"senca-platform sync {out}"}
    summary["tracking_error"] = guard.error
