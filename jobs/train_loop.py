"""The SENCA-st training loop run by every training worker, whatever launched it.

``run_loop(cfg, session)`` is Ray's ``train_loop_per_worker`` body. The *session* (``jobs.train_sessions``) says
who the worker is and where its checkpoints go: ``RayTrainSession`` inside a Ray Train ``TorchTrainer`` (DDP over
slides, several workers), ``SoloSession`` inside one Ray task (one worker: ``jobs.train`` launches it when the
cohort is too small for DDP to pay for its worker group). Both run the SAME step function as ``senca_core.model.fit``.

Each worker holds a shard of the cohort's slides (round robin by rank, padded by cycling its own slides so that
every worker takes the same number of steps per epoch, as DDP requires). Loss parts are averaged over the workers.

What an epoch costs beyond its optimiser steps is kept small, because a full-batch epoch on a real section takes
milliseconds (:class:`Policy`):

- a checkpoint (``model.pt`` in ``senca_core.model.save_model`` format + ``train_state.pt`` with the optimiser,
  every rank's random generators, the epoch and the history) every ``checkpoint.every_epochs`` epochs but at
  most one per ``checkpoint.min_interval_s`` seconds, and always after the last epoch;
- a report to the launcher (Ray Train's ``report`` is a barrier across the workers) only with a checkpoint, an
  evaluation, or when ``report_interval_s`` passed;
- every epoch, rank 0 appends one JSON line (epoch, wall-clock ``time``, loss parts) to ``cfg["live_path"]``: the
  driver tails that file and hands the records to the tracker while training runs (``jobs.live``).

A restarted worker (its process died: Ray Train's ``FailureConfig`` or the task's retries) or a resumed run
continues from the latest checkpoint: weights, optimiser, each rank's random generators, the next epoch and the
history so far, so that no epoch is lost or repeated in the history and a worker group of the same size computes
what it would have computed without the fault; every epoch record of a restored attempt carries
``restored_from_epoch``.

Fault injection for the tests (off by default, see ``jobs._faults``): every worker calls
``fault_point("train.rank<r>.epoch<e>")`` after the epoch's optimiser steps, before the metrics are gathered.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: files of one checkpoint directory
MODEL_FILE, STATE_FILE, HISTORY_FILE = "model.pt", "train_state.pt", "history.json"


# ------------------------------------------------------------------------------------------ policy
@dataclass(frozen=True)
class Policy:
    """When an epoch ends with a checkpoint or a report (see the module docstring)."""

    every_epochs: int = 10
    min_interval_s: float = 30.0
    report_interval_s: float = 10.0

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> "Policy":
        c = dict(cfg.get("checkpoint") or {})
        return cls(every_epochs=max(1, int(c.get("every_epochs", cls.every_epochs))),
                   min_interval_s=max(0.0, float(c.get("min_interval_s", cls.min_interval_s))),
                   report_interval_s=max(0.0, float(c.get("report_interval_s", cls.report_interval_s))))

    def checkpoint_due(self, epoch: int, last: bool, since_checkpoint_s: float) -> bool:
        return last or ((epoch + 1) % self.every_epochs == 0 and since_checkpoint_s >= self.min_interval_s)

    def report_due(self, since_report_s: float) -> bool:
        return since_report_s >= self.report_interval_s


def shard(paths: list[str], rank: int, world: int) -> list[str]:
    """Round-robin shard of ``paths`` for ``rank``, padded (cycling) to ``ceil(n / world)`` slides."""
    n = len(paths)
    steps = max(1, math.ceil(n / world))
    mine = [paths[i] for i in range(rank, n, world)] or [paths[rank % n]]
    return [mine[i % len(mine)] for i in range(steps)]


# ------------------------------------------------------------------------------------------ the loop
def run_loop(cfg: dict[str, Any], session) -> dict[str, Any]:
    """Train on this worker's shard. ``cfg``: model (SencaConfig dict), overrides, slide_paths, n_expr, n_hist,
    eval, threads, checkpoint (:class:`Policy`), live_path (optional). Returns the last metrics. Torch's
    deterministic algorithms are on, as in ``senca_core.model.fit``: one seed, the same model on every rerun; freed
    memory stays in the heap between epochs (``senca_core._heap``)."""
    from senca_core.model import deterministic, retained_heap

    with deterministic(), retained_heap():  # the heap kept between epochs: senca_core._heap
        return _run_loop(cfg, session)


def _run_loop(cfg: dict[str, Any], session) -> dict[str, Any]:
    import anndata as ad
    import numpy as np
    import torch
    import torch.distributed as dist
    from senca_core.model import SencaConfig, init_prototypes, make_batch, make_optimizer, members, network, \
        precision_name, prototype_warmup, seed_everything, snapshot_epochs, snapshot_of, train_step, with_snapshots

    from ._faults import fault_point
    from ._memory import peak_rss_mb

    torch.set_num_threads(max(1, int(cfg.get("threads") or 1)))
    rank, world, device = session.rank, session.world, session.device
    model_cfg = dict(cfg["model"], **cfg.get("overrides", {}))
    model_cfg["device"] = "cuda" if device.type == "cuda" else "cpu"
    config = SencaConfig.from_dict(model_cfg)
    policy = Policy.from_cfg(cfg)

    paths = list(cfg["slide_paths"])
    cache: dict[str, Any] = {}
    batches = []
    for p in shard(paths, rank, world):
        if p not in cache:
            cache[p] = make_batch(ad.read_h5ad(p), config).to(device)
        batches.append(cache[p])

    torch.manual_seed(config.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = network(config, n_expr=int(cfg["n_expr"]), n_hist=int(cfg["n_hist"])).to(device)
    optimizer = make_optimizer(model, config)
    generator = seed_everything(config.seed + 1000 * rank)
    start, history, last_eval, restored_from, exact = 0, [], {}, None, True
    keep, snapshots = snapshot_epochs(config), []  # the snapshot ensemble's earlier networks (SencaConfig.snapshots)
    with session.latest_checkpoint() as d:
        if d is not None:
            start, history, last_eval, exact, snapshots = _restore(d, model, optimizer, generator, rank, world)
            restored_from = start - 1
            if not exact:  # another group size: a fresh stream per rank for the epochs to come
                generator = seed_everything(config.seed + 1000 * rank + start)
    ddp = session.prepare(model)
    core = getattr(ddp, "module", ddp)

    precision = precision_name(config.precision, device)  # the worker's own hardware decides (``auto``)
    ev = dict(cfg.get("eval") or {})
    metric = ev.get("metric")
    every = max(1, int(ev.get("every", 1)))
    eval_adatas = None
    warmup = prototype_warmup(config)  # fit's own schedule
    live = LiveWriter(cfg.get("live_path") if rank == 0 else None, trial=cfg.get("trial"))
    last_ckpt = last_report = time.monotonic()
    metrics: dict[str, Any] = {}

    for epoch in range(start, config.epochs):
        if config.hierarchical and config.w_proto > 0 and epoch == warmup:
            init_prototypes(core, batches, generator)
            if world > 1 and dist.is_initialized():
                for member in members(core):
                    dist.broadcast(member.prototypes.data, src=0)
        order = list(range(len(batches)))
        random.Random(config.seed * 7919 + epoch * 31 + rank).shuffle(order)
        sums: dict[str, float] = {}
        for i in order:
            parts = train_step(ddp, batches[i], optimizer, generator=generator, use_prototypes=epoch >= warmup)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        if epoch in keep:
            snapshots.append(snapshot_of(core))
        fault_point(f"train.rank{rank}.epoch{epoch}")  # tests only: a no-op unless SENCA_FAULT_PIDDIR is set
        means = {k: v / len(batches) for k, v in sums.items()}
        if world > 1 and dist.is_initialized():  # parts differ by slide ("align" needs an image): gather dicts
            gathered: list = [None] * world
            dist.all_gather_object(gathered, means)
            means = {k: float(np.mean([g[k] for g in gathered if k in g]))
                     for k in sorted({k for g in gathered for k in g})}
        metrics = dict(means, epoch=epoch, epochs_done=epoch + 1, world_size=world, peak_rss_mb=peak_rss_mb(),
                       precision=precision)
        if restored_from is not None:  # a restarted attempt: from which checkpoint, and whether exactly
            metrics.update(restored_from_epoch=restored_from, restored_exact=exact)
        last = epoch == config.epochs - 1
        evaluated = bool(metric) and ((epoch + 1) % every == 0 or last)
        if evaluated and rank == 0:
            if eval_adatas is None:
                eval_adatas = [ad.read_h5ad(p) for p in paths]
            last_eval = evaluate(ddp, eval_adatas, metric, ev)
        if metric:
            metrics.update(last_eval or {"objective": float("nan")})
        now = time.monotonic()
        metrics["time"] = time.time()
        history.append(dict(metrics))
        live.write(metrics)
        checkpoint = session.synced(policy.checkpoint_due(epoch, last, now - last_ckpt))
        report = checkpoint or evaluated or session.synced(policy.report_due(now - last_report))
        if not report:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_dir = None
            rngs = _rank_rngs(generator, world) if checkpoint else None  # every rank takes part
            if checkpoint and rank == 0:
                ckpt_dir = _save(Path(tmp), with_snapshots(core, snapshots), optimizer, rngs, epoch, history,
                                 last_eval)
            session.report({k: v for k, v in metrics.items() if k != "time"}, ckpt_dir)
        last_report = time.monotonic()
        if checkpoint:
            last_ckpt = last_report
    live.close()
    return metrics


def _rng_state(generator) -> dict[str, Any]:
    """Every random state this worker's loop draws from: its torch generator (masks, corruption), torch's global
    generator (dropout), numpy's and Python's."""
    import numpy as np
    import torch

    return {"generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "np_random": np.random.get_state(), "py_random": random.getstate()}


def _rank_rngs(generator, world: int) -> list[dict[str, Any]]:
    """The random states of every rank, in rank order (gathered on all ranks: a collective call), so that a
    restarted worker group of the same size continues each rank's own streams."""
    import torch.distributed as dist

    mine = _rng_state(generator)
    if world <= 1 or not dist.is_initialized():
        return [mine]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered


