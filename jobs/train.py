"""Stage 2, training, with Ray Train: ``TorchTrainer`` + DDP over slides.

Each worker holds a shard of the cohort's slides (round robin by rank, padded by cycling its own slides so that
every worker takes the same number of steps per epoch, as DDP requires) and runs the SAME step function as the
single-process loop, ``senca_core.model.train_step``, on a ``DistributedDataParallel`` model built with
``find_unused_parameters=True`` (a slide without an image skips the image branch). Loss parts are averaged over
the workers every epoch; rank 0 writes a checkpoint every epoch (``model.pt`` in ``senca_core.model.save_model``
format + ``train_state.pt`` with the optimiser, epoch and history) and reports it with the epoch's metrics.
A restarted worker group (``FailureConfig``: a worker process died, up to ``max_failures`` times) or a resumed
run continues from the latest checkpoint: weights, optimiser, the next epoch and the history so far, so that no
epoch is lost or repeated in the history; every epoch record of a restored attempt carries
``restored_from_epoch`` (the checkpoint's epoch; absent in a run that started from scratch).

When ``cfg["eval"]["metric"]`` is set (Tune), rank 0 also computes the objective every ``eval["every"]`` epochs and
on the last one: embeddings of every slide, regions on the pooled embeddings (``senca_core.tl.cluster``), then the
mean ARI over labelled slides, the mean silhouette, or the validation loss. Between evaluations the last value is
carried, so every report holds the metric (ASHA needs it at its milestones).

Fault injection for the tests (off by default, see ``jobs._util``): every worker calls
``fault_point("train.rank<r>.epoch<e>")`` after the epoch's optimiser steps, before the metrics are gathered
and the checkpoint written.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any


# ------------------------------------------------------------------------------------------ shards + eval
def shard(paths: list[str], rank: int, world: int) -> list[str]:
    """Round-robin shard of ``paths`` for ``rank``, padded (cycling) to ``ceil(n / world)`` slides."""
    n = len(paths)
    steps = max(1, math.ceil(n / world))
    mine = [paths[i] for i in range(rank, n, world)] or [paths[rank % n]]
    return [mine[i % len(mine)] for i in range(steps)]


def evaluate(model, adatas: list, metric: str, ev: dict[str, Any]) -> dict[str, float]:
    """The tuning objective on every slide: ``ari`` (mean over labelled slides), ``silhouette`` or ``loss``."""
    import numpy as np
    import torch
    from senca_core import metrics, tl
    from senca_core.model import make_batch, readout

    from .infer import cluster_args

    core = getattr(model, "module", model)
    was_training = core.training
    out: dict[str, float] = {}
    if metric == "loss":
        core.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            device = next(core.parameters()).device
            generator = torch.Generator().manual_seed(int(ev.get("seed", 0)))
            for a in adatas:
                loss, _ = core(make_batch(a, core.config).to(device), objective=True, generator=generator)
                total += float(loss) * a.n_obs
                n += a.n_obs
        out["objective"] = total / max(n, 1)
    else:
        for a in adatas:  # the region readout, clustered as the infer stage clusters it
            a.obsm["X_senca"] = readout(core, a)[1].astype(np.float32)
        tl.cluster(adatas, **cluster_args(ev))
        if metric == "ari":
            scores = [metrics.ari(a) for a in adatas if "label" in a.obs]
            out["objective"] = float(np.nanmean(scores)) if scores else float("nan")
            for a, s in zip([a for a in adatas if "label" in a.obs], scores):
                out[f"ari_{a.uns['senca']['slide_id']}"] = float(s)
        else:
            scores = [metrics.silhouette(a) for a in adatas]
            out["objective"] = float(np.nanmean(scores))
    if was_training:
        core.train()
    return out


# ------------------------------------------------------------------------------------------ the worker loop
def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``cfg``: model (SencaConfig dict), slide_paths, n_expr, n_hist, eval,
    threads, and (from Tune) model overrides at the top level under ``"overrides"``."""
    import anndata as ad
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from senca_core.model import SencaConfig, SencaModel, init_prototypes, make_batch, make_optimizer, \
        prototype_warmup, save_model, seed_everything, train_step

    from ._util import fault_point, peak_rss_mb

    torch.set_num_threads(int(cfg.get("threads") or 1))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model_cfg = dict(cfg["model"], **cfg.get("overrides", {}))
    model_cfg["device"] = "cuda" if device.type == "cuda" else "cpu"
    config = SencaConfig.from_dict(model_cfg)

    paths = list(cfg["slide_paths"])
    mine = shard(paths, rank, world)
    cache: dict[str, Any] = {}
    batches = []
    for p in mine:
        if p not in cache:
            cache[p] = make_batch(ad.read_h5ad(p), config).to(device)
        batches.append(cache[p])

    torch.manual_seed(config.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = SencaModel(config, n_expr=int(cfg["n_expr"]), n_hist=int(cfg["n_hist"])).to(device)
    optimizer = make_optimizer(model, config)
    start, history, last_eval, restored_from = 0, [], {}, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            payload = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(payload["state_dict"])
            state = torch.load(Path(d) / "train_state.pt", map_location="cpu", weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            start, history, last_eval = int(state["epoch"]) + 1, list(state["history"]), dict(state["last_eval"])
            restored_from = int(state["epoch"])
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) \
        if world > 1 else model
    core = getattr(ddp, "module", ddp)
    generator = seed_everything(config.seed + 1000 * rank + start)

    ev = dict(cfg.get("eval") or {})
    metric = ev.get("metric")
    every = max(1, int(ev.get("every", 1)))
    eval_adatas = None
    warmup = prototype_warmup(config)  # fit's own schedule

    for epoch in range(start, config.epochs):
        if config.hierarchical and config.w_proto > 0 and epoch == warmup:
            init_prototypes(core, batches, generator)
            if world > 1 and dist.is_initialized():
                dist.broadcast(core.prototypes.data, src=0)
        order = list(range(len(batches)))
        random.Random(config.seed * 7919 + epoch * 31 + rank).shuffle(order)
        sums: dict[str, float] = {}
        for i in order:
            parts = train_step(ddp, batches[i], optimizer, generator=generator, use_prototypes=epoch >= warmup)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        fault_point(f"train.rank{rank}.epoch{epoch}")  # tests only: a no-op unless SENCA_FAULT_PIDDIR is set
        means = {k: v / len(batches) for k, v in sums.items()}
        if world > 1 and dist.is_initialized():  # parts differ by slide ("align" needs an image): gather dicts
            gathered: list = [None] * world
            dist.all_gather_object(gathered, means)
            means = {k: float(np.mean([g[k] for g in gathered if k in g]))
                     for k in sorted({k for g in gathered for k in g})}
        metrics: dict[str, Any] = dict(means)
        metrics["epoch"] = epoch
        metrics["world_size"] = world
        metrics["peak_rss_mb"] = peak_rss_mb()
        if restored_from is not None:
            metrics["restored_from_epoch"] = restored_from
        last = epoch == config.epochs - 1
        if metric and rank == 0 and ((epoch + 1) % every == 0 or last):
            if eval_adatas is None:
                eval_adatas = [ad.read_h5ad(p) for p in paths]
            last_eval = evaluate(ddp, eval_adatas, metric, ev)
        if metric:
            metrics.update(last_eval or {"objective": float("nan")})
        history.append({k: v for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_model(core, Path(tmp) / "model.pt")
                torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                            "last_eval": last_eval}, Path(tmp) / "train_state.pt")
                (Path(tmp) / "history.json").write_text(json.dumps(history))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)


