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


@pytest.fixture(scope="session")
def clean_fault_run(tmp_path_factory) -> Path:
    """The output folder of an uninterrupted ``senca-platform run`` of ``_services.fault_cohort``: what every
    driver fault test (kill + resume, SIGINT, SIGTERM) must end with."""
    from _services import cli, fault_cohort

    root = tmp_path_factory.mktemp("clean_fault_run")
    spec = fault_cohort(root, name="clean-reference")
    res = cli("run", str(spec), "--json", timeout=500, cwd=root)
    assert res.returncode == 0, res.stderr[-4000:]
    return root / "results"


@pytest.fixture(scope="session")
def demo_cli_run(tmp_path_factory):
    """One real ``senca-platform demo`` (2 patients × 200 spots, default verbosity, tuning on), run once for every
    test that reads what a finished CLI run printed or wrote (the console, the report): ``(results folder,
    CompletedProcess)``."""
    import shutil
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demo_cli")
    exe = shutil.which("senca-platform") or str(Path(sys.executable).parent / "senca-platform")
    res = subprocess.run([exe, "demo", "--out", str(root / "demo"), "--patients", "2", "--spots", "200"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return root / "demo" / "results", res
