"""Writing params and metrics into MLflow for :class:`~senca_platform.tracking.MlflowTracker`: batched helpers, and
:class:`LiveLog`, which sends the per-epoch curve while a stage runs.

Timestamps are the real ones: a history row or an epoch record with ``time`` (wall-clock seconds) is logged at that
time (MLflow milliseconds), ``step`` = its epoch; only rows without a time get "now".
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .spec import redact

_MAX_PARAM = 6000
#: keys of a history row / epoch record that are not metrics
NOT_METRICS = frozenset({"epoch", "time", "trial", "checkpoint_path", "training_iteration"})
#: live metrics are sent at most this often (seconds): a fast training loop does not hammer a remote server
FLUSH_EVERY_S = 2.0
_BATCH = 1000


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def _param_value(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def ms(t: Any) -> int | None:
    """Wall-clock seconds → MLflow's integer milliseconds (``None`` for a missing or non-finite time)."""
    t = _finite(t)
    return None if t is None else int(round(t * 1000))


def now_ms() -> int:
    return int(time.time() * 1000)


def row_metrics(row: dict[str, Any], step: int, timestamp: int) -> list:
    """The numeric values of one history row / epoch record as MLflow metrics (bookkeeping keys left out)."""
    from mlflow.entities import Metric

    return [Metric(str(k), v, timestamp, step) for k, v in ((k, _finite(v)) for k, v in row.items()
                                                            if k not in NOT_METRICS) if v is not None]


def log_items(client, run_id: str, items: list) -> None:
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, metrics=items[i:i + _BATCH])


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(str(k)[:250], _param_value(v)) for k, v in redact(params).items() if v is not None]
    for i in range(0, len(items), 100):
        try:
            client.log_batch(run_id, params=items[i:i + 100])
        except Exception:  # noqa: BLE001 - a resumed run: params already set (MLflow refuses changes)
            for item in items[i:i + 100]:
                try:
                    client.log_batch(run_id, params=[item])
                except Exception:  # noqa: BLE001
                    client.set_tag(run_id, f"senca.param_changed.{item.key}"[:250], item.value[:5000])


def log_metrics(client, run_id: str, metrics: dict[str, Any], step: int = 0, timestamp: int | None = None) -> None:
    """One value per metric at ``timestamp`` (ms; default now)."""
    log_items(client, run_id, row_metrics(metrics, step, now_ms() if timestamp is None else timestamp))


