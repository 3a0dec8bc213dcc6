"""What every stage shares: the tracker interface, the cohort-level error, the cache version, the model config."""

from __future__ import annotations

import time
from typing import Any

#: bump when a stage's outputs change meaning (invalidates every cache entry)
PIPELINE_VERSION = 5  # 2: infer clusters the region readout, slides aligned; 3: named regions, tidy tables;
#                      4: tumour sub-regions; 5: the GMM's spatial (Potts) prior
#: bump when the infer stage's regions change for the same model and spec (invalidates infer entries only)
INFER_VERSION = 4  # 2: k auto reads the spots' spatial design effect (senca_core.tl._k_auto, 2026-12-07)
#                   3: cut_by auto: several slides at k auto are cut slide by slide (tl.resolve_cut_by)
#                   4: the cut from three clustering seeds, the medoid kept (tl._restarts)


class Tracker:
    """Receives the pipeline's results as it goes; the base class ignores them (no tracking)."""

    def stage(self, name: str, info: dict[str, Any]) -> None:  # noqa: D401 - an event
        """A stage finished: ``info`` has status, cached, seconds, params, metrics and stage-specific data
        (``history`` per epoch, ``trials``, ``slides``, ``artifacts``)."""

    def progress(self, message: str) -> None:
        """A short human-readable progress line."""

    def stage_started(self, name: str, started_at: float) -> None:
        """A stage begins (``started_at``: wall-clock seconds since the epoch). Its :meth:`stage` event follows,
        with ``info["started_at"]`` / ``info["ended_at"]`` (the same clock)."""

    def epoch(self, stage: str, record: dict[str, Any]) -> None:
        """One training epoch, live while the stage runs: ``record`` has ``epoch``, ``time`` (wall-clock seconds
        since the epoch when that epoch ended), the loss parts (``loss``, ...) and, in a tuning stage, ``trial``.
        An epoch re-run after a worker restart comes again (same ``epoch``, a later ``time``)."""


class PipelineError(RuntimeError):
    """The cohort cannot go on (no slide left, training failed); names the stage."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage {stage!r}: {message}")


def _model_cfg(plan: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    t = plan["training"]
    return dict(plan.get("model") or {}, epochs=int(epochs or t["epochs"]), seed=int(t["seed"]),
                device="cuda" if t.get("use_gpu") else "cpu")


class StageClock:
    """A stage's wall clock: started now (``tracker.stage_started``); :meth:`times` gives its info fields."""

    def __init__(self, tracker: Tracker, name: str) -> None:
        self.started_at, self._t0 = time.time(), time.perf_counter()
        tracker.stage_started(name, self.started_at)

    def times(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self._t0, "started_at": self.started_at, "ended_at": time.time()}
