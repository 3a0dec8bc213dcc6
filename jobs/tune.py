"""Stage 3, tuning, with Ray Tune: a function trainable that runs a whole Ray Train fit per trial.

``Tuner(TorchTrainer)`` is refused by Ray Train V2 (Ray >= 2.50), so each trial is a plain function
(``trial_fn``) that builds the stage-2 ``TorchTrainer`` with the trial's model settings and calls ``fit()``;
``TuneReportCallback`` forwards every epoch's report (rank 0's metrics + checkpoint path) to Tune, where the
scheduler (ASHA by default, on ``training_iteration`` = epochs) can stop weak trials early. The trial function
itself reserves almost nothing (``{"cpu": 0.01}`` by default) so that the trainers' workers get the cores.

Objective: ``objective`` as reported by the training loop (mean ARI over labelled slides, embedding silhouette,
or validation loss), maximised except for ``loss``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The spec's search space (``{name: {type, values | low, high}}``) as Ray Tune domains."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, dim in space.items():
        kind = dim["type"]
        if kind == "choice":
            out[name] = tune.choice(list(dim["values"]))
        elif kind == "grid":
            out[name] = tune.grid_search(list(dim["values"]))
        elif kind == "uniform":
            out[name] = tune.uniform(float(dim["low"]), float(dim["high"]))
        elif kind == "loguniform":
            out[name] = tune.loguniform(float(dim["low"]), float(dim["high"]))
        elif kind == "randint":
            out[name] = tune.randint(int(dim["low"]), int(dim["high"]))
        else:  # the spec refuses this already
            raise ValueError(f"unknown search dimension type {kind!r} for {name!r}")
    return out


def trial_fn(config: dict[str, Any], base: dict[str, Any]) -> None:
    """The Tune function trainable: one Ray Train fit with this trial's model settings (``config``)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import make_trainer

    overrides = dict(config)
    cfg = dict(base["cfg"], overrides=overrides)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = make_trainer(cfg, name=f"trial-{trial_id}", storage_path=base["storage_path"],
                           num_workers=base["num_workers"], use_gpu=base["use_gpu"],
                           resources_per_worker=base["resources_per_worker"], max_failures=base["max_failures"],
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def run_tuning(cfg: dict[str, Any], tuning: dict[str, Any], *, storage_path: str | Path, num_workers: int,
               use_gpu: bool, resources_per_worker: dict[str, float] | None, max_failures: int,
               progress: bool = True) -> dict[str, Any]:
    """Run the search. Returns ``{"metric", "mode", "best": {...}, "trials": [...]}``.

    Each trial: ``{"trial_id", "config", "status", "objective", "epochs", "history", "checkpoint_path", "error"}``;
    ``best`` is the trial with the best last-reported objective among those that ran all their epochs (ASHA stopped
    the others for being worse at a milestone), its final checkpoint directory included.
    """
    import ray.tune as tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    storage_path = Path(storage_path)
    if storage_path.exists():
        shutil.rmtree(storage_path)
    storage_path.mkdir(parents=True)
    metric = cfg["eval"]["metric"]
    mode = "min" if metric == "loss" else "max"
    epochs = int(cfg["model"]["epochs"])
    if tuning.get("scheduler", "asha") == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                  grace_period=min(int(tuning.get("grace_period", 1)), epochs),
                                  reduction_factor=float(tuning.get("reduction_factor", 2.0)))
    else:
        scheduler = FIFOScheduler()
    base = {"cfg": cfg, "storage_path": str(storage_path / "trials"), "num_workers": num_workers,
            "use_gpu": use_gpu, "resources_per_worker": resources_per_worker, "max_failures": max_failures}
    param_space = search_space(tuning["search_space"])
    trainable = tune.with_resources(tune.with_parameters(trial_fn, base=base),
                                    dict(tuning.get("trial_resources") or {"cpu": 0.01}))
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="objective", mode=mode, num_samples=int(tuning.get("num_samples", 1)),
                                    scheduler=scheduler,
                                    # the sampled configs follow the spec's seed: a rerun tries the same trials
                                    search_alg=BasicVariantGenerator(random_state=int(cfg["model"].get("seed", 0))),
                                    max_concurrent_trials=tuning.get("max_concurrent_trials")),
        run_config=tune.RunConfig(name="search", storage_path=str(storage_path),
                                  verbose=1 if progress else 0),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        history = [] if df is None else _records(df)
        last = history[-1] if history else {}
        obj = last.get("objective")
        trials.append({
            "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
            "config": dict(result.config or {}),
            "status": "failed" if result.error else "ok",
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:2000],
            "objective": obj if obj is not None and not (isinstance(obj, float) and math.isnan(obj)) else None,
            "epochs": len(history),
            "history": history,
            "checkpoint_path": last.get("checkpoint_path"),
        })
    ok = [t for t in trials if t["status"] == "ok" and t["objective"] is not None and t["checkpoint_path"]]
    if not ok:
        errors = "; ".join(t["error"] or "no objective" for t in trials)
        raise RuntimeError(f"no tuning trial finished with an objective ({errors})")
    # a trial the scheduler stopped early was judged worse than others at its milestone: the best is taken among
    # the trials that ran their whole budget (all of them with FIFO), by their last objective
    full = [t for t in ok if t["epochs"] >= epochs] or ok
    best = (min if mode == "min" else max)(full, key=lambda t: t["objective"])
    return {"metric": metric, "mode": mode, "best": best, "trials": trials}


_BOOKKEEPING = {"timestamp", "date", "hostname", "node_ip", "pid", "done", "time_this_iter_s", "time_total_s",
                "time_since_restore", "iterations_since_restore", "trial_id", "experiment_tag", "should_checkpoint"}


def _records(df) -> list[dict[str, Any]]:
    """Per-epoch rows of a trial (loss parts, objective, per-slide ARIs, checkpoint path), Tune's bookkeeping out."""
    rows = []
    for rec in df.to_dict("records"):
        row = {}
        for k, v in rec.items():
            if k in _BOOKKEEPING or k.startswith("config/"):
                continue
            v = v.item() if hasattr(v, "item") else v
            if isinstance(v, float) and math.isnan(v) and k != "objective":
                continue
            row[k] = v
        rows.append(row)
    return rows
