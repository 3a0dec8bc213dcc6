"""Stages 2 and 3: training (``jobs.train``) or tuning (``jobs.tune``) on the preprocessed slides, with a cache.

The number of workers is decided here from the cohort (``jobs.train.plan_workers``) and printed; each epoch's
record reaches the tracker live (``jobs.live``); the stage's outputs are ``train/model.pt`` + ``train/history.json``
or ``tune/model.pt`` + ``tune/trials.json``.
"""

from __future__ import annotations

import contextlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from ._stage import PIPELINE_VERSION, PipelineError, StageClock, Tracker, _model_cfg
from ._cache import StageCache, stable_hash
from ._files import atomic_write_json
from .infer import CUT_BY_DEFAULT, RESTARTS_DEFAULT
from ._jsonsafe import clean_float


def _eval_cfg(plan: dict[str, Any], metric: str | None, every: int) -> dict[str, Any]:
    c = plan["clustering"]
    return {"metric": metric, "every": every, "k": c.get("k"), "method": c.get("method", "gmm"),
            "refine": c.get("refine", True), "align": c.get("align", "matched"),
            "cut_by": c.get("cut_by", CUT_BY_DEFAULT), "restarts": c.get("restarts", RESTARTS_DEFAULT),
            "seed": c.get("seed", 0)}


#: the tuning objective ``metric: auto`` means; it uses no label (docs/BENCHMARKS.md: of the label-free criteria
#: measured, the only one whose rank agreement with ARI over tuning configurations is >= 0 on every labelled section)
DEFAULT_METRIC = "reconstruction"
#: objectives that read the annotations: chosen only when the spec names one, and the run says so
LABEL_METRICS = ("ari",)


def resolve_metric(plan: dict[str, Any]) -> str:
    """The tuning objective: the spec's ``tuning.metric``; ``auto`` is :data:`DEFAULT_METRIC`, whatever the slides
    hold (labels never choose a model unless the spec asks for ``ari``)."""
    metric = plan["tuning"].get("metric", "auto")
    return DEFAULT_METRIC if metric == "auto" else metric


def selection_rule(metric: str, mode: str) -> dict[str, Any]:
    """How the registered model was chosen, for the console, the summary, MLflow and the model version."""
    uses_labels = metric in LABEL_METRICS
    best = "highest" if mode == "max" else "lowest"
    text = (f"among the trials that ran all their epochs, the one with the {best} {metric} at its last epoch"
            + (" - selected on the annotations it is then scored on (tuning.metric: ari)" if uses_labels
               else " (no labels used)"))
    return {"metric": metric, "mode": mode, "uses_labels": uses_labels, "rule": text}


def _checkpoint_cfg(t: dict[str, Any]) -> dict[str, Any]:
    return {"every_epochs": int(t.get("checkpoint_every_epochs", 10)),
            "min_interval_s": float(t.get("checkpoint_interval_s", 30.0)),
            "report_interval_s": float(t.get("report_interval_s", 10.0))}


def train_workers(plan: dict[str, Any], pre: dict[str, Any], epochs: int) -> tuple[int, str]:
    """How many training workers this cohort is worth for ``epochs`` epochs (``jobs.train.plan_workers``) and why."""
    from .train import plan_workers

    t = plan["training"]
    return plan_workers(n_slides=len(pre["paths"]), n_spots=int(pre.get("n_spots", 0)),
                        num_workers=int(t["num_workers"]),
                        min_spots_per_worker=int(t.get("min_spots_per_worker", 0) or 0), epochs=int(epochs),
                        min_spot_epochs_per_worker=int(t.get("min_spot_epochs_per_worker", 0) or 0))


def scaling_key(t: dict[str, Any], workers: int) -> dict[str, Any]:
    """The scaling part of a training stage's cache key: the workers planned, not only the spec's ``num_workers``
    (DDP over another number of workers, or one task, trains another network)."""
    return {"workers": int(workers), **{k: t[k] for k in ("num_workers", "use_gpu", "resources_per_worker")}}


def worker_resources(plan: dict[str, Any], workers: int) -> dict[str, float] | None:
    """Resources per worker; one worker standing in for several holds their CPUs (capped by the cluster's)."""
    t = plan["training"]
    res = dict(t.get("resources_per_worker") or {"CPU": 1.0})
    if workers == 1 and int(t["num_workers"]) > 1:
        total = float(res.get("CPU", 1.0)) * int(t["num_workers"])
        res["CPU"] = min(total, float(plan.get("num_cpus") or total))
    return res


