"""SencaConfig: every hyperparameter and every ablation switch of SENCA-st, in one dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import ConfigError

#: ``SencaConfig.precision``'s values (``_precision`` says what each means; kept here so that checking a spec
#: does not import torch)
PRECISIONS = ("auto", "float32", "bfloat16")

#: Named ablations of the full model (the benchmark runs each).
ABLATIONS: dict[str, dict[str, Any]] = {
    "senca": {},
    "expr_only": {"use_hist": False},
    "image_only": {"use_expr": False},
    "concat": {"cross_attention": False},
    "one_hop": {"attention_hops": 1},
    "separate_encoders": {"shared_encoder": False},
    "no_hierarchy": {"hierarchical": False},
}


@dataclass(frozen=True)
class SencaConfig:
    """Hyperparameters of the SENCA-st model and its training loop.

    Defaults are chosen once for every section (no per-section tuning): they hold on legacy ST and Visium.
    """

    # inputs (AnnData keys)
    expr_key: str = "X_pca"
    hist_key: str = "X_hist"
    neighbors_key: str = "spatial_neighbors"
    # architecture
    hidden: int = 128
    embed_dim: int = 32
    n_heads: int = 4
    dropout: float = 0.1
    n_prototypes: int = 16
    attention_hops: int = 2
    #: networks trained side by side, regions from the consensus over all of them (``_ensemble``; 1 = one network)
    n_models: int = 1
    #: a snapshot ensemble (``_ensemble``): the network as it was at this many late epochs, ``snapshot_every``
    #: apart and the last included, read out side by side (1 = the last epoch's network only); no extra training.
    #: Snapshots that would fall before the first epoch (a short training: a tuning trial) are not taken.
    snapshots: int = 1
    snapshot_every: int = 25
    # switches (ablations)
    use_expr: bool = True
    use_hist: bool = True
    cross_attention: bool = True
    shared_encoder: bool = True
    hierarchical: bool = True
    # objective weights
    w_expr: float = 1.0
    w_hist: float = 0.5
    w_neigh: float = 0.5
    w_proto: float = 0.1
    w_align: float = 0.1
    temperature: float = 0.5
    mask_rate: float = 0.3
    n_negatives: int = 64
    readout_hist_weight: float = 0.25
    readout_expr_weight: float = 0.5
    # optimisation
    epochs: int = 200
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    #: the training forward's matrix products: auto (bfloat16 where the device runs it natively) | float32 |
    #: bfloat16 (``_precision``)
    precision: str = "auto"

    def validate(self) -> "SencaConfig":
        positive_ints = ("hidden", "embed_dim", "n_heads", "n_prototypes", "epochs", "n_negatives", "n_models",
                         "snapshots", "snapshot_every")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if self.attention_hops not in (1, 2) or isinstance(self.attention_hops, bool):
            raise ConfigError("attention_hops", f"must be 1 or 2, got {self.attention_hops!r}")
        if self.hidden % self.n_heads:
            raise ConfigError("n_heads", f"must divide hidden={self.hidden}, got {self.n_heads}")
        for name in ("dropout", "mask_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {value!r}")
        for name in ("w_expr", "w_hist", "w_neigh", "w_proto", "w_align", "weight_decay", "readout_hist_weight",
                     "readout_expr_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("lr" if self.lr <= 0 else "temperature", "must be > 0")
        if not (self.use_expr or self.use_hist):
            raise ConfigError("use_expr", "at least one modality (use_expr, use_hist) must be on")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ConfigError("device", f"must be 'cpu', 'cuda[:N]' or 'mps', got {self.device!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SencaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown model setting (known: {', '.join(sorted(known))})")
        return cls(**values).validate()

    def ablation(self, name: str) -> "SencaConfig":
        """The same configuration with one named ablation switched on (see ``ABLATIONS``)."""
        if name not in ABLATIONS:
            raise ConfigError("ablation", f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
        return replace(self, **ABLATIONS[name]).validate()

    def replace(self, **changes: Any) -> "SencaConfig":
        return replace(self, **changes).validate()
