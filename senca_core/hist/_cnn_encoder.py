"""``CNNEncoder``: a ResNet-18-shaped patch encoder in plain ``torch.nn`` that loads LOCAL weights.

Nothing is ever downloaded. The network is written here (no torchvision) with the *same module
names as torchvision's ``resnet18``*, so the expected weights file is:

* a ``torch.save``-d ``state_dict`` (``dict[str, Tensor]``), or a dict holding it under
  ``"state_dict"`` (Lightning-style checkpoints);
* keys ``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
  ``layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}.*`` and ``layer{2,3,4}.0.downsample.{0,1}.*``
  (exactly :meth:`CNNEncoder.network`'s ``state_dict()``); a ``"module."`` prefix (DataParallel)
  is stripped, and classifier keys ``fc.*`` are ignored, so a torchvision ``resnet18`` checkpoint
  (ImageNet or a pathology self-supervised one in that layout) loads as is;
* inputs are RGB patches scaled to [0, 1] and normalised with ``mean``/``std`` (ImageNet values by
  default, change them to match how the weights were trained).

The output is the 512-d global-average-pooled ``layer4`` activation, in eval mode (BatchNorm uses
its running statistics), so features are deterministic.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ._weights import PatchEncoder, load_state_dict, weights_file

__all__ = ["CNNEncoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier: (N, 3, H, W) -> (N, 512)."""

    out_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        chans = (64, 128, 256, 512)
        in_ch = 64
        for i, ch in enumerate(chans, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(_BasicBlock(in_ch, ch, stride), _BasicBlock(ch, ch, 1)))
            in_ch = ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class CNNEncoder(PatchEncoder):
    """ResNet-18 patch encoder with weights from a local ``state_dict`` file (see module docstring).

    Parameters
    ----------
    weights
        Path to the local ``.pt`` file. Required; never downloaded.
    device
        Torch device for inference (``"cpu"``, ``"cuda"``, …).
    mean, std
        Per-channel normalisation of the [0, 1] RGB input.
    batch_size
        Patches per forward pass.

    Raises
    ------
    ConfigError
        ``field="weights"``: no path, missing / unreadable file, not a state_dict, or keys/shapes
        that do not match the ResNet-18 layout (the message lists missing and unexpected keys).
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 256,
    ) -> None:
        path = weights_file(weights, "CNNEncoder")
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        obj = load_state_dict(path)
        state = {}
        for k, v in obj.items():
            if k.startswith("fc."):
                continue
            state[k] = v
        net = _ResNet18Trunk()
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ConfigError("weights", f"{str(path)!r} does not fit the ResNet-18 layout: {exc}") from exc
        if missing or unexpected:
            raise ConfigError(
                "weights", f"{str(path)!r} does not fit the ResNet-18 layout: missing keys {missing[:8]}"
                           f"{'…' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                           f"{'…' if len(unexpected) > 8 else ''}")
        self._setup(path, net, device, mean, std, batch_size)

    @staticmethod
    def network() -> nn.Module:
        """A fresh, randomly initialised network; its ``state_dict()`` is the expected weights format."""
        return _ResNet18Trunk()

    @property
    def names(self) -> list[str]:
        """Feature names ``cnn_0`` … ``cnn_511``."""
        return [f"cnn_{i}" for i in range(_ResNet18Trunk.out_dim)]

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Encode ``uint8`` RGB patches ``(n, h, w, 3)`` (h, w >= 32) -> ``float32 (n, 512)``."""
        patches = self._check_patches(patches)
        if min(patches.shape[1:3]) < 32:
            raise ConfigError("patches", f"CNN patches must be at least 32x32 px, got {patches.shape[1:3]}")
        return self._encode(patches, _ResNet18Trunk.out_dim, self.net)
