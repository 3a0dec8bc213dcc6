"""The single-process training loop and the step function that the Ray Train stage calls too."""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from anndata import AnnData

from .._heap import retained_heap
from ..errors import ConfigError, SlideError
from ._adamw import AdamW
from ._batch import SlideBatch, make_batch
from ._config import SencaConfig
from ._ensemble import clip_members, members, network, snapshot_epochs, snapshot_of, with_snapshots
from ._network import SencaModel
from ._precision import training_autocast

EpochCallback = Callable[[int, dict[str, float]], None]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns the CPU generator used for masks and negatives."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextmanager
def deterministic() -> Iterator[None]:
    """Torch's deterministic algorithms while training, the caller's setting restored after: one seed gives
    bit-identical reruns. Without it the backward of the neighbour gathers (an accumulating index_put) sums in
    thread order on CPU with two or more threads: a 1e-8 difference at the first step that 200 epochs grow into
    other embeddings (measured: two CLI runs of a six-slide cohort). ``warn_only``: an op without a deterministic
    version warns instead of failing. Uninitialised memory is not filled with NaN (torch's debugging aid in this
    mode): every buffer the loop allocates is written before it is read, and the fill cost 8 % of an epoch."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    _use_deterministic(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        _use_deterministic(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def _use_deterministic(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its import of torch's compiler when nothing compiled is around.

    The public call also sets the compiler's own flag (``torch._inductor.config.deterministic``), importing the
    compiler stack to do so (torch._inductor, torch._dynamo: about 1 s of CPU in every training process). The eager
    kernels read only the switch set by ``torch._C._set_deterministic_algorithms``, which is all the public call
    does besides. So when the compiler is not loaded (nothing in this process can have compiled code) only that
    switch is set; when it is loaded, the public call keeps its flag in step."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def resolve_device(config: SencaConfig) -> torch.device:
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{config.device!r} requested but CUDA is not available on this machine")
    return torch.device(config.device)


def input_dims(batches: Sequence[SlideBatch]) -> tuple[int, int]:
    """(n_expr, n_hist) shared by the slides; slides without histology are allowed next to ones with it."""
    expr_dims = {b.expr.shape[1] for b in batches if b.expr is not None}
    hist_dims = {b.hist.shape[1] for b in batches if b.hist is not None}
    if len(expr_dims) > 1:
        raise SlideError(f"slides disagree on the expression feature width {sorted(expr_dims)}: "
                         "preprocess the cohort with one shared gene panel / PCA basis", field="expr")
    if len(hist_dims) > 1:
        raise SlideError(f"slides disagree on the histology feature width {sorted(hist_dims)}: "
                         "use one encoder for the cohort", field="hist")
    return (expr_dims.pop() if expr_dims else 0), (hist_dims.pop() if hist_dims else 0)


def build_model(config: SencaConfig, batches: Sequence[SlideBatch]) -> SencaModel:
    """The network for these slides' input widths (an ensemble when ``config.n_models`` > 1)."""
    n_expr, n_hist = input_dims(batches)
    if config.use_hist and not config.use_expr and n_hist == 0:
        raise SlideError("image-only model but no slide has histology features", field="hist")
    return network(config, n_expr=n_expr, n_hist=n_hist)


def make_optimizer(model: torch.nn.Module, config: SencaConfig) -> AdamW:
    """AdamW over every parameter, updated all at once (torch's ``foreach`` arithmetic: on CPU the per-tensor loop
    was 15 % of a HER2ST step), without ``torch.optim``'s import of torch's compiler (1.1-1.4 s in every training
    process): ``_adamw.AdamW``, the same numbers to the last bit."""
    return AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def prototype_warmup(config: SencaConfig) -> int:
    """Epochs before the region-scale (prototype) loss starts: embeddings first learn to reconstruct."""
    return config.epochs // 3


