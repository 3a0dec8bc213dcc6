"""Ray Train's torch set-up with the rendezvous store on loopback (:mod:`jobs._loopback`); imports Ray Train."""

from __future__ import annotations

from dataclasses import dataclass

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from ._loopback import torch_store_on_loopback


class _LoopbackBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        worker_group.execute(torch_store_on_loopback)  # before rank 0 creates the store
        super().on_start(worker_group, backend_config)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` (gloo on CPU, nccl on GPU, ``env://``) with the store bound to 127.0.0.1 on a loopback node."""

    @property
    def backend_cls(self):
        return _LoopbackBackend
