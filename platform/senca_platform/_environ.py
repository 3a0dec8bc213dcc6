"""Environment variables set for the duration of a block, then restored (MLflow's HTTP settings, Ray's start)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def env_settings(values: dict[str, str], *, override: bool) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the duration (``override=False``: only those the user did not set);
    every one of them is restored afterwards (removed again where it was unset)."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if override or saved[k] is None:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
