"""Mixed precision in training: the forward's matrix products in bfloat16 where the hardware runs them natively.

``SencaConfig.precision``:

- ``auto`` (default): bfloat16 autocast on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX), float32
  elsewhere: on CPUs without them (bfloat16 would be emulated there), and on GPUs for now (CUDA's autocast puts
  other operations in bfloat16 than the CPU's, and its regions have not been measured; ``bfloat16`` asks for it).
- ``float32``: every product in float32.
- ``bfloat16``: autocast wherever asked (a CUDA GPU that supports it, any CPU).

Only the training steps' forward runs under autocast (its backward follows the forward's types): parameters,
gradients and the optimizer's state stay float32, and embeddings and readouts are computed in float32 after
training. Measured (docs/BENCHMARKS.md, "Mixed precision in training"): a DLPFC 151673 epoch 20 % shorter on a
2-core AVX512-BF16 CPU, a HER2ST section's level (its products are too small to gain), and the regions level on the
four labelled sections over 10-12 networks each.
"""

from __future__ import annotations

import contextlib
import functools
from typing import ContextManager

import torch


@functools.lru_cache(maxsize=None)
def cpu_bfloat16() -> bool:
    """Whether this CPU multiplies in bfloat16 natively (AVX512-BF16 or AMX; torch.cpu's own feature probes), read
    once per process: every training step asks."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def training_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the training forward's matrix products for a ``SencaConfig.precision`` on ``device``."""
    if precision == "bfloat16" or (precision == "auto" and device.type == "cpu" and cpu_bfloat16()):
        return torch.bfloat16
    return torch.float32


def training_autocast(precision: str, device: torch.device) -> ContextManager:
    """The context a training step's forward runs in: torch's autocast to bfloat16, or nothing."""
    if training_dtype(precision, device) is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def precision_name(precision: str, device: torch.device) -> str:
    """``"bfloat16"`` or ``"float32"``: what a run with this setting on this device trains in (logs, summaries)."""
    return "bfloat16" if training_dtype(precision, device) is torch.bfloat16 else "float32"
