"""An ensemble of SENCA-st networks trained side by side (``SencaConfig.n_models``), for steadier regions.

One network's regions move with its seed: on the small legacy ST sections the ARI over ten training seeds has an
sd of 0.03-0.09. With the six-cut consensus (the default cut until 2026-12-06) three networks brought it to 0.013
on HER2ST A1 and 0.028 on C1, with C1's mean 0.06 lower and DLPFC level (docs/BENCHMARKS.md, "An ensemble of three
networks"). With the two-cut consensus (the default since) they steady A1 only (0.024 against 0.051), leave B1
(0.025), C1 (0.089) and DLPFC 151673 (0.030) where one network is, and the means level (A1 0.456, B1 0.413, C1
0.484, DLPFC 0.538 against 0.464 / 0.432 / 0.459 / 0.527; "Tried on 2026-12-07, twentieth stop"): an option, not
the default.

``n_models`` networks, each initialised by the same seed's generator one after the other, train on the same slides
at the same steps; each member's loss is its own (the members never see each other), and the step optimises their
sum, so each member gets the gradient it would get alone (gradients are clipped member by member,
``clip_members``). The region readout is the members' readouts side by side (``[r_1 | r_2 | ...]``, see
``_readout``); ``tl.cluster`` gives each member's block its own consensus and keeps the consensus of those
(``uns["senca"]["readout_blocks"]``). Cost: ``n_models`` times the training and the inference of one network, and
that many times the consensus's cuts.

``n_models=1`` builds the plain :class:`~senca_core.model._network.SencaModel` (no wrapper): results, files and
random streams are those of one network.

**A snapshot ensemble** (``SencaConfig.snapshots``, an option): no extra training. The network (or each network of
an ``n_models`` ensemble) as it was after epoch ``E - j * snapshot_every`` for ``j = snapshots - 1, ..., 0`` (``E``
the last) are the members of the model that is stored and read out, side by side as above, oldest first. Training is
untouched (the last member is the network trained without snapshots, bit for bit); the read-out, the consensus
and the model file grow ``snapshots`` times. Measured (docs/BENCHMARKS.md, "A snapshot ensemble"): with 3 snapshots
25 epochs apart and the six-cut consensus of that time, the sd of the ARI over training seeds fell from 0.045 to
0.026 on HER2ST A1, 0.077 to 0.032 on C1 and 0.028 to 0.009 on DLPFC 151673, the means level to 0.02 lower. With
the two-cut consensus (the default since 2026-12-06, "The consensus of two HMRF-EM cuts") it steadies DLPFC (0.015
against 0.028) but not A1 (0.049 against 0.051) or C1 (0.081 against 0.098).
"""

from __future__ import annotations

import torch
from torch import nn

from ._batch import SlideBatch
from ._config import SencaConfig
from ._network import SencaModel


class SencaEnsemble(nn.Module):
    """``n_models`` independent :class:`SencaModel` members (``n_members`` of them instead: a stored snapshot
    ensemble's, see :func:`with_snapshots`); the same interface as one (``config``, ``n_expr``, ``n_hist``,
    ``forward``, ``loss``)."""

    def __init__(self, config: SencaConfig, n_expr: int, n_hist: int, n_members: int | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.members = nn.ModuleList([SencaModel(config, n_expr=n_expr, n_hist=n_hist)
                                      for _ in range(config.n_models if n_members is None else n_members)])

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


def network(config: SencaConfig, n_expr: int, n_hist: int, *,
            n_members: int | None = None) -> SencaModel | SencaEnsemble:
    """The network a configuration asks for: one :class:`SencaModel`, or an ensemble of ``n_models``.
    ``n_members``: that many members instead (a stored model's count: a snapshot ensemble has more)."""
    n = config.n_models if n_members is None else int(n_members)
    if n > 1:
        return SencaEnsemble(config, n_expr=n_expr, n_hist=n_hist, n_members=n)
    return SencaModel(config, n_expr=n_expr, n_hist=n_hist)


def snapshot_epochs(config: SencaConfig) -> set[int]:
    """The epochs (0-based) after which the training keeps a copy of the network for the snapshot ensemble (the
    last epoch's network is the model itself, so not among them); none before the first epoch."""
    last = config.epochs - 1
    return {e for e in (last - j * config.snapshot_every for j in range(1, config.snapshots)) if e >= 0}


def snapshot_of(model: nn.Module) -> dict:
    """A copy of the network's weights now (``state_dict`` tensors cloned, on their device)."""
    core = getattr(model, "module", model)
    return {k: v.detach().clone() for k, v in core.state_dict().items()}


def with_snapshots(model: nn.Module, snapshots: list[dict]) -> nn.Module:
    """The model to store and read out: ``model`` itself without snapshots; else one ensemble whose members are the
    snapshots' networks (``state_dict`` copies of ``model``, oldest first), then ``model``'s own."""
    core = getattr(model, "module", model)
    if not snapshots:
        return core
    per = len(members(core))
    with torch.random.fork_rng(devices=[]):  # a new module draws initial weights: the training's stream stays as it is
        stored = SencaEnsemble(core.config, n_expr=core.n_expr, n_hist=core.n_hist,
                               n_members=per * (len(snapshots) + 1))
    stored.load_state_dict(_join_snapshots([*snapshots, core.state_dict()], per))
    return stored.to(next(core.parameters()).device).eval()


def _join_snapshots(states: list[dict], per: int) -> dict:
    """The stored model's ``state_dict`` from its networks' (oldest first, each with ``per`` members as trained):
    network ``g``'s member ``j`` becomes member ``g * per + j``. :func:`split_snapshots` is the inverse."""
    joined = {}
    for g, state in enumerate(states):
        for key, value in state.items():
            j, rest = (0, key) if per == 1 else key.split(".", 2)[1:]
            joined[f"members.{g * per + int(j)}.{rest}"] = value
    return joined


def members(model: nn.Module) -> list[SencaModel]:
    """The networks of a model (itself when it is one; unwraps DistributedDataParallel)."""
    core = getattr(model, "module", model)
    return list(core.members) if isinstance(core, SencaEnsemble) else [core]


def clip_members(model: nn.Module, max_norm: float) -> None:
    """Clip each member's gradient norm to ``max_norm`` on its own, as it would be clipped trained alone."""
    for member in members(model):
        torch.nn.utils.clip_grad_norm_(member.parameters(), max_norm)


def split_snapshots(state: dict, n_members: int, per: int) -> tuple[list[dict], dict]:
    """The inverse of :func:`_join_snapshots`: a stored model's ``state_dict`` (``n_members`` members,
    ``per`` of them per network as trained) -> (the snapshots' ``state_dict`` s, oldest first; the last network's),
    each in the trained network's own layout. A model without snapshots comes back as it is."""
    if n_members <= per:
        return [], state
    groups: list[dict] = [{} for _ in range(n_members // per)]
    for key, value in state.items():
        index, rest = key.split(".", 2)[1:]
        i = int(index)
        groups[i // per][rest if per == 1 else f"members.{i % per}.{rest}"] = value
    return groups[:-1], groups[-1]