def train_step(model: torch.nn.Module, batch: SlideBatch, optimizer: AdamW, *,
               generator: torch.Generator | None = None, use_prototypes: bool = True) -> dict[str, float]:
    """One optimisation step on one slide. ``model`` may be wrapped in DistributedDataParallel."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    core = getattr(model, "module", model)
    with torch.enable_grad(), training_autocast(core.config.precision, batch.neighbors.device):
        loss, parts = model(batch, objective=True, generator=generator, use_prototypes=use_prototypes)
    if not torch.isfinite(loss):
        raise SlideError(f"training diverged (loss {float(loss)})", slide=batch.slide_id, field="loss")
    with torch.enable_grad():
        loss.backward()
    clip_members(model, 5.0)  # one network: its whole gradient; an ensemble: each member's
    optimizer.step()
    return parts


@torch.no_grad()
def init_prototypes(model: SencaModel, batches: Sequence[SlideBatch], generator: torch.Generator) -> None:
    """Place the region prototypes on randomly drawn spot embeddings (no dead prototypes); each member of an
    ensemble on its own embeddings."""
    model.eval()
    for member in members(model):
        z = torch.cat([member(b) for b in batches])
        idx = torch.randperm(z.shape[0], generator=generator)[: member.prototypes.shape[0]]
        member.prototypes.data[: len(idx)] = z[idx.to(z.device)]


def run_epoch(model, batches, optimizer, epoch: int, config: SencaConfig, generator: torch.Generator,
              order_rng: random.Random) -> dict[str, float]:
    """One pass over the given slides (shuffled), averaging the loss parts."""
    core = getattr(model, "module", model)
    if config.hierarchical and config.w_proto > 0 and epoch == prototype_warmup(config):
        init_prototypes(core, batches, generator)
    order = list(range(len(batches)))
    order_rng.shuffle(order)
    sums: dict[str, float] = {}
    for i in order:
        parts = train_step(model, batches[i], optimizer, generator=generator,
                           use_prototypes=epoch >= prototype_warmup(config))
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: value / len(batches) for key, value in sums.items()}


def fit(adatas: AnnData | Sequence[AnnData], config: SencaConfig | None = None, *,
        callback: EpochCallback | None = None) -> tuple[SencaModel, list[dict[str, float]]]:
    """Train SENCA-st on one or more preprocessed slides in this process. Returns ``(model, history)``; with
    ``config.snapshots`` > 1 the model is the snapshot ensemble (``_ensemble.with_snapshots``)."""
    config = (config or SencaConfig()).validate()
    adatas = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    if not adatas:
        raise ConfigError("slides", "no slides to train on")
    with deterministic(), retained_heap():  # bit-identical reruns with one seed; no page faults per epoch
        return _fit(adatas, config, callback)


def _fit(adatas, config, callback):
    generator = seed_everything(config.seed)
    device = resolve_device(config)
    batches = [make_batch(a, config).to(device) for a in adatas]
    model = build_model(config, batches).to(device)
    optimizer = make_optimizer(model, config)
    order_rng = random.Random(config.seed)
    history = []
    keep, snapshots = snapshot_epochs(config), []
    for epoch in range(config.epochs):
        parts = run_epoch(model, batches, optimizer, epoch, config, generator, order_rng)
        parts["epoch"] = epoch
        history.append(parts)
        if epoch in keep:
            snapshots.append(snapshot_of(model))
        if callback is not None:
            callback(epoch, parts)
    model = with_snapshots(model, snapshots)
    model.eval()
    return model, history


@torch.no_grad()
def embed(model: SencaModel, adata: AnnData) -> np.ndarray:
    """Deterministic embeddings (n_spots, embed_dim) of one slide (eval mode: no masking, no dropout)."""
    model = getattr(model, "module", model)
    model.eval()
    device = next(model.parameters()).device
    batch = make_batch(adata, model.config).to(device)
    return model(batch).cpu().numpy().astype(np.float32)
