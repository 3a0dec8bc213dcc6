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


# ------------------------------------------------------------------------------------ parallel runs (pytest-xdist)
# scripts/test.sh runs the suite in 2 worker processes (``-n 2``; ``--dist loadscope`` comes from pyproject's
# addopts). A worker computes every module- and session-scoped fixture it uses itself, so a worker is handed whole
# work units (:func:`work_unit`): a test module (its module fixtures computed once), or all the modules that share
# an expensive session fixture (``SHARED_SESSION_FIXTURES``). The units are chosen by the scheduler below, not by
# ``xdist_group`` marks: with pytest 9.2, xdist 3.8's ``--dist loadgroup`` ignores them (pytest-xdist#1386).
# The longest units (``LONGEST_UNITS``) are handed out first, then those holding slow tests (``@pytest.mark.slow``:
# Ray / MLflow services), so the quick modules fill the gaps at the end instead of one worker finishing a long test
# alone.

#: session fixture -> the test modules that use it: they run in one worker, so the fixture is computed once
SHARED_SESSION_FIXTURES = {
    "clean_fault_run": ("test_faults_driver.py", "test_signals.py"),
    "demo_cli_run": ("test_console.py", "test_report.py", "test_restarts.py"),
}
_SHARED_UNIT = {module: fixture for fixture, modules in SHARED_SESSION_FIXTURES.items() for module in modules}
#: the work units that take longest (each 10-30 % of the suite's time, see --durations), handed out first
LONGEST_UNITS = ("clean_fault_run", "test_multinode.py")


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs as a whole: the test's module, or the name of the session fixture its module shares
    with others (``SHARED_SESSION_FIXTURES``)."""
    module = nodeid.split("::", 1)[0]
    return _SHARED_UNIT.get(module.rsplit("/", 1)[-1], module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadscope`` by :func:`work_unit` (loadscope's own unit is the module)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, modules in SHARED_SESSION_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and item.path.name not in modules:
                raise pytest.UsageError(f"{item.nodeid} uses the session fixture {fixture}: add {item.path.name} to "
                                        "SHARED_SESSION_FIXTURES in tests/conftest.py (one worker computes it)")
    if not hasattr(config, "workerinput"):  # not an xdist worker: the order stays as collected
        return
    # the order the scheduler hands the units out in (pyproject: --no-loadscope-reorder), the same in every worker
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(work_unit(item.nodeid), []).append(item)

    def rank(name: str) -> tuple[int, int]:
        short = name.rsplit("/", 1)[-1]  # a module's file name, or a shared fixture's name
        if short in LONGEST_UNITS:
            return 0, LONGEST_UNITS.index(short)
        return (1 if any(i.get_closest_marker("slow") for i in units[name]) else 2), 0

    order = sorted(units, key=rank)  # stable: collection order among equals, and within each unit
    items[:] = [item for name in order for item in units[name]]


#: the thread pools of numpy/scipy (BLAS), torch (OpenMP) and numba, sized per xdist worker in the controller
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def pytest_configure(config: pytest.Config) -> None:
    """In the xdist controller, before the workers start (they, and every process a test starts, inherit this):

    * each worker's thread pools get its share of the cores (``THREAD_ENV``, unless already set): an OpenMP pool
      of 2 threads in each of 2 workers on 2 cores waits a scheduler tick (~8 ms) at every parallel torch op for a
      thread that is not running (``test_model`` took 450 s instead of 25 s); numba's OpenMP layer, started by
      scanpy's HVG, would also reset torch's pool to every core;
    * Ray's default token file exists: every embedded ``ray.init`` enables token auth and writes
      ``~/.ray/auth_token`` when it is missing; two workers starting their first Ray at once on a fresh machine
      would each write a different token, and the processes of the first would then read the second's."""
    workers = config.getoption("numprocesses", None)
    if hasattr(config, "workerinput") or not workers:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for name in THREAD_ENV:
        os.environ.setdefault(name, str(max(1, cores // int(workers))))

    import secrets
    import tempfile

    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        return
    token.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=token.parent, prefix=".auth_token.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))  # what Ray's generate_and_save_token writes
        os.link(tmp, token)  # never replaces a token written meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (a fresh machine has no ../shared; set SENCA_SHARED)")
    return path


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    """The synthetic pyramidal TIFF with coloured markers of the hist tests (tests/_hist_helpers.py)."""
    from _hist_helpers import write_pyramid

    path = tmp_path_factory.mktemp("slide") / "pyramid.tif"
    write_pyramid(path)
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
