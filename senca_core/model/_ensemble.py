"""An ensemble of SENCA-st networks trained side by side (``SencaConfig.n_models``), for steadier regions.

One network's regions move with its seed: on the small legacy ST sections the ARI over ten training seeds has an
sd of 0.03-0.09. Three networks bring it to 0.013 on HER2ST A1 and 0.028 on C1, with C1's mean 0.06 lower and
DLPFC level (docs/BENCHMARKS.md, "An ensemble of three networks"): an option, not the default.

``n_models`` networks, each initialised by the same seed's generator one after the other, train on the same slides
at the same steps; each member's loss is its own (the members never see each other), and the step optimises their
sum, so each member gets the gradient it would get alone (gradients are clipped member by member,
``clip_members``). The region readout is the members' readouts side by side (``[r_1 | r_2 | ...]``, see
``_readout``); ``tl.cluster`` gives each member's block its own consensus and keeps the consensus of those
(``uns["senca"]["readout_blocks"]``). Cost: ``n_models`` times the training and the inference of one network, and
that many times the consensus's cuts.

``n_models=1`` builds the plain :class:`~senca_core.model._network.SencaModel` (no wrapper): results, files and
random streams are those of one network.
"""

from __future__ import annotations

import torch
from torch import nn

from ._batch import SlideBatch
from ._config import SencaConfig
from ._network import SencaModel


class SencaEnsemble(nn.Module):
    """``n_models`` independent :class:`SencaModel` members; the same interface as one (``config``, ``n_expr``,
    ``n_hist``, ``forward``, ``loss``)."""

    def __init__(self, config: SencaConfig, n_expr: int, n_hist: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.members = nn.ModuleList([SencaModel(config, n_expr=n_expr, n_hist=n_hist)
                                      for _ in range(config.n_models)])

    @property
    def n_expr(self) -> int:
        return self.members[0].n_expr

    @property
    def n_hist(self) -> int:
        return self.members[0].n_hist

    def forward(self, batch: SlideBatch, *, objective: bool = False, generator: torch.Generator | None = None,
                use_prototypes: bool = True):
        """The members' embeddings side by side (n, n_models * D); with ``objective`` ``(loss, parts)``."""
        if objective:
            return self.loss(batch, generator=generator, use_prototypes=use_prototypes)
        return torch.cat([m.encode(batch) for m in self.members], dim=1)

    def loss(self, batch: SlideBatch, *, generator: torch.Generator | None = None,
             use_prototypes: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of the members' losses (each member's gradient is its own); the parts logged are the members'
        means, so a curve reads as one network's."""
        total, logs = None, {}
        for member in self.members:
            loss, parts = member.loss(batch, generator=generator, use_prototypes=use_prototypes)
            total = loss if total is None else total + loss
            for key, value in parts.items():
                logs[key] = logs.get(key, 0.0) + value / len(self.members)
        return total, logs


def network(config: SencaConfig, n_expr: int, n_hist: int) -> SencaModel | SencaEnsemble:
    """The network a configuration asks for: one :class:`SencaModel`, or an ensemble of ``n_models``."""
    if config.n_models > 1:
        return SencaEnsemble(config, n_expr=n_expr, n_hist=n_hist)
    return SencaModel(config, n_expr=n_expr, n_hist=n_hist)


def members(model: nn.Module) -> list[SencaModel]:
    """The networks of a model (itself when it is one; unwraps DistributedDataParallel)."""
    core = getattr(model, "module", model)
    return list(core.members) if isinstance(core, SencaEnsemble) else [core]


def clip_members(model: nn.Module, max_norm: float) -> None:
    """Clip each member's gradient norm to ``max_norm`` on its own, as it would be clipped trained alone."""
    for member in members(model):
        torch.nn.utils.clip_grad_norm_(member.parameters(), max_norm)