# ------------------------------------------------------------------------------------------ the driver side
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
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=int(num_workers), use_gpu=bool(use_gpu),
                                               resources_per_worker=resources),
        run_config=run_config,
    )


def read_checkpoint(checkpoint_dir: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """(model file, per-epoch history) of a checkpoint directory written by the loop."""
    d = Path(checkpoint_dir)
    history = json.loads((d / "history.json").read_text()) if (d / "history.json").exists() else []
    return d / "model.pt", history


def run_training(cfg: dict[str, Any], *, out_dir: str | Path, name: str, storage_path: str | Path,
                 num_workers: int, use_gpu: bool, resources_per_worker: dict[str, float] | None,
                 max_failures: int, resume: bool = False) -> dict[str, Any]:
    """Fit the model with Ray Train; copy the final checkpoint's model to ``out_dir/model.pt``.

    Returns ``{"model_path", "history", "checkpoint_path", "metrics"}``. ``resume=False`` clears an earlier
    (interrupted) run of the same name first; ``resume=True`` continues it from its latest checkpoint.
    """
    from ._util import atomic_write_bytes, atomic_write_json

    storage_path = Path(storage_path)
    if not resume and (storage_path / name).exists():
        shutil.rmtree(storage_path / name)
    trainer = make_trainer(cfg, name=name, storage_path=storage_path, num_workers=num_workers, use_gpu=use_gpu,
                           resources_per_worker=resources_per_worker, max_failures=max_failures)
    result = trainer.fit()
    if getattr(result, "error", None):
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    out_dir = Path(out_dir)
    with result.checkpoint.as_directory() as d:
        model_file, history = read_checkpoint(d)
        atomic_write_bytes(out_dir / "model.pt", model_file.read_bytes())
    atomic_write_json(out_dir / "history.json", history)
    return {"model_path": str(out_dir / "model.pt"), "history": history,
            "checkpoint_path": str(result.checkpoint.path), "metrics": dict(result.metrics or {})}

