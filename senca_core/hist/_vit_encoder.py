"""``ViTEncoder``: a Vision Transformer patch encoder in plain ``torch.nn`` that loads LOCAL weights.

For pathology foundation encoders of the ViT family (UNI ViT-L/16, Phikon ViT-B/16, …). Nothing is ever
downloaded; the network is written here (no timm, no transformers) with *timm's* ``VisionTransformer``
module names, so the expected weights file is:

* a ``torch.save``-d ``state_dict`` (or a dict holding it under ``"state_dict"`` / ``"model"``); a
  ``"module."`` prefix is stripped and classifier / pooler keys (``head.*``, ``pooler.*``,
  ``classifier.*``, ``mask_token``) are ignored;
* timm layout: ``cls_token`` (1, 1, D), ``pos_embed`` (1, T, D), ``patch_embed.proj.{weight,bias}``
  (D, 3, p, p), per block ``blocks.{i}.norm1.*``, ``attn.qkv.*`` (3D, D), ``attn.proj.*``, ``norm2.*``,
  ``mlp.fc1.*``, ``mlp.fc2.*``, optional LayerScale ``ls1.gamma`` / ``ls2.gamma``; ``norm.*`` (or
  ``fc_norm.*`` for timm's average-pool models); optional ``reg_token`` (1, R, D) register tokens;
* Hugging Face layouts are renamed to that: ``ViTModel`` (Phikon: ``embeddings.*``,
  ``encoder.layer.{i}.attention.attention.{query,key,value}`` → ``qkv``, ``layernorm_before/after``,
  ``intermediate.dense`` / ``output.dense``, ``layernorm``; an optional ``vit.`` prefix) and
  ``Dinov2Model`` (``norm1/2``, ``mlp.fc1/2``, ``layer_scale{1,2}.lambda1``, ``register_tokens``); the
  DINOv2 hub layout is timm's but for ``register_tokens``. SwiGLU MLPs (UNI2-h, Virchow, ViT-g) and
  qk-norm are not supported: such files are refused, naming the first unexpected key.

The architecture is read from the shapes: embed dim D and patch size p from ``patch_embed``, depth from
the block indices, MLP width from ``fc1``, registers / LayerScale / qkv bias from the keys present, the
native patch grid from ``pos_embed`` (T = grid² plus the prefix tokens it covers: cls + registers as in
timm, none as in timm's ``no_embed_class``, or cls only as in DINOv2). The number of heads is not in
the shapes: ``num_heads`` (default ``D // 64``, right for ViT-S/B/L/H). LayerNorm eps: 1e-6 (timm,
DINOv2) or 1e-12 (HF ``ViTModel``) unless ``layer_norm_eps`` is given. A patch grid other than the
native one interpolates ``pos_embed`` bicubically (as timm's ``resample_abs_pos_embed``).

Output: the class token after the final norm (``pool="cls"``) or the mean of the patch tokens
(``pool="mean"``), float32 (n, D), in eval mode under ``torch.inference_mode`` — deterministic.
"""

from __future__ import annotations

import math
import os
import re
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._cnn_encoder import IMAGENET_MEAN, IMAGENET_STD
from ._weights import PatchEncoder, load_state_dict, weights_file

__all__ = ["ViTEncoder"]

_IGNORED = re.compile(r"^(head\.|head_drop|pooler\.|classifier\.|mask_token$)")
_HF_LAYER = [  # (HF name inside encoder.layer.{i}., timm name inside blocks.{i}.)
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ("attention.output.dense.", "attn.proj."), ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."), ("norm1.", "norm1."), ("norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
]
_HF_TOP = [("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed"),
           ("embeddings.register_tokens", "reg_token"), ("embeddings.mask_token", "mask_token"),
           ("embeddings.patch_embeddings.projection.", "patch_embed.proj."), ("layernorm.", "norm.")]


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, qkv_bias: bool, layerscale: bool, eps: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn, self.mlp = _Attention(dim, heads, qkv_bias), _Mlp(dim, hidden)
        self.ls1 = _LayerScale(dim) if layerscale else nn.Identity()
        self.ls2 = _LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)


