"""Stage 2, training: the launcher of the SENCA-st loop (``jobs.train_loop``).

Two launchers run the same loop:

- **Ray Train** (``TorchTrainer``, DDP over slides): ``ScalingConfig(num_workers, use_gpu, resources_per_worker)``
  and ``FailureConfig(max_failures)`` from the spec. The path for real cohorts and GPU nodes.
- **one Ray task** when the cohort needs only one worker: DDP with one worker buys nothing, and a Ray Train worker
  group costs 8-10 s to start on a 2-core machine (controller actor, worker actors, process group; measured in
  ``bench/bench_platform.py``) against milliseconds for a task on Ray's warm worker pool. The task reserves the
  CPUs (or the GPU) the workers would have had and retries itself ``max_failures`` times when its process dies,
  continuing from its newest checkpoint exactly as a restarted Ray Train worker group does.

:func:`plan_workers` decides how many workers the cohort is worth: never more than its slides (two workers on one
slide would run the same slide twice), none for fewer than ``min_spots_per_worker`` spots each, and none for fewer
than ``min_spot_epochs_per_worker`` spot-epochs (spots x epochs) each: a short training does not pay back a worker
group's start. The pipeline prints the decision.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .train_loop import read_checkpoint, run_loop
from .train_sessions import RayTrainSession, SoloSession

#: ``training.launcher``: auto (a task for one worker, Ray Train for more) | ray_train (always)
LAUNCHERS = ("auto", "ray_train")


def plan_workers(*, n_slides: int, n_spots: int, num_workers: int, min_spots_per_worker: int, epochs: int = 0,
                 min_spot_epochs_per_worker: int = 0) -> tuple[int, str]:
    """(workers, reason): at most one worker per slide, per ``min_spots_per_worker`` spots and per
    ``min_spot_epochs_per_worker`` spot-epochs (``n_spots`` x ``epochs``), at least one. 0 turns a minimum off."""
    want = max(1, int(num_workers))
    by_slides = max(1, int(n_slides))
    by_spots = max(1, int(n_spots) // int(min_spots_per_worker)) if min_spots_per_worker else want
    work = int(n_spots) * int(epochs)
    by_work = max(1, work // int(min_spot_epochs_per_worker)) if min_spot_epochs_per_worker and epochs else want
    workers = min(want, by_slides, by_spots, by_work)
    if workers == want:
        return workers, f"{workers} worker(s) as configured"
    if workers == by_slides and by_slides < want:
        return workers, f"{workers} worker(s) instead of {want}: the cohort has {n_slides} slide(s)"
    if workers == by_spots:
        return workers, (f"{workers} worker(s) instead of {want}: {n_spots} spots in all, fewer than "
                         f"{min_spots_per_worker} per worker (training.min_spots_per_worker)")
    return workers, (f"{workers} worker(s) instead of {want}: {n_spots} spots x {epochs} epochs = {work:,} "
                     f"spot-epochs, fewer than {min_spot_epochs_per_worker:,} per worker "
                     f"(training.min_spot_epochs_per_worker): too short a training to pay back a worker group's start")


def may_use_worker_groups(*, n_slides: int, num_workers: int, launcher: str = "auto", n_spots: int | None = None,
                          min_spots_per_worker: int = 0, epochs: int | None = None,
                          min_spot_epochs_per_worker: int = 0) -> bool:
    """Whether any training of the cohort (the trainer's or a Tune trial's) may run as a Ray Train worker group,
    which needs Ray's dashboard. A one-slide cohort never gets more than one worker (:func:`plan_workers`), nor one
    whose ``n_spots`` (an upper bound, counted before reading: ``senca_platform.spec.census``; None: unknown) are
    fewer than two workers' ``min_spots_per_worker``, or whose spot-epochs (``n_spots`` x ``epochs``, the most
    epochs any training of the run may take) are fewer than two workers' ``min_spot_epochs_per_worker``; and one
    worker runs as one Ray task (:func:`runs_as_task`) unless ``launcher`` asks for Ray Train. Asked of
    :func:`plan_workers` itself where the spots are counted, so the census and the plan cannot disagree."""
    if launcher != "auto":
        return True
    if n_spots is None:  # uncounted: only the slides and the spec's workers can say no
        return int(n_slides) > 1 and int(num_workers) > 1
    workers, _ = plan_workers(n_slides=n_slides, n_spots=n_spots, num_workers=num_workers,
                              min_spots_per_worker=min_spots_per_worker, epochs=int(epochs or 0),
                              min_spot_epochs_per_worker=min_spot_epochs_per_worker)
    return workers > 1


def most_epochs(epochs: int, search_space: dict[str, dict[str, Any]] | None = None) -> int:
    """The most epochs a training may take: ``epochs``, or more where ``search_space`` (Tune's, as the spec writes
    it) tunes ``epochs`` itself."""
    dim = (search_space or {}).get("epochs") or {}
    tried = [v for v in list(dim.get("values") or []) + [dim.get("high")] if isinstance(v, (int, float))]
    return max([int(epochs)] + [int(v) for v in tried])


def worker_need(use_gpu: bool, resources_per_worker: dict[str, float] | None) -> dict[str, float]:
    """What one training worker reserves (as ``make_trainer`` / ``run_solo`` ask Ray for it)."""
    need = {str(k): float(v) for k, v in (resources_per_worker or {"CPU": 1.0}).items()}
    need.setdefault("CPU", 1.0)
    if use_gpu:
        need["GPU"] = need.get("GPU") or 1.0
    else:
        need.pop("GPU", None)
    return {k: v for k, v in need.items() if v > 0}


_FIELD = {"CPU": "training.resources_per_worker", "GPU": "training.use_gpu"}


def resource_problems(*, workers: int, use_gpu: bool, resources_per_worker: dict[str, float] | None,
                      cluster: dict[str, float], largest_node: dict[str, float] | None = None,
                      num_workers: int | None = None) -> list[str]:
    """Why ``workers`` training workers can never be placed on this cluster (empty: they fit).

    ``cluster`` is ``ray.cluster_resources()``, ``largest_node`` the resources of its biggest node (one worker must
    fit on one node). Each line names the spec field (``training.num_workers``, ``training.use_gpu``,
    ``training.resources_per_worker``) and what the cluster has. Ray would otherwise wait for them forever.
    """
    need = worker_need(use_gpu, resources_per_worker)
    problems = []
    for res, per in sorted(need.items()):
        have = float(cluster.get(res, 0.0))
        field = _FIELD.get(res, "training.resources_per_worker")
        if res == "GPU" and have <= 0:
            problems.append(f"training.use_gpu: true asks {per:g} GPU per worker, the Ray cluster has no GPU")
            continue
        node = float((largest_node or cluster).get(res, 0.0))
        if per > node:
            problems.append(f"{field}: one worker asks {per:g} {res}, the largest Ray node has {node:g} "
                            f"(the cluster {have:g})")
        elif per * workers > have + 1e-9:
            planned = "" if num_workers in (None, workers) else f" (of {num_workers} configured)"
            problems.append(f"training.num_workers: {workers} worker(s){planned} x {per:g} {res} = "
                            f"{per * workers:g} {res}, the Ray cluster has {have:g} {res}: lower "
                            f"training.num_workers or {field}")
    return problems


def check_cluster_fits(*, workers: int, use_gpu: bool, resources_per_worker: dict[str, float] | None,
                       can_autoscale: bool, num_workers: int | None = None) -> list[str]:
    """Compare the training request with the connected Ray cluster before anything waits on it.

    Raises ``RuntimeError`` (one line per problem) when the workers can never be placed and no autoscaler could add
    nodes (the embedded local Ray cannot); returns the problems as warnings when one could (a remote cluster).
    """
    cluster, largest = cluster_snapshot()
    problems = resource_problems(workers=workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker,
                                 cluster=cluster, largest_node=largest, num_workers=num_workers)
    if problems and not can_autoscale:
        raise RuntimeError("; ".join(problems))
    return problems


def cluster_snapshot() -> tuple[dict[str, float], dict[str, float] | None]:
    """(``ray.cluster_resources()``, the largest amount of each resource on one alive node; None: no node list)."""
    import ray

    cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = {k: max(float(n.get(k, 0.0)) for n in nodes) for k in cluster} if nodes else None
    return cluster, largest


def task_cpu_problems(cpus: float, field: str, *, cluster: dict[str, float],
                      largest_node: dict[str, float] | None = None) -> list[str]:
    """Why one Ray Data task asking ``cpus`` CPUs (the spec field ``field``, e.g. ``preprocess.cpus_per_slide``)
    can never be scheduled: more than the largest node has (a task runs on one node; Ray Data would wait for ever)."""
    node = float((largest_node or cluster).get("CPU", 0.0))
    if float(cpus) <= node + 1e-9:
        return []
    return [f"{field}: one slide task asks {float(cpus):g} CPU, the largest Ray node has {node:g} (the cluster "
            f"{float(cluster.get('CPU', 0.0)):g}): lower {field}"]


def ray_is_embedded() -> bool:
    """Whether the connected Ray was started by this process (``ray.init()`` without an address): such a local
    Ray has no autoscaler, so nothing it lacks now will ever appear."""
    try:
        import ray._private.worker as worker

        node = worker._global_node
        return bool(node is not None and getattr(node, "head", False))
    except Exception:  # noqa: BLE001 - unknown: assume a cluster that might grow
        return False


def runs_as_task(num_workers: int, launcher: str = "auto") -> bool:
    """Whether the loop runs in one task (or one Tune trial's process) rather than a Ray Train worker group."""
    return int(num_workers) == 1 and launcher == "auto"


def task_cpus(resources_per_worker: dict[str, float] | None) -> tuple[float, int]:
    """(CPUs the one-worker task reserves, its torch threads)."""
    cpus = float((resources_per_worker or {}).get("CPU", 1.0))
    return cpus, max(1, int(cpus))


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker."""
    run_loop(cfg, RayTrainSession())


def make_trainer(cfg: dict[str, Any], *, name: str, storage_path: str | Path, num_workers: int, use_gpu: bool,
                 resources_per_worker: dict[str, float] | None, max_failures: int, callbacks: list | None = None):
    """A ``TorchTrainer`` for the SENCA-st loop (ScalingConfig and FailureConfig from the spec)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {k: float(v) for k, v in (resources_per_worker or {}).items()} or None
    if resources and not use_gpu:
        resources.pop("GPU", None)
    run_config = ray.train.RunConfig(
        name=name, storage_path=str(storage_path),
        failure_config=ray.train.FailureConfig(max_failures=int(max_failures)),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks or None,
    )
    from ._ddp import LoopbackTorchConfig

    return TorchTrainer(
        train_loop_per_worker, train_loop_config=cfg, torch_config=LoopbackTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=int(num_workers), use_gpu=bool(use_gpu),
                                               resources_per_worker=resources),
        run_config=run_config,
    )


