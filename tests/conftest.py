"""Shared fixtures: the real data under ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SENCA_SHARED", REPO.parent / "shared")).resolve()
HER2ST = SHARED / "data" / "her2st"
DLPFC = SHARED / "data" / "dlpfc" / "151673"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (a fresh machine has no ../shared; set SENCA_SHARED)")
    return path


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    return _need(HER2ST)


@pytest.fixture(scope="session")
def dlpfc_root() -> Path:
    return _need(DLPFC)
