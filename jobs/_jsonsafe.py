"""JSON-safe values: :func:`json_default` (numpy scalars and arrays, paths) for ``json.dumps``,
:func:`clean_float` (missing / NaN / inf -> None) and :func:`strip_none` (h5ad's ``uns`` cannot hold None)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars -> Python numbers, arrays -> lists, paths -> str."""
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def clean_float(value: Any) -> float | None:
    """A JSON-safe float: None for missing / NaN / inf."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def strip_none(d: dict) -> None:
    """h5ad cannot store None: drop such keys, nested dicts too (the contract: absent means unknown)."""
    for k in [k for k, v in d.items() if v is None]:
        del d[k]
    for v in d.values():
        if isinstance(v, dict):
            strip_none(v)
