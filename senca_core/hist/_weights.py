"""What the pretrained patch encoders (``CNNEncoder``, ``ViTEncoder``) share: the local weights file (never
downloaded), reading it as a state_dict, device and normalisation, and the batched encoding of patches."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError


def weights_file(weights: str | os.PathLike | None, who: str) -> Path:
    """The local weights file ``who`` needs, or a ``ConfigError(field="weights")`` (nothing is downloaded)."""
    if weights is None or str(weights) == "":
        raise ConfigError("weights", f"{who} needs weights=<path to a local state_dict .pt file>; "
                                     "nothing is downloaded")
    path = Path(weights)
    if not path.is_file():
        raise ConfigError("weights", f"weights file not found: {str(path)!r} (nothing is downloaded)")
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` (weights only) of a state_dict, unwrapped from ``{"state_dict"}`` / ``{"model"}`` and from
    DDP's ``module.`` prefix; a clear ``ConfigError`` for anything else."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        hint = " (.safetensors is not read: re-save it with torch.save(state_dict))" \
            if path.suffix == ".safetensors" else ""
        raise ConfigError("weights", f"cannot load {str(path)!r} as a torch state_dict{hint}: "
                                     f"{type(exc).__name__}: {exc}") from exc
    for wrap in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrap), dict):
            obj = obj[wrap]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError("weights", f"{str(path)!r} does not hold a state_dict (dict of tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


class PatchEncoder:
    """Base of the pretrained encoders: ``_setup`` once the network is loaded, ``_encode`` in ``__call__``."""

    weights: str
    device: torch.device
    batch_size: int
    net: torch.nn.Module

    def _setup(self, path: Path, net: torch.nn.Module, device: str | torch.device, mean: Sequence[float],
               std: Sequence[float], batch_size: int) -> None:
        self.weights = str(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.net = net.to(self.device).eval()
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @staticmethod
    def _check_patches(patches: np.ndarray) -> np.ndarray:
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
            raise ConfigError("patches", f"must be uint8 (n, h, w, 3), got {patches.dtype} {patches.shape}")
        return patches

    @torch.inference_mode()
    def _encode(self, patches: np.ndarray, width: int, forward: Callable[[torch.Tensor], torch.Tensor],
                resize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """``float32 (n, width)``: batches of [0, 1] RGB (resized, then normalised) through ``forward``."""
        out = np.empty((patches.shape[0], width), dtype=np.float32)
        for s in range(0, patches.shape[0], self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(patches[s:s + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if resize is not None:
                x = resize(x)
            out[s:s + x.shape[0]] = forward((x - self._mean) / self._std).float().cpu().numpy()
        return out