def check_resources(plan: dict[str, Any], stage: str, workers: int, resources: dict[str, float] | None,
                    tracker: Tracker) -> None:
    """Fail the stage at once when its workers can never be placed on the Ray cluster (Ray would wait forever);
    on a cluster that might autoscale (not the embedded local Ray) print a warning instead."""
    from .train import check_cluster_fits

    t = plan["training"]
    can_grow = _can_grow(plan)
    try:
        problems = check_cluster_fits(workers=workers, use_gpu=bool(t.get("use_gpu")), resources_per_worker=resources,
                                      can_autoscale=can_grow, num_workers=int(t["num_workers"]))
    except RuntimeError as err:
        raise PipelineError(stage, str(err)) from None
    for line in problems:
        tracker.progress(f"{stage}: warning: {line} (waiting for the cluster to add nodes)")


def check_slide_cpus(plan: dict[str, Any], stage: str, tracker: Tracker) -> None:
    """``preprocess.cpus_per_slide`` (the CPUs of each per-slide Ray Data task) larger than any Ray node: the stage
    fails at once naming the field (Ray Data would wait for ever); on a cluster that might autoscale, a warning."""
    import os

    import ray

    from .train import cluster_snapshot, task_cpu_problems

    # not started yet: Ray Data will start a local Ray with this machine's CPUs
    cluster, largest = cluster_snapshot() if ray.is_initialized() else ({"CPU": float(os.cpu_count() or 1)}, None)
    problems = task_cpu_problems(float(plan["preprocess"].get("cpus_per_slide", 1.0)), "preprocess.cpus_per_slide",
                                 cluster=cluster, largest_node=largest)
    if problems and not _can_grow(plan):
        raise PipelineError(stage, "; ".join(problems))
    for line in problems:
        tracker.progress(f"{stage}: warning: {line} (waiting for the cluster to add nodes)")


def _can_grow(plan: dict[str, Any]) -> bool:
    """Whether the Ray cluster might add nodes (not the embedded local Ray, which has no autoscaler)."""
    from .train import ray_is_embedded

    embedded = plan.get("ray_embedded")
    return not (ray_is_embedded() if embedded is None else bool(embedded))


@contextlib.contextmanager
def live_epochs(out: Path, stage: str, tracker: Tracker):
    """A fresh folder for this attempt's per-epoch JSON lines, tailed into ``tracker.epoch`` while it runs."""
    from .live import tail

    folder = out / stage / "live" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    with tail(folder, lambda record: tracker.epoch(stage, record)):
        yield folder


