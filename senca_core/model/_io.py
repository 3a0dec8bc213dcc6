"""Save and load a trained model as one torch file (config, input widths, weights)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import torch

from ..errors import ConfigError
from ._config import SencaConfig
from ._ensemble import members, network
from ._network import SencaModel

FORMAT = "senca-st/1"
_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def save_model(model: SencaModel, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a reader never sees a half-written model."""
    model = getattr(model, "module", model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": model.config.to_dict(), "n_expr": model.n_expr,
               "n_hist": model.n_hist, "members": len(members(model)),  # a snapshot ensemble: more than n_models
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _new_temp(path: Path) -> tuple[int, str]:
    """A new temp file next to ``path``, named as every atomic write of a run names its temp
    (``.<stem>.senca-tmp-XXXXXXXX<suffix>``, which a run's clean-up recognises) and created with mode 0666 less
    the umask, like any result file (``tempfile.mkstemp`` would make it 0600)."""
    for _ in range(100):
        tag = "".join(secrets.choice(_TEMP_CHARS) for _ in range(8))
        tmp = str(path.parent / f".{path.stem}.senca-tmp-{tag}{path.suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name next to {path}")


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
    # settings a file written before they existed was trained and read out with (one hop; the full readout)
    config = SencaConfig.from_dict({"attention_hops": 1, "readout_expr_weight": 1.0, "n_models": 1,
                                    **payload["config"]})
    if device is not None:
        config = config.replace(device=device)
    model = network(config, n_expr=payload["n_expr"], n_hist=payload["n_hist"], n_members=payload.get("members"))
    model.load_state_dict(payload["state_dict"])
    model.to(config.device)
    model.eval()
    return model
