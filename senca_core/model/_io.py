"""Save and load a trained model as one torch file (config, input widths, weights)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError
from ._config import SencaConfig
from ._network import SencaModel

FORMAT = "senca-st/1"


def save_model(model: SencaModel, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a reader never sees a half-written model."""
    model = getattr(model, "module", model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": model.config.to_dict(), "n_expr": model.n_expr,
               "n_hist": model.n_hist, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_model(path: str | Path, *, device: str | None = None) -> SencaModel:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("model", f"no model file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / foreign file
        raise ConfigError("model", f"{path} is not a readable SENCA-st model ({exc.__class__.__name__}: {exc})")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError("model", f"{path} is not a SENCA-st model file (format {FORMAT})")
    config = SencaConfig.from_dict(payload["config"])
    if device is not None:
        config = config.replace(device=device)
    model = SencaModel(config, n_expr=payload["n_expr"], n_hist=payload["n_hist"])
    model.load_state_dict(payload["state_dict"])
    model.to(config.device)
    model.eval()
    return model