def stage_train(plan: dict[str, Any], pre: dict[str, Any], cache: StageCache, tracker: Tracker, *,
                resume: bool, overrides: dict[str, Any] | None = None, stage: str = "train") -> dict[str, Any]:
    from .train import run_training, runs_as_task, task_cpus

    out = Path(plan["output_dir"])
    t = plan["training"]
    paths = list(pre["paths"].values())
    model = _model_cfg(plan)
    epochs = int((overrides or {}).get("epochs") or model["epochs"])  # the tuned epochs, where Tune chose them
    workers, why = train_workers(plan, pre, epochs)
    resources = worker_resources(plan, workers)
    cfg = {"model": model, "overrides": dict(overrides or {}), "slide_paths": paths,
           "n_expr": pre["n_expr"], "n_hist": pre["n_hist"], "eval": _eval_cfg(plan, None, 1), "threads": 1,
           "checkpoint": _checkpoint_cfg(t)}
    key = stable_hash({"v": PIPELINE_VERSION, "pre": pre["key"],
                       "cfg": {k: v for k, v in cfg.items() if k not in ("slide_paths", "checkpoint")},
                       "scaling": scaling_key(t, workers)})
    clock = StageClock(tracker, stage)
    hit = cache.get(stage, key)
    cached = hit is not None
    launcher = None
    if hit is None:
        check_resources(plan, stage, workers, resources, tracker)
        task = runs_as_task(workers, t.get("launcher", "auto"))
        launcher = "ray_task" if task else "ray_train"
        tracker.progress(f"{stage}: {why}; {epochs} epochs, {len(paths)} slide(s), "
                         f"{pre.get('n_spots', 0)} spots, on "
                         + (f"one Ray task ({task_cpus(resources)[0]:g} CPU)" if task else "Ray Train (DDP)"))
        if resume:
            _check_train_snapshot(out / "ray" / "train" / f"{stage}-{key[:12]}", tracker)
        try:
            with live_epochs(out, stage, tracker) as live:
                res = run_training(dict(cfg, live_path=str(live / "rank0.jsonl")), out_dir=out / stage,
                                   name=f"{stage}-{key[:12]}", storage_path=out / "ray" / "train",
                                   num_workers=workers, use_gpu=bool(t.get("use_gpu")),
                                   resources_per_worker=resources, max_failures=int(t.get("max_failures", 1)),
                                   resume=resume, launcher=t.get("launcher", "auto"),
                                   api_server=plan.get("ray_api_server"))
        except Exception as err:  # noqa: BLE001 - a failed fit stops the cohort, with the reason
            raise PipelineError(stage, f"{type(err).__name__}: {err}") from err
        hit = {"model_path": res["model_path"], "history_file": str(out / stage / "history.json"),
               "final": {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))},
               "launcher": res["launcher"], "workers": workers}
        cache.put(stage, key, hit)
    history = json.loads(Path(hit["history_file"]).read_text())
    restarts = _restarts(history, stage, tracker)
    info = {"status": "ok", "cached": cached, **clock.times(), **restarts,
            "params": {**{f"model.{k}": v for k, v in {**cfg["model"], **cfg["overrides"]}.items()},
                       "num_workers": t["num_workers"], "workers_used": hit.get("workers", workers),
                       "launcher": hit.get("launcher", launcher), "use_gpu": t.get("use_gpu", False),
                       "resources_per_worker": json.dumps(resources),
                       "max_failures": t.get("max_failures", 1), "n_slides": len(paths),
                       "precision_used": history[-1].get("precision") if history else None,
                       **{f"checkpoint.{k}": v for k, v in cfg["checkpoint"].items()}},
            "metrics": {"final_loss": clean_float(history[-1].get("loss")) if history else None,
                        "epochs": len(history), "restarts": restarts["restarts"]},
            "history": history, "model_path": hit["model_path"]}
    tracker.stage(stage, info)
    return {"key": key, "model_path": hit["model_path"], "history": history, "info": info}


def _restarts(history: list[dict[str, Any]], stage: str, tracker: Tracker) -> dict[str, Any]:
    """What the history says of worker restarts (a killed worker, node or task continued from a checkpoint):
    how many, from which epochs, and whether each continued exactly (every rank's random state restored, so the
    result is the clean run's); said in the log, and as a warning when a continuation was not exact."""
    froms = sorted({int(h["restored_from_epoch"]) for h in history if "restored_from_epoch" in h})
    exact = all(h.get("restored_exact", True) for h in history if "restored_from_epoch" in h)
    if froms:
        where = ", ".join(f"epoch {e}" for e in froms)
        if exact:
            tracker.progress(f"{stage}: training was restarted {len(froms)} time(s), from the checkpoint(s) of "
                             f"{where}; every random state was restored: the result is the uninterrupted run's")
        else:
            tracker.progress(f"warning: {stage}: training was restarted from the checkpoint(s) of {where} on a worker group "
                         "of another size: the result differs from an uninterrupted run's")
    return {"restarts": len(froms), "restarted_from_epochs": froms, "restart_exact": exact}


