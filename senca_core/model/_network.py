"""The SENCA-st network: two branches, a shared encoder, neighbourhood cross-attention, hierarchical losses.

Our documented interpretation of SENCA-st (arXiv 2511.08573; the paper's body was not available):

* **Inputs per spot.** Expression features ``x_e`` (log-normalised HVGs -> PCA, scaled) and histology features
  ``x_h`` (patch morphology descriptors or CNN features, z-scored per slide). Each spot ``i`` has a spatial
  neighbourhood ``N(i)``: its k nearest spots (6 on a Visium hex grid, 8 on a legacy ST square grid) plus itself.
* **Two branches.** Modality-specific input projections ``P_e``, ``P_h`` map both inputs to a common width H.
* **Shared encoder.** One residual MLP ``E`` (the same weights) encodes both modalities' tokens, so expression and
  histology tokens live in one space: ``t_e = E(P_e x_e)``, ``t_h = E(P_h x_h)``. (Ablation: separate encoders.)
* **Neighbourhood cross-attention, both directions, restricted to N(i)** (gathered ``(n, k+1)`` index, memory linear
  in spots, never an n x n matrix):

  - expression side: ``f_e(i) = LN(t_e(i) + sum_{j in N(i)} softmax_j(<Q t_h(i), K t_h(j)>) V t_e(j))`` - the
    attention weights come from *histology* similarity, the values are *expression*: neighbours that look alike
    are pooled, a neighbour that looks different is not averaged in, so a boundary between two regions that look
    alike but differ in function is kept by the expression values themselves (the attention never mixes in the
    histology, it only chooses whose expression to pool);
  - histology side (mirror): ``f_h(i) = LN(t_h(i) + sum_j softmax_j(<Q' t_e(i), K' t_e(j)>) V' t_h(j))``.

  A slide without an image (or the expression-only ablation) uses expression tokens as queries and keys; thanks to
  the shared encoder the same attention weights apply. The image-only ablation mirrors this.
  Measured (docs/BENCHMARKS.md, "What the model adds to its own clustering"): trained on the real sections the
  weights stay close to uniform (entropy 0.91-0.98 of log K), so in practice the attention pools neighbours nearly
  evenly; a sharper, cosine-scored attention (entropy 0.61-0.70) found worse regions on every section.
* **A second, gated hop** (``attention_hops=2``, the default; ablation ``one_hop``): the same cross-attention again,
  own weights, on the first hop's outputs (guided by the other modality's first-hop output), so a spot sees its
  neighbours' neighbourhoods; blended in through one learned scalar gate that starts small (sigmoid(-2) = 0.12):
  ``f <- f + g (hop2(f) - f)``. Measured (docs/BENCHMARKS.md, "A second, gated hop"): HER2ST A1 0.429 +- 0.022
  over 10 seeds against one hop's 0.387 +- 0.058; B1, C1 and DLPFC 151673 level; chosen by leave-one-section-out;
  1.4-1.7x the training time. Trained, the gate ends at 0.15-0.16 on every HER2ST section (docs/BENCHMARKS.md,
  "Tried on 2026-12-05"): the objective opens it alike everywhere, so in practice it is a fixed blend.
* **Fusion.** ``z(i) = W [f_e(i) + f_h(i)]`` (a slide without image: ``W f_e(i)``): one embedding per spot. The
  "concat" ablation drops the attention and uses ``W' [t_e ; t_h]``.
* **Decoders** reconstruct both modalities from ``z``; inputs of a random fraction of spots are masked per
  modality during training (masked autoencoding), so a masked spot's expression must be predicted from its own
  histology and its neighbours - the cross-modal signal. Reconstruction is never the only objective, and neither is
  the cross-modal alignment (an InfoNCE between ``f_e`` and ``f_h`` with sampled negatives, weighted ``w_align``).
* **An ensemble** (``n_models``, ``_ensemble.py``): that many networks trained side by side on the same slides,
  their readouts side by side, regions the consensus of each network's own consensus (``tl.cluster``). Not part of
  the paper; at ``n_models`` times the training, it bought steadier regions over seeds with the six-cut consensus
  and steadies HER2ST A1 only with the two-cut one, the default since 2026-12-06 (docs/BENCHMARKS.md).
* **Hierarchical learning** (switchable): losses at three spatial scales - spot (reconstruct ``x(i)``),
  neighbourhood (the mean embedding over ``N(i)`` decodes the mean input over ``N(i)``) and region (soft
  assignment of ``z`` to learnable prototypes sharpened towards a confident, balanced target, DEC-style).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._batch import SlideBatch
from ._config import SencaConfig
from ._neighbour_attention import neighbour_attention

#: the second hop's gate starts at sigmoid(-2) = 0.12: the model begins near one hop and learns how much to add
HOP_GATE_INIT = -2.0


#: a mask's 16-bit lanes: 65,536 values from -32,768
_LANES, _LANE_MIN = 1 << 16, -(1 << 15)


def draw_keep_mask(shape, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dropout keep mask of ``shape`` (0 or 1 / (1 - p)) from the global generator, each element kept with
    probability 1 - p (p rounded to a multiple of 2^-16: 0.1 drops 6,554 of every 65,536, 0.100006).

    Each 64-bit draw of the generator makes four elements: its 16-bit lanes are uniform and independent, and an
    element is dropped when its lane falls below p's share of the 65,536 values. A quarter of the generator's calls
    of one uniform float per element (``torch.rand(shape) >= p``, the masks before): the DLPFC masks in 0.36-0.50x
    the time on CPU, a DLPFC epoch 6 % shorter at one torch thread and 15 % at two (``bench/bench_dropout.py``)."""
    dropped = round(p * _LANES)  # lanes below _LANE_MIN + dropped are dropped
    if dropped >= _LANES:  # p within 2^-17 of 1: every element dropped
        return torch.zeros(shape, dtype=dtype, device=device)
    n = math.prod(shape)
    words = torch.empty(((n + 3) // 4,), dtype=torch.int64, device=device).random_(-(2 ** 63), None)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over -32,768 .. 32,767
    return (lanes >= _LANE_MIN + dropped).to(dtype) / (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with its mask cut from 64-bit draws (:func:`draw_keep_mask`): the same distribution (p to within
    2^-16), the same generator, a quarter of its calls. Kept elements scaled by 1 / (1 - p), as ``nn.Dropout``
    does."""

    def keep_mask(self, shape, like: torch.Tensor) -> torch.Tensor | None:
        """The scaled keep mask (0 or 1 / (1 - p)) of that shape, in ``like``'s dtype and device; None when off
        (evaluation, or p = 0)."""
        if not self.training or self.p == 0:
            return None
        return draw_keep_mask(tuple(shape), self.p, like.dtype, like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.keep_mask(x.shape, x)
        return x if keep is None else x * keep


class Branch(nn.Module):
    """Modality-specific input projection to the common width."""

    def __init__(self, n_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.GELU(), Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Residual MLP block; one instance is shared by both modalities unless ``shared_encoder`` is off."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), Dropout(dropout),
                                nn.Linear(2 * hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.ff(x))


class NeighbourhoodCrossAttention(nn.Module):
    """Multi-head attention of each spot over its own neighbourhood only.

    ``query`` (n, H) is the spot's token of one modality; ``key`` and ``value`` (n, H) are gathered at the
    neighbour indices (n, K), so cost and memory are O(n K H).
    """

    def __init__(self, hidden: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = hidden // n_heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, residual: torch.Tensor,
                neighbors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = neighbors.shape
        h, d = self.n_heads, self.head_dim
        q = self.q(query).view(n, h, d) / math.sqrt(d)
        keys = self.k(key).view(-1, h, d)
        values = self.v(value).view(-1, h, d)
        keep = self.drop.keep_mask((n, h, k), q)  # the attention dropout's mask on the (n, h, K) weights
        pooled, weights = neighbour_attention(q, keys, values, neighbors, keep)  # forward and backward written out
        return self.norm(residual + self.drop(self.out(pooled.reshape(n, h * d)))), weights


def _decoder(embed_dim: int, hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, n_negatives: int,
             generator: torch.Generator | None) -> torch.Tensor:
    """InfoNCE of a[i] against b[i], with one shared draw of ``n_negatives`` spots as negatives for every spot.

    Memory and time O(n M) through one (n, M) matrix product (never n x n, never an (n, M, H) gather).
    """
    n = a.shape[0]
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    m = min(n_negatives, max(n - 1, 1))
    neg_idx = torch.randperm(n, generator=generator)[:m].to(a.device)
    pos = (a * b).sum(-1, keepdim=True)
    neg = a @ b[neg_idx].T
    neg = neg.masked_fill(neg_idx[None, :] == torch.arange(n, device=a.device)[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=a.device))


class SencaModel(nn.Module):
    """SENCA-st. ``n_hist=0`` builds no image branch at all (an expression-only cohort)."""

    def __init__(self, config: SencaConfig, n_expr: int, n_hist: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.n_expr = int(n_expr) if config.use_expr else 0
        self.n_hist = int(n_hist) if config.use_hist else 0
        if self.n_expr == 0 and self.n_hist == 0:
            from ..errors import ConfigError
            raise ConfigError("use_hist", "no modality left: expression is off and there are no histology features")
        H, D, p = config.hidden, config.embed_dim, config.dropout
        self.branch_e = Branch(self.n_expr, H, p) if self.n_expr else None
        self.branch_h = Branch(self.n_hist, H, p) if self.n_hist else None
        self.encoder_e = Encoder(H, p)
        self.encoder_h = self.encoder_e if config.shared_encoder else Encoder(H, p)
        if config.cross_attention:
            self.attend_e = NeighbourhoodCrossAttention(H, config.n_heads, p)  # values: expression
            self.attend_h = NeighbourhoodCrossAttention(H, config.n_heads, p)  # values: histology
            self.fuse = nn.Sequential(nn.Linear(H, D))
        else:
            self.fuse = nn.Sequential(nn.Linear(2 * H, D))
        self.out_norm = nn.LayerNorm(D)
        self.decode_e = _decoder(D, H, self.n_expr) if self.n_expr else None
        self.decode_h = _decoder(D, H, self.n_hist) if self.n_hist else None
        self.prototypes = nn.Parameter(torch.randn(config.n_prototypes, D) * 0.1)
        self.mask_e = nn.Parameter(torch.zeros(max(self.n_expr, 1)))
        self.mask_h = nn.Parameter(torch.zeros(max(self.n_hist, 1)))
        if config.cross_attention and config.attention_hops == 2:  # created last: one-hop models draw as before
            self.attend_e2 = NeighbourhoodCrossAttention(H, config.n_heads, p)
            self.attend_h2 = NeighbourhoodCrossAttention(H, config.n_heads, p)
            self.hop_gate = nn.Parameter(torch.tensor(HOP_GATE_INIT))

    # -- forward ---------------------------------------------------------------------------------------------
    def _inputs(self, batch: SlideBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        expr = batch.expr if self.n_expr else None
        hist = batch.hist if self.n_hist else None
        if expr is None and hist is None:
            from ..errors import SlideError
            raise SlideError("no usable modality for this model (no expression branch and no image features)",
                             slide=batch.slide_id, field="hist")
        return expr, hist

    def forward(self, batch: SlideBatch, *, objective: bool = False, generator: torch.Generator | None = None,
                use_prototypes: bool = True):
        """``model(batch)`` is the embedding (n, D); ``model(batch, objective=True)`` is ``(loss, parts)``.

        Going through ``forward`` for the loss keeps DistributedDataParallel's gradient hooks in the loop.
        """
        if objective:
            return self.loss(batch, generator=generator, use_prototypes=use_prototypes)
        return self.encode(batch)

    def encode(self, batch: SlideBatch, *, masks: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
               return_parts: bool = False):
        """Embeddings ``z`` (n, D). ``masks`` are boolean (n,) per modality: masked inputs are replaced by a learned
        mask token. With ``return_parts`` also returns the per-modality fused tokens and attention weights."""
        expr, hist = self._inputs(batch)
        nb = batch.neighbors
        t_e = t_h = None
        if expr is not None:
            if masks[0] is not None:
                expr = torch.where(masks[0][:, None], self.mask_e.expand_as(expr), expr)
            t_e = self.encoder_e(self.branch_e(expr))
        if hist is not None:
            if masks[1] is not None:
                hist = torch.where(masks[1][:, None], self.mask_h.expand_as(hist), hist)
            t_h = self.encoder_h(self.branch_h(hist))

        attn = {}
        if self.config.cross_attention:
            f_e, f_h, attn = self._cross_attend(self.attend_e, self.attend_h, t_e, t_h, nb)
            if self.config.attention_hops == 2:  # the gated second hop over the first hop's outputs
                gate = torch.sigmoid(self.hop_gate)
                f_e, f_h, _ = self._cross_attend(self.attend_e2, self.attend_h2, f_e, f_h, nb,
                                                 blend=lambda new, old: old + gate * (new - old))
            fused = f_e if f_h is None else (f_h if f_e is None else f_e + f_h)
            z = self.out_norm(self.fuse(fused))
        else:
            f_e, f_h = t_e, t_h
            zeros = torch.zeros(batch.n_spots, self.config.hidden, device=nb.device)
            z = self.out_norm(self.fuse(torch.cat([t_e if t_e is not None else zeros,
                                                   t_h if t_h is not None else zeros], dim=1)))
        if return_parts:
            return z, {"f_e": f_e, "f_h": f_h, "attention": attn}
        return z

    @staticmethod
    def _cross_attend(attend_e, attend_h, t_e, t_h, nb, blend=None):
        """One hop, both directions: each modality's values pooled over N(i) with attention weights from the other
        modality (from itself where the other is absent); ``blend(new, old)`` (the second hop's gate) mixes each
        side's output with its input. Returns ``(f_e, f_h, attention weights)``; both sides are guided by the
        inputs, never by the other side's new output."""
        f_e = f_h = None
        attn = {}
        if t_e is not None:
            guide = t_h if t_h is not None else t_e  # attention from histology similarity when there is an image
            f_e, attn["expr"] = attend_e(guide, guide, t_e, t_e, nb)
            f_e = f_e if blend is None else blend(f_e, t_e)
        if t_h is not None:
            guide = t_e if t_e is not None else t_h
            f_h, attn["hist"] = attend_h(guide, guide, t_h, t_h, nb)
            f_h = f_h if blend is None else blend(f_h, t_h)
        return f_e, f_h, attn

    # -- objective -------------------------------------------------------------------------------------------
    def loss(self, batch: SlideBatch, *, generator: torch.Generator | None = None,
             use_prototypes: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Total self-supervised loss of one slide and its named parts (floats, for logging)."""
        cfg = self.config
        expr, hist = self._inputs(batch)
        n = batch.n_spots
        dev = batch.neighbors.device

        def draw_mask(present):
            if present is None or cfg.mask_rate <= 0:
                return None
            return (torch.rand(n, generator=generator) < cfg.mask_rate).to(dev)

        masks = (draw_mask(expr), draw_mask(hist))
        z, parts = self.encode(batch, masks=masks, return_parts=True)
        total = torch.zeros((), device=dev)
        logs: dict[str, float] = {}

        def recon(decoder, target, mask, weight, name, source=z):
            nonlocal total
            err = ((decoder(source) - target) ** 2).mean(dim=1)
            if mask is not None and mask.any():  # masked spots count double: they must be inferred
                value = 0.5 * err[~mask].mean() + err[mask].mean() if (~mask).any() else err.mean()
            else:
                value = err.mean()
            total = total + weight * value
            logs[name] = float(value.detach())

        if expr is not None:
            recon(self.decode_e, expr, masks[0], cfg.w_expr, "rec_expr")
        if hist is not None:
            recon(self.decode_h, hist, masks[1], cfg.w_hist, "rec_hist")

        if cfg.hierarchical:
            nb = batch.neighbors
            z_nb = z[nb].mean(dim=1)  # neighbourhood scale
            if expr is not None:
                recon(self.decode_e, batch.neighbourhood_mean("expr"), None, cfg.w_neigh, "rec_expr_neigh", z_nb)
            if hist is not None:
                recon(self.decode_h, batch.neighbourhood_mean("hist"), None,
                      cfg.w_neigh * cfg.w_hist / max(cfg.w_expr, 1e-8), "rec_hist_neigh", z_nb)
            if use_prototypes and cfg.w_proto > 0:  # region scale
                q = torch.softmax(F.normalize(z, dim=1) @ F.normalize(self.prototypes, dim=1).T / 0.1, dim=1)
                with torch.no_grad():
                    p = q ** 2 / q.sum(0, keepdim=True)
                    p = p / p.sum(1, keepdim=True)
                proto = (p * (torch.log(p + 1e-8) - torch.log(q + 1e-8))).sum(1).mean()
                total = total + cfg.w_proto * proto
                logs["proto"] = float(proto.detach())

        if cfg.w_align > 0 and parts["f_e"] is not None and parts["f_h"] is not None:
            align = 0.5 * (info_nce(parts["f_e"], parts["f_h"], cfg.temperature, cfg.n_negatives, generator)
                           + info_nce(parts["f_h"], parts["f_e"], cfg.temperature, cfg.n_negatives, generator))
            total = total + cfg.w_align * align
            logs["align"] = float(align.detach())
        logs["loss"] = float(total.detach())
        return total, logs
