"""Where a training worker's rank, device and checkpoints come from: the sessions ``jobs.train_loop.run_loop``
runs under. :class:`RayTrainSession` is a worker of a Ray Train ``TorchTrainer`` (DDP over slides);
:class:`SoloSession` the only worker inside one Ray task; :class:`OneWorkerSession` what every one-worker session
shares (``jobs.tune`` runs the loop in a Tune trial with it)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .train_loop import HISTORY_FILE


@contextmanager
def local_dir(checkpoint) -> Iterator[Path | None]:
    """A Ray ``Checkpoint`` as a local directory while the block runs (``None`` for no checkpoint)."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        yield Path(d)


class RayTrainSession:
    """A worker of a Ray Train ``TorchTrainer``: rank, world size and device from Ray Train; checkpoints go
    through ``ray.train.report`` (Ray Train keeps ``num_to_keep`` of them in the run's storage)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def latest_checkpoint(self):
        import ray.train

        return local_dir(ray.train.get_checkpoint())

    def prepare(self, model):
        import ray.train.torch

        if self.world == 1:
            return model
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    def synced(self, flag: bool) -> bool:
        """The same decision on every rank (rank 0's clock decides a time-based report; a barrier needs all)."""
        import torch
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.broadcast(t, src=0)
        return bool(t.item())


class OneWorkerSession:
    """What every one-worker session shares: rank 0 of 1, the plain model (no DDP), decisions needing no sync.
    Subclasses say where checkpoints come from and go (``latest_checkpoint``, ``report``)."""

    rank, world = 0, 1

    def __init__(self, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)

    def prepare(self, model):
        return model

    def synced(self, flag: bool) -> bool:
        return flag


class SoloSession(OneWorkerSession):
    """The only worker, inside one Ray task: checkpoints are directories ``<run_dir>/checkpoint_<epoch>`` written
    whole (temp directory + rename); the two newest are kept. A retried task finds the newest and continues."""

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        super().__init__(device)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.run_dir.glob("checkpoint_*") if p.is_dir() and (p / HISTORY_FILE).exists())

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        final = self.run_dir / f"checkpoint_{int(metrics['epoch']):06d}"
        staging = self.run_dir / f".staging_{final.name}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in self.checkpoints()[:-2]:
            shutil.rmtree(old, ignore_errors=True)