def _check_train_snapshot(run_dir: Path, tracker: Tracker) -> None:
    """Before resuming a Ray Train run: its ``checkpoint_manager_snapshot.json`` (Ray writes it in place, not
    atomically) must be whole, and name a checkpoint that exists; a driver killed while Ray wrote it leaves it cut
    off, and Ray Train would fail on it. Then it is removed: training starts over (the checkpoints stay)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        name = latest.get("checkpoint_dir_name")
        if name is None or (run_dir / name / "model.pt").exists():
            if name is not None:
                tracker.progress(f"train: resuming from the checkpoint {name} of the interrupted run")
            return
    except (OSError, ValueError, AttributeError):
        pass
    tracker.progress(f"train: the interrupted run's checkpoint index {snapshot} is incomplete: training starts over")
    snapshot.unlink(missing_ok=True)


def stage_tune(plan: dict[str, Any], pre: dict[str, Any], cache: StageCache, tracker: Tracker,
               status: dict[str, dict], *, progress: bool, resume: bool) -> dict[str, Any]:
    from ._files import atomic_write_bytes
    from .train import most_epochs, read_checkpoint, runs_as_task, where_train_finds_its_cluster
    from .tune import run_tuning

    out = Path(plan["output_dir"])
    t, tuning = plan["training"], plan["tuning"]
    metric = resolve_metric(plan)
    epochs = int(tuning.get("epochs") or t["epochs"])
    paths = list(pre["paths"].values())
    workers, why = train_workers(plan, pre, most_epochs(epochs, tuning.get("search_space")))
    resources = worker_resources(plan, workers)
    cfg = {"model": _model_cfg(plan, epochs), "slide_paths": paths, "n_expr": pre["n_expr"],
           "n_hist": pre["n_hist"], "eval": _eval_cfg(plan, metric, int(tuning.get("eval_every", 1))),
           "threads": 1, "checkpoint": _checkpoint_cfg(t)}
    key = stable_hash({"v": PIPELINE_VERSION, "pre": pre["key"],
                       "cfg": {k: v for k, v in cfg.items() if k not in ("slide_paths", "checkpoint")},
                       "tuning": tuning,
                       "scaling": scaling_key(t, workers)})
    clock = StageClock(tracker, "tune")
    hit = cache.get("tune", key)
    cached = hit is not None
    if hit is None:
        check_resources(plan, "tune", workers, resources, tracker)
        tracker.progress(f"tune: Ray Tune, {tuning['num_samples']} trial(s) x {epochs} epochs, metric {metric}; "
                         f"each trial {why}")
        try:
            with live_epochs(out, "tune", tracker) as live:
                # trials that train on Ray Train's worker groups need their cluster's address (jobs.train)
                launch = run_tuning if runs_as_task(workers, t.get("launcher", "auto")) else \
                    partial(where_train_finds_its_cluster, run_tuning, api_server=plan.get("ray_api_server"))
                res = launch(cfg, tuning, storage_path=out / "ray" / "tune", num_workers=workers,
                             use_gpu=bool(t.get("use_gpu")), resources_per_worker=resources,
                             max_failures=int(t.get("max_failures", 1)), progress=progress,
                             launcher=t.get("launcher", "auto"), live_dir=live)
        except Exception as err:  # noqa: BLE001
            raise PipelineError("tune", f"{type(err).__name__}: {err}") from err
        best = res["best"]
        model_file, _ = read_checkpoint(best["checkpoint_path"])
        atomic_write_bytes(out / "tune" / "model.pt", Path(model_file).read_bytes())
        trials_file = atomic_write_json(out / "tune" / "trials.json", res)
        hit = {"model_path": str(out / "tune" / "model.pt"), "trials_file": str(trials_file)}
        cache.put("tune", key, hit)
    res = json.loads(Path(hit["trials_file"]).read_text())
    best = res["best"]
    selection = selection_rule(metric, res["mode"])
    value = clean_float(best["objective"])
    tracker.progress(f"tune: best trial {best['trial_id']}, {metric} = {'n/a' if value is None else f'{value:.4g}'}: "
                     f"{selection['rule']}")
    info = {"status": "ok", "cached": cached, **clock.times(),
            "params": {"metric": metric, "mode": res["mode"], "num_samples": tuning["num_samples"],
                       "scheduler": tuning.get("scheduler", "asha"), "epochs_per_trial": epochs,
                       "search_space": json.dumps(tuning["search_space"]), "keep": tuning.get("keep", "checkpoint"),
                       "selection_rule": selection["rule"], "selected_on_annotations": selection["uses_labels"],
                       "precision_used": (best.get("history") or [{}])[-1].get("precision")},
            "metrics": {"best_objective": best["objective"], "n_trials": len(res["trials"]),
                        "n_trials_failed": sum(tr["status"] != "ok" for tr in res["trials"])},
            "trials": res["trials"], "best": best, "model_path": hit["model_path"], "selection": selection}
    tracker.stage("tune", info)
    result = {"key": key, "model_path": hit["model_path"], "best": best, "metric": metric, "info": info,
              "selection": selection,
              "history": best["history"]}
    if tuning.get("keep", "checkpoint") == "retrain":
        trained = stage_train(plan, pre, cache, tracker, resume=resume, overrides=best["config"], stage="train")
        result.update(model_path=trained["model_path"], key=trained["key"], history=trained["history"])
    return result