def _solo(cfg: dict[str, Any], run_dir: str, device: str) -> dict[str, Any]:
    """The body of the one-worker task: the loop, then the newest checkpoint's directory."""
    session = SoloSession(run_dir, device=device)
    metrics = run_loop(cfg, session)
    return {"metrics": metrics, "checkpoint": str(session.checkpoints()[-1])}


def run_solo(cfg: dict[str, Any], *, run_dir: str | Path, cpus: float, use_gpu: bool,
             max_failures: int) -> dict[str, Any]:
    """The loop in one Ray task (``cpus`` reserved, torch threads = cpus); retried ``max_failures`` times when
    its worker process dies, each retry continuing from the newest checkpoint in ``run_dir``."""
    import ray

    cpus, threads = task_cpus({"CPU": cpus})
    task = ray.remote(_solo).options(num_cpus=float(cpus), num_gpus=1 if use_gpu else 0,
                                     max_retries=int(max_failures), retry_exceptions=False)
    return ray.get(task.remote(dict(cfg, threads=threads), str(run_dir), "cuda" if use_gpu else "cpu"))


def where_train_finds_its_cluster(fn, *args: Any, api_server: str | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` where Ray Train's controller can find its cluster.

    Ray Train's controller (and its placement-group cleaner) query Ray's state API, and a process without an
    address looks the cluster up on the machine: beside another Ray it fails ("Found multiple active Ray
    instances") or finds the other one. ``api_server``: the embedded Ray's workers all have its state API address
    in their environment (``senca_platform.ray_local`` starts it so; ``plan["ray_api_server"]``), so ``fn`` runs
    here, in a thread beside the caller's (Ray Train registers its own Ctrl-C handler only on the main thread: the
    run's handler stays). Any other embedded Ray: ``fn`` runs in a zero-CPU Ray task whose environment sets
    ``RAY_ADDRESS`` to this Ray's GCS; the controller, the workers and Tune's trials it starts inherit it. That task
    is one more Python process before the controller's (2 s and 2.3 CPU-s on 2 cores, docs/BENCHMARKS.md). On a
    cluster ``fn`` runs here. An error inside comes back as itself, not wrapped."""
    if not ray_is_embedded():
        return fn(*args, **kwargs)
    if api_server:
        from functools import partial

        from ._background import Background

        return Background(partial(fn, *args, **kwargs), name="senca-train-driver").result()
    import ray

    env = {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
    task = ray.remote(fn).options(num_cpus=0, max_retries=0, runtime_env=env)
    try:
        return ray.get(task.remote(*args, **kwargs))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, Exception):
            raise err.cause from None
        raise


def _fit_worker_group(cfg: dict[str, Any], *, out_dir: str, name: str, storage_path: str, num_workers: int,
                      use_gpu: bool, resources_per_worker: dict[str, float] | None,
                      max_failures: int) -> dict[str, Any]:
    """Ray Train's worker group: fit, copy the final model to ``out_dir``; the checkpoint, metrics and history."""
    trainer = make_trainer(cfg, name=name, storage_path=storage_path, num_workers=num_workers, use_gpu=use_gpu,
                           resources_per_worker=resources_per_worker, max_failures=max_failures)
    result = trainer.fit()
    if getattr(result, "error", None):
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        history = _copy_model(d, Path(out_dir))
    return {"checkpoint": str(result.checkpoint.path), "metrics": dict(result.metrics or {}), "history": history}


def run_training(cfg: dict[str, Any], *, out_dir: str | Path, name: str, storage_path: str | Path,
                 num_workers: int, use_gpu: bool, resources_per_worker: dict[str, float] | None,
                 max_failures: int, resume: bool = False, launcher: str = "auto",
                 api_server: str | None = None) -> dict[str, Any]:
    """Fit the model; copy the final checkpoint's model to ``out_dir/model.pt``.

    Returns ``{"model_path", "history", "checkpoint_path", "metrics", "launcher"}``. ``resume=False`` clears an
    earlier (interrupted) run of the same name first; ``resume=True`` continues it from its latest checkpoint.
    ``num_workers`` is the number to run (see :func:`plan_workers`); with one worker and ``launcher="auto"`` the
    loop runs as one Ray task holding the CPUs of ``resources_per_worker``. ``api_server``: see
    :func:`where_train_finds_its_cluster`.
    """
    from ._files import atomic_write_json

    storage_path = Path(storage_path)
    run_dir = storage_path / name
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    if runs_as_task(num_workers, launcher):
        res = run_solo(cfg, run_dir=run_dir, cpus=task_cpus(resources_per_worker)[0], use_gpu=use_gpu,
                       max_failures=max_failures)
        checkpoint_dir, metrics, used = Path(res["checkpoint"]), res["metrics"], "ray_task"
    else:
        res = where_train_finds_its_cluster(
            _fit_worker_group, cfg, out_dir=str(out_dir), name=name, storage_path=str(storage_path),
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker,
            max_failures=max_failures, api_server=api_server)
        checkpoint_dir, metrics, history, used = res["checkpoint"], res["metrics"], res["history"], "ray_train"
    if used == "ray_task":
        history = _copy_model(checkpoint_dir, Path(out_dir))
    atomic_write_json(Path(out_dir) / "history.json", history)
    return {"model_path": str(Path(out_dir) / "model.pt"), "history": history,
            "checkpoint_path": str(checkpoint_dir), "metrics": metrics, "launcher": used}


def _copy_model(checkpoint_dir: str | Path, out_dir: Path) -> list[dict[str, Any]]:
    """The checkpoint's model to ``out_dir/model.pt``; returns its history."""
    from ._files import atomic_write_bytes

    model_file, history = read_checkpoint(checkpoint_dir)
    atomic_write_bytes(out_dir / "model.pt", model_file.read_bytes())
    return history
