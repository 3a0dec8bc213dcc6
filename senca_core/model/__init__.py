"""The SENCA-st model (see ``_network`` for the documented interpretation of the paper).

The names below load on first use, like ``senca_core``'s namespaces: ``SencaConfig`` (a dataclass) without torch,
so that checking a spec's model settings does not pay torch's import (2.3 s, on the CLI's path before Ray starts).
"""

import importlib

_EXPORTS = {
    "SlideBatch": "_batch", "make_batch": "_batch",
    "ABLATIONS": "_config", "SencaConfig": "_config",
    "SencaEnsemble": "_ensemble", "members": "_ensemble", "network": "_ensemble", "snapshot_epochs": "_ensemble",
    "snapshot_of": "_ensemble", "split_snapshots": "_ensemble", "with_snapshots": "_ensemble",
    "heldout_r2": "_heldout",
    "load_model": "_io", "save_model": "_io",
    "NeighbourhoodCrossAttention": "_network", "SencaModel": "_network",
    "cpu_bfloat16": "_precision", "precision_name": "_precision", "training_autocast": "_precision",
    "readout": "_readout", "readout_blocks": "_readout",
    "build_model": "_train", "deterministic": "_train", "embed": "_train", "fit": "_train",
    "init_prototypes": "_train", "make_optimizer": "_train", "prototype_warmup": "_train", "retained_heap": "_train",
    "run_epoch": "_train",
    "seed_everything": "_train", "train_step": "_train",
}

__all__ = list(_EXPORTS)  # one list of names: a name exported is a name loaded


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