def slide_tags(slides: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The parent run's per-slide tags: ``senca.error.<slide>`` (a failed slide's error) and
    ``senca.warning.<slide>`` (an ok slide's warnings, one per line; MLflow keeps 5000 characters of a tag)."""
    tags = {}
    for s in slides:
        if s.get("status") != "ok":
            tags[f"senca.error.{s['slide']}"] = (s.get("error") or "?")[:5000]
        elif s.get("warnings"):
            tags[f"senca.warning.{s['slide']}"] = "\n".join(str(w) for w in s["warnings"])[:5000]
    return tags


def set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    """Several tags on a run in one request."""
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def selection_tags(selection: dict[str, Any] | None) -> dict[str, str]:
    """MLflow tags saying how a tuned run's model was chosen (``jobs.stage_model.selection_rule``); none untuned."""
    if not selection:
        return {}
    return {"senca.model_selection": str(selection.get("rule", ""))[:5000],
            "senca.selection_metric": str(selection.get("metric")),
            "senca.selected_on_annotations": "true" if selection.get("uses_labels") else "false"}


def source_tags(spec, spec_path: str | Path | None) -> dict[str, str]:
    """What a new parent run says about itself: a description (``mlflow.note.content``, shown by the UI), the
    command as its source, the package version, and the code's git commit when it runs from a git checkout."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    n_slides = len(spec.slides())
    try:
        tool = version("senca-platform")
    except PackageNotFoundError:
        tool = "unknown"
    tags = {"mlflow.note.content": f"SENCA-st cohort run of '{spec.name}': {len(spec.patients)} patient(s), "
                                   f"{n_slides} slide(s); spec {spec_path or '(in memory)'}; outputs in "
                                   f"{spec.output_dir} (cohort_summary.json, tables/, maps/, report.html).",
            "mlflow.source.name": "senca-platform run", "mlflow.source.type": "LOCAL",
            "senca.version": tool}
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0 and commit.stdout.strip():
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            tags["senca.git_dirty"] = "true" if dirty.stdout.strip() else "false"
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout, or no git: the version tag says what ran
    return tags


def model_description(selection: dict[str, Any] | None, tracker) -> str:
    """The registered version's description: what it is, which run made it, how it was chosen."""
    how = (f"chosen by Ray Tune: {selection.get('rule')}" if selection else "trained with the spec's settings "
           "(no tuning)")
    return (f"SENCA-st spot-embedding model of cohort '{tracker.spec.name}' (run {tracker.run_id}); {how}. "
            "Input: a preprocessed slide (X_pca in the cohort's PCA basis, X_hist or none, spatial neighbours); "
            "regions for new slides: `senca-platform predict`.")


def history_items(history: Iterable[dict[str, Any]], now: int | None = None) -> list:
    """Per-epoch rows as metrics, ``step`` = the row's epoch, each at its own ``time`` (else ``now``)."""
    now = now_ms() if now is None else now
    items: list = []
    for i, row in enumerate(history):
        stamp = ms(row.get("time"))
        items += row_metrics(row, int(row.get("epoch", i)), now if stamp is None else stamp)
    return items


class LiveLog:
    """The per-epoch curve, sent while a stage runs (thread-safe; the driver may call from a background thread).

    ``open``: stage → its child run, between ``stage_started`` and ``stage``. :meth:`record` buffers an epoch's
    metrics for that child (and a copy of its loss for the parent run, when asked) and sends the buffer when
    :data:`FLUSH_EVERY_S` passed since the last send. It never raises: the first failure is kept in ``error``, and
    nothing more is sent live; :meth:`flush` (called by the tracker's ``stage``) raises it. What was sent is
    remembered, so that the stage's history at the end only logs the rows that were not (:meth:`unsent`,
    :meth:`parent_items`).
    """

    def __init__(self, client, parent: str, *, continued: bool = False, flush_every: float = FLUSH_EVERY_S):
        self.client = client
        self.parent = parent
        self.continued = continued  # the parent may hold points of an earlier attempt: looked up before logging
        self.flush_every = flush_every
        self.lock = threading.RLock()
        self.open: dict[str, str] = {}
        self.error: Exception | None = None
        self._buffer: list[tuple[str, Any]] = []
        self._last_flush = 0.0
        self._sent: dict[str, dict[int, set[int]]] = {}  # stage -> epoch -> timestamps sent live
        self._logged: dict[str, set[tuple[int, int]]] = {}  # parent metric -> (step, ms) this attempt logged
        self._stored: dict[str, set[tuple[int, int]]] = {}  # parent metric -> (step, ms) an earlier attempt logged

    def record(self, stage: str, record: dict[str, Any], parent_key: str | None = None) -> None:
        """One epoch of ``stage`` (``parent_key``: also log its ``loss`` under that name on the parent run)."""
        from mlflow.entities import Metric

        with self.lock:
            run = self.open.get(stage)
            if run is None or self.error is not None:
                return
            try:
                step = int(record["epoch"])
                stamp = ms(record.get("time"))
                stamp = now_ms() if stamp is None else stamp
                self._buffer += [(run, m) for m in row_metrics(record, step, stamp)]
                loss = _finite(record.get("loss"))
                if parent_key and loss is not None and (step, stamp) not in self._stored_points(parent_key):
                    self._buffer.append((self.parent, Metric(parent_key, loss, stamp, step)))
                    self._logged.setdefault(parent_key, set()).add((step, stamp))
                self._sent.setdefault(stage, {}).setdefault(step, set()).add(stamp)
                if time.monotonic() - self._last_flush >= self.flush_every:
                    self._flush()
            except Exception as err:  # noqa: BLE001 - never into training: raised by flush() at the stage's end
                self.fail(err)

    def fail(self, err: Exception) -> None:
        with self.lock:
            if self.error is None:
                self.error = err
            self._buffer.clear()

    def flush(self) -> None:
        """Send what is buffered now; raises the first failure of live logging (kept: raised again next time)."""
        with self.lock:
            if self.error is not None:
                raise self.error
            try:
                self._flush()
            except Exception as err:
                self.fail(err)
                raise

    def _flush(self) -> None:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        self._last_flush = time.monotonic()
        runs: dict[str, list] = {}
        for run, metric in batch:
            runs.setdefault(run, []).append(metric)
        for run, items in runs.items():
            log_items(self.client, run, items)

    def close(self, stage: str) -> str | None:
        """The stage ended: its open child run (``None``: none was started), after sending the buffer."""
        with self.lock:
            run = self.open.pop(stage, None)
            self.flush()
            return run

    # ------------------------------------------------------------------ what was not sent live
    def unsent(self, stage: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows of ``stage``'s history not sent live (a row without ``time``: when its epoch was not)."""
        with self.lock:
            sent = self._sent.get(stage, {})
            out = []
            for i, row in enumerate(history):
                step, stamp = int(row.get("epoch", i)), ms(row.get("time"))
                if not (step in sent if stamp is None else stamp in sent.get(step, ())):
                    out.append({**row, "epoch": step})
            return out

    def parent_items(self, key: str, points: Iterable[tuple[int, Any, Any]], now: int | None = None) -> list:
        """Metrics ``key`` for the parent run from ``(step, time in seconds or None, value)``, leaving out points the
        parent has (same step and time; in a continued run, for a point without time: same step)."""
        from mlflow.entities import Metric

        now = now_ms() if now is None else now
        with self.lock:
            stored = self._stored_points(key)
            stored_steps = {step for step, _ in stored}
            logged = self._logged.setdefault(key, set())
            out = []
            for step, t, value in points:
                value, stamp = _finite(value), ms(t)
                if value is None or (stamp is None and step in stored_steps):
                    continue
                stamp = now if stamp is None else stamp
                if (step, stamp) in stored or (step, stamp) in logged:
                    continue
                logged.add((step, stamp))
                out.append(Metric(key, value, stamp, step))
            return out

    def _stored_points(self, key: str) -> set[tuple[int, int]]:
        if key not in self._stored:
            self._stored[key] = {(m.step, m.timestamp) for m in self.client.get_metric_history(self.parent, key)} \
                if self.continued else set()
        return self._stored[key]


__all__ = ["FLUSH_EVERY_S", "LiveLog", "NOT_METRICS", "history_items", "log_items", "log_metrics", "log_params",
           "ms", "row_metrics"]