def _save(d: Path, stored, optimizer, rngs: list[dict[str, Any]], epoch: int, history: list,
          last_eval: dict) -> Path:
    """``stored``: the model as a file holds it (the snapshots taken so far, then the network being trained)."""
    import torch
    from senca_core.model import save_model

    save_model(stored, d / MODEL_FILE)
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "history": history, "last_eval": last_eval,
                "rngs": rngs}, d / STATE_FILE)
    (d / HISTORY_FILE).write_text(json.dumps(history))
    return d


def _restore(d: Path, model, optimizer, generator, rank: int,
             world: int) -> tuple[int, list, dict, bool, list[dict]]:
    """Weights, optimiser, history, snapshots and this rank's random generators from checkpoint ``d`` (which
    holds every rank's). Returns (next epoch, history, last evaluation, whether the generators were restored: only
    when the checkpoint was written by a worker group of the same size, the snapshots taken)."""
    import numpy as np
    import torch
    from senca_core.model import members, split_snapshots

    payload = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=True)
    per = len(members(model))
    snapshots, current = split_snapshots(payload["state_dict"], int(payload.get("members", per)), per)
    model.load_state_dict(current)
    device = next(model.parameters()).device
    snapshots = [{k: v.to(device) for k, v in s.items()} for s in snapshots]
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    rngs = state.get("rngs") or []
    restored = len(rngs) == world
    if restored:
        mine = rngs[rank]
        generator.set_state(mine["generator"])
        torch.set_rng_state(mine["torch_rng"])
        np.random.set_state(mine["np_random"])
        random.setstate(mine["py_random"])
    return int(state["epoch"]) + 1, list(state["history"]), dict(state["last_eval"]), restored, snapshots


