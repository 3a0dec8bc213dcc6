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

from .train import make_trainer, runs_as_task, task_cpus
from .train_loop import read_checkpoint, run_loop
from .train_sessions import OneWorkerSession, local_dir


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


class TuneSession(OneWorkerSession):
    """The only worker of a one-worker trial, inside the Tune trial's own process: checkpoints and metrics go
    to ``ray.tune.report`` (the trial's checkpoint is what a restarted trial continues from)."""

    def latest_checkpoint(self):
        import ray.tune

        return local_dir(ray.tune.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.tune

        ckpt = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.tune.report(metrics, checkpoint=ckpt)


def trial_fn(config: dict[str, Any], base: dict[str, Any]) -> None:
    """The Tune function trainable: one fit with this trial's model settings (``config``) — in this process when
    one worker is enough (``base["solo"]``), else a Ray Train fit whose reports ``TuneReportCallback`` forwards."""
    import ray.tune


    trial_id = ray.tune.get_context().get_trial_id()
    cfg = dict(base["cfg"], overrides=dict(config), trial=trial_id)
    if base.get("live_dir"):
        cfg["live_path"] = str(Path(base["live_dir"]) / f"{trial_id}.jsonl")
    if base.get("solo"):
        run_loop(dict(cfg, threads=task_cpus(base["resources_per_worker"])[1]),
                 TuneSession("cuda" if base["use_gpu"] else "cpu"))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = make_trainer(cfg, name=f"trial-{trial_id}", storage_path=base["storage_path"],
                           num_workers=base["num_workers"], use_gpu=base["use_gpu"],
                           resources_per_worker=base["resources_per_worker"], max_failures=base["max_failures"],
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def run_tuning(cfg: dict[str, Any], tuning: dict[str, Any], *, storage_path: str | Path, num_workers: int,
               use_gpu: bool, resources_per_worker: dict[str, float] | None, max_failures: int,
               progress: bool = True, launcher: str = "auto", live_dir: str | Path | None = None) -> dict[str, Any]:
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
        scheduler = ASHAScheduler(time_attr="epochs_done", max_t=epochs,
                                  grace_period=min(int(tuning.get("grace_period", 1)), epochs),
                                  reduction_factor=float(tuning.get("reduction_factor", 2.0)))
    else:
        scheduler = FIFOScheduler()
    solo = runs_as_task(num_workers, launcher)
    solo_cpus = task_cpus(resources_per_worker)[0]
    base = {"cfg": cfg, "storage_path": str(storage_path / "trials"), "num_workers": num_workers,
            "use_gpu": use_gpu, "resources_per_worker": resources_per_worker, "max_failures": max_failures,
            "solo": solo, "live_dir": str(live_dir) if live_dir else None}
    param_space = search_space(tuning["search_space"])
    # a one-worker trial trains in its own process and holds that worker's resources; a Ray Train trial reserves
    # almost nothing itself, so that its trainer's workers get the cores
    own = {"cpu": solo_cpus, **({"gpu": 1} if use_gpu else {})} if solo else {"cpu": 0.01}
    trainable = tune.with_resources(tune.with_parameters(trial_fn, base=base),
                                    dict(tuning.get("trial_resources") or own))
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="objective", mode=mode, num_samples=int(tuning.get("num_samples", 1)),
                                    scheduler=scheduler,
                                    # the sampled configs follow the spec's seed: a rerun tries the same trials
                                    search_alg=BasicVariantGenerator(random_state=int(cfg["model"].get("seed", 0))),
                                    max_concurrent_trials=tuning.get("max_concurrent_trials")),
        run_config=tune.RunConfig(name="search", storage_path=str(storage_path),
                                  verbose=1 if progress else 0,
                                  failure_config=tune.FailureConfig(max_failures=int(max_failures) if solo else 0)),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        reports = [] if df is None else _records(df)
        last = reports[-1] if reports else {}
        checkpoint_path = result.checkpoint.path if result.checkpoint is not None else last.get("checkpoint_path")
        # every epoch is in the checkpoint's history (reports are sparser: see jobs.train_loop.Policy)
        history = read_checkpoint(checkpoint_path)[1] if checkpoint_path else []
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        history = history or _live_history(live_dir, trial_id) or reports
        obj = (history[-1] if history else {}).get("objective")
        trials.append({
            "trial_id": trial_id,
            "config": dict(result.config or {}),
            "status": "failed" if result.error else "ok",
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:2000],
            "objective": obj if obj is not None and not (isinstance(obj, float) and math.isnan(obj)) else None,
            "epochs": len(history),
            "history": history,
            "checkpoint_path": checkpoint_path,
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


def _live_history(live_dir: str | Path | None, trial_id: str) -> list[dict[str, Any]]:
    """Every epoch of a trial from its live file (a trial the scheduler stopped before any checkpoint); an epoch
    re-run after a restart counts once (its last record)."""
    import json

    path = Path(live_dir) / f"{trial_id}.jsonl" if live_dir else None
    if path is None or not path.exists():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        by_epoch[int(record.get("epoch", len(by_epoch)))] = {k: v for k, v in record.items() if k != "trial"}
    return [by_epoch[e] for e in sorted(by_epoch)]


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