class _ViT(nn.Module):
    """(N, 3, H, W) -> (N, D). ``arch``: the dict :func:`_arch_from_state` returns."""

    def __init__(self, arch: dict) -> None:
        super().__init__()
        d, self.arch = arch["embed_dim"], dict(arch)
        self.patch_embed = _PatchEmbed(d, arch["patch_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if arch["reg_tokens"]:
            self.reg_token = nn.Parameter(torch.zeros(1, arch["reg_tokens"], d))
        self.pos_embed = nn.Parameter(torch.zeros(1, arch["pos_prefix"] + arch["grid"] ** 2, d))
        self.blocks = nn.ModuleList(
            _Block(d, arch["num_heads"], arch["mlp_hidden"], arch["qkv_bias"], arch["layerscale"], arch["eps"])
            for _ in range(arch["depth"]))
        norm = nn.LayerNorm(d, eps=arch["eps"])
        if arch["fc_norm"]:
            self.fc_norm = norm
        else:
            self.norm = norm
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if arch["reg_tokens"]:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def _pos(self, gh: int, gw: int) -> torch.Tensor:
        """``pos_embed`` for a gh x gw patch grid: bicubic resampling of the patch part (timm's rule)."""
        g, pp = self.arch["grid"], self.arch["pos_prefix"]
        if (gh, gw) == (g, g):
            return self.pos_embed
        if (gh, gw) not in self._pos_cache:
            prefix, grid = self.pos_embed[:, :pp], self.pos_embed[:, pp:].float()
            grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
            self._pos_cache[(gh, gw)] = torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)
        return self._pos_cache[(gh, gw)]

    def forward(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        x = self.patch_embed.proj(x)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        pos, pp = self._pos(gh, gw), self.arch["pos_prefix"]
        prefix = [self.cls_token] + ([self.reg_token] if self.arch["reg_tokens"] else [])
        prefix = torch.cat(prefix, 1)
        prefix = torch.cat([prefix[:, :pp] + pos[:, :pp], prefix[:, pp:]], 1).expand(x.shape[0], -1, -1)
        n_prefix = prefix.shape[1]
        x = torch.cat([prefix, x + pos[:, pp:]], 1)
        for blk in self.blocks:
            x = blk(x)
        if self.arch["fc_norm"]:  # timm avg-pool models: pool, then norm
            return self.fc_norm(x[:, 0] if pool == "cls" else x[:, n_prefix:].mean(1))
        x = self.norm(x)
        return x[:, 0] if pool == "cls" else x[:, n_prefix:].mean(1)


def _to_timm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
    """Rename HF ``ViTModel`` / ``Dinov2Model`` keys to timm's; returns (state, timm->file name, is_hf_vit)."""
    if not any(k.startswith(("embeddings.", "vit.embeddings.", "encoder.layer.")) for k in state):
        out = {("reg_token" if k == "register_tokens" else k): v for k, v in state.items()}  # DINOv2 hub
        return out, {("reg_token" if k == "register_tokens" else k): k for k in state}, False
    out, origin, qkv = {}, {}, {}
    hf_vit = any("layernorm_before" in k for k in state)
    for key, v in state.items():
        k = key[len("vit."):] if key.startswith("vit.") else key
        new = None
        m = re.match(r"^encoder\.layer\.(\d+)\.(.*)$", k)
        if m:
            i, rest = m.groups()
            a = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if a:
                qkv.setdefault((i, a.group(2)), {})[a.group(1)] = (key, v)
                continue
            for hf, timm in _HF_LAYER:
                if rest.startswith(hf):
                    new = f"blocks.{i}.{timm}{rest[len(hf):]}"
                    break
        else:
            for hf, timm in _HF_TOP:
                if k.startswith(hf):
                    new = timm + k[len(hf):]
                    break
        new = new or k
        out[new], origin[new] = v, key
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            new = f"blocks.{i}.attn.qkv.{kind}"
            out[new] = torch.cat([parts[p][1] for p in ("query", "key", "value")], 0)
            origin[new] = parts["query"][0].replace("query", "{query,key,value}")
        else:  # incomplete: left under the file's names (reported as unexpected)
            for key, v in parts.values():
                out[key], origin[key] = v, key
    return out, origin, hf_vit


def _arch_from_state(sd: dict[str, torch.Tensor], where: str, num_heads: int | None,
                     eps: float) -> dict:
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed"):
        if key not in sd:
            raise ConfigError("weights", f"{where} does not fit the ViT layout: missing key {key!r}")
    w, pos = sd["patch_embed.proj.weight"], sd["pos_embed"]
    if w.ndim != 4 or w.shape[1] != 3 or w.shape[2] != w.shape[3]:
        raise ConfigError("weights", f"{where}: 'patch_embed.proj.weight' must be (D, 3, p, p), got {tuple(w.shape)}")
    d, patch = int(w.shape[0]), int(w.shape[2])
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if not blocks:
        raise ConfigError("weights", f"{where} does not fit the ViT layout: missing key 'blocks.0.norm1.weight'")
    reg = int(sd["reg_token"].shape[1]) if "reg_token" in sd and sd["reg_token"].ndim == 3 else 0
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d:
        raise ConfigError("weights", f"{where}: 'pos_embed' must be (1, T, {d}), got {tuple(pos.shape)}")
    n_pos, pos_prefix, grid = int(pos.shape[1]), None, 0
    for pp in dict.fromkeys((1 + reg, 0, 1)):  # timm default, timm no_embed_class, DINOv2 with registers
        g = math.isqrt(max(n_pos - pp, 0))
        if g > 0 and g * g == n_pos - pp:
            pos_prefix, grid = pp, g
            break
    if pos_prefix is None:
        raise ConfigError("weights", f"{where}: 'pos_embed' has {n_pos} tokens, not a square patch grid "
                                     f"plus 0, 1 or {1 + reg} prefix tokens")
    heads = int(num_heads) if num_heads else d // 64
    if heads < 1 or d % heads:
        raise ConfigError("num_heads", f"embed dim {d} of {where} is not divisible into {heads} heads; "
                                       "pass num_heads=")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    return {"embed_dim": d, "depth": max(blocks) + 1, "num_heads": heads, "patch_size": patch, "grid": grid,
            "img_size": grid * patch, "reg_tokens": reg, "pos_prefix": pos_prefix,
            "mlp_hidden": int(fc1.shape[0]) if fc1 is not None and fc1.ndim == 2 else 4 * d,
            "qkv_bias": "blocks.0.attn.qkv.bias" in sd, "layerscale": "blocks.0.ls1.gamma" in sd,
            "fc_norm": "fc_norm.weight" in sd and "norm.weight" not in sd, "eps": float(eps)}


class ViTEncoder(PatchEncoder):
    """Vision Transformer patch encoder with weights from a local ``state_dict`` file (module docstring).

    Parameters
    ----------
    weights
        Path to the local ``.pt`` / ``.bin`` file (timm or HF layout). Required; never downloaded.
    device
        Torch device for inference (``"cpu"``, ``"cuda"``, …).
    mean, std
        Per-channel normalisation of the [0, 1] RGB input (ImageNet by default, as UNI and Phikon use).
    batch_size
        Patches per forward pass.
    num_heads
        Attention heads (not recoverable from the shapes); default ``embed_dim // 64``.
    img_size
        ``"native"``: patches are resized (bilinear, antialiased) to the size the weights were trained
        at (``pos_embed`` grid × patch size, 224 for UNI / Phikon); an int: resized to that side;
        ``"input"``: used as they come. ``pos_embed`` is interpolated whenever the grid differs.
    pool
        ``"cls"``: the class token after the final norm; ``"mean"``: the mean of the patch tokens.
    layer_norm_eps
        Default 1e-12 for HF ``ViTModel`` files, else 1e-6.

    Raises
    ------
    ConfigError
        ``field="weights"``: no path, missing / unreadable file, not a state_dict, or keys / shapes that
        do not fit the layout (naming the file and the first missing / unexpected / mis-shaped key).
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 64,
        num_heads: int | None = None,
        img_size: int | Literal["native", "input"] = "native",
        pool: Literal["cls", "mean"] = "cls",
        layer_norm_eps: float | None = None,
    ) -> None:
        path = weights_file(weights, "ViTEncoder")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError("batch_size", f"must be a positive integer, got {batch_size!r}")
        if pool not in ("cls", "mean"):
            raise ConfigError("pool", f"must be 'cls' or 'mean', got {pool!r}")
        if not (img_size in ("native", "input") or (isinstance(img_size, (int, np.integer))
                                                    and not isinstance(img_size, bool) and img_size >= 1)):
            raise ConfigError("img_size", f"must be 'native', 'input' or a positive int, got {img_size!r}")
        where = repr(str(path))
        state, origin, hf_vit = _to_timm(load_state_dict(path))
        state = {k: v for k, v in state.items() if not _IGNORED.match(k)}
        eps = layer_norm_eps if layer_norm_eps is not None else (1e-12 if hf_vit else 1e-6)
        arch = _arch_from_state(state, where, num_heads, eps)
        net = _ViT(arch)
        expected = net.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [origin.get(k, k) for k in state if k not in expected]
        if missing or unexpected:
            what = [f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                    ] if missing else []
            what += [f"unexpected key {unexpected[0]!r}" + (f" (+{len(unexpected) - 1} more)"
                                                            if len(unexpected) > 1 else "")] if unexpected else []
            raise ConfigError("weights", f"{where} does not fit the ViT layout "
                                         f"(D={arch['embed_dim']}, depth={arch['depth']}): {', '.join(what)}")
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ConfigError("weights", f"{where} does not fit the ViT layout: key {origin.get(k, k)!r} has "
                                             f"shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        net.load_state_dict({k: v.float() for k, v in state.items()})
        self.arch, self.pool = arch, pool
        self.img_size = arch["img_size"] if img_size == "native" else img_size
        self._setup(path, net, device, mean, std, batch_size)

    @staticmethod
    def network(embed_dim: int = 768, depth: int = 12, num_heads: int | None = None, patch_size: int = 16,
                img_size: int = 224, reg_tokens: int = 0, layerscale: bool = False,
                mlp_ratio: float = 4.0) -> nn.Module:
        """A fresh, randomly initialised ViT (timm init); its ``state_dict()`` is the expected format."""
        return _ViT({"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads or embed_dim // 64,
                     "patch_size": patch_size, "grid": img_size // patch_size, "img_size": img_size,
                     "reg_tokens": reg_tokens, "pos_prefix": 1 + reg_tokens,
                     "mlp_hidden": int(embed_dim * mlp_ratio), "qkv_bias": True, "layerscale": layerscale,
                     "fc_norm": False, "eps": 1e-6})

    @property
    def names(self) -> list[str]:
        """Feature names ``vit_0`` … ``vit_{D-1}``."""
        return [f"vit_{i}" for i in range(self.arch["embed_dim"])]

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Encode ``uint8`` RGB patches ``(n, h, w, 3)`` -> ``float32 (n, embed_dim)``."""
        patches = self._check_patches(patches)
        side = self.img_size if self.img_size != "input" else min(patches.shape[1:3])
        if side < self.arch["patch_size"]:
            raise ConfigError("patches", f"ViT input {patches.shape[1:3]} px (img_size={self.img_size!r}) is "
                                         f"smaller than its patch size {self.arch['patch_size']}")

        def resize(x: torch.Tensor) -> torch.Tensor:
            if self.img_size == "input" or tuple(x.shape[-2:]) == (self.img_size, self.img_size):
                return x
            return F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                                 align_corners=False)

        return self._encode(patches, self.arch["embed_dim"], lambda x: self.net(x, self.pool), resize)