def read_checkpoint(checkpoint_dir: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """(model file, per-epoch history) of a checkpoint directory written by the loop."""
    d = Path(checkpoint_dir)
    history = json.loads((d / HISTORY_FILE).read_text()) if (d / HISTORY_FILE).exists() else []
    return d / MODEL_FILE, history


class LiveWriter:
    """Rank 0's per-epoch JSON lines (appended and flushed at once; the driver tails the file)."""

    def __init__(self, path: str | None, trial: str | None = None) -> None:
        self.fh = None
        self.trial = trial
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "a", encoding="utf-8")

    def write(self, metrics: dict[str, Any]) -> None:
        if self.fh is None:
            return
        record = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.trial:
            record["trial"] = self.trial
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(model, adatas: list, metric: str, ev: dict[str, Any]) -> dict[str, float]:
    """The tuning objective on every slide (higher is better except ``loss``).

    Label-free: ``reconstruction`` (R² of held-out spots' expression, ``model.heldout_r2``), ``stability`` (the
    infer-stage regions' reproducibility, ``metrics.stability``), ``silhouette``, ``loss``. ``ari`` (mean over
    labelled slides) uses the annotations and is only ever run when the spec asks for it.
    """
    import numpy as np
    import torch
    from senca_core import metrics, tl
    from senca_core.model import heldout_r2, make_batch, readout, readout_blocks

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
                _, parts = core(make_batch(a, core.config).to(device), objective=True, generator=generator)
                total += float(parts["loss"]) * a.n_obs  # an ensemble's: its members' mean
                n += a.n_obs
        out["objective"] = total / max(n, 1)
    elif metric == "reconstruction":
        out["objective"] = heldout_r2(core, adatas)
    else:
        for a in adatas:  # the region readout, clustered as the infer stage clusters it
            a.obsm["X_senca"] = readout(core, a)[1].astype(np.float32)
            a.uns.setdefault("senca", {})["readout_blocks"] = {"X_senca": readout_blocks(core)}
        k = tl.cluster(adatas, **cluster_args(ev))
        if metric == "ari":
            scores = [metrics.ari(a) for a in adatas if "label" in a.obs]
            out["objective"] = float(np.nanmean(scores)) if scores else float("nan")
            for a, s in zip([a for a in adatas if "label" in a.obs], scores):
                out[f"ari_{a.uns['senca']['slide_id']}"] = float(s)
        elif metric == "stability":
            out["objective"] = metrics.stability(adatas, k, seed=int(ev.get("seed", 0)))
        else:
            scores = [metrics.silhouette(a) for a in adatas]
            out["objective"] = float(np.nanmean(scores))
    if was_training:
        core.train()
    return out
