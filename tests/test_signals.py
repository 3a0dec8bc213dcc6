"""SIGTERM (what `kill PID`, systemd and Kubernetes send) and SIGINT stop a run cleanly: one line, exit 130, no
traceback, the MLflow parent run KILLED, no process left behind, and `--resume` finishes it with the result of a
run that was never interrupted, also when the resumed run is itself interrupted."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from _procs import Cli, ray_tmpdir, wait_until
from _services import assert_same_result, cli, fault_cohort, service_env
from test_faults_driver import _checkpoint_history, _client

pytestmark = [pytest.mark.slow]


def _interrupt(spec, out, env, sig, args=()) -> None:
    """Start ``run spec *args`` with its workers slowed, send ``sig`` to the driver once training has written a
    checkpoint newer than those already there, and check the run stopped cleanly: exit 130, one line and no
    traceback, no process left, the MLflow parent run KILLED with a hint to resume."""
    before = len(_checkpoint_history(out) or [])
    slow = dict(env, SENCA_FAULT_PIDDIR=str(out.parent / "pids"), SENCA_FAULT_SLOW_S="1.0")
    (out.parent / "pids").mkdir(exist_ok=True)
    run = Cli("run", str(spec), *args, cwd=out.parent, env=slow, name=f"run-{sig.name}")
    try:
        def training():
            if not run.running():
                raise AssertionError(f"the run ended (rc {run.proc.returncode}) before the signal: "
                                     f"{run.stderr[-3000:]}")
            return len(_checkpoint_history(out) or []) > before

        wait_until(training, timeout=300, what="a new training checkpoint")
        run.proc.send_signal(sig)  # the driver only, as `kill PID` does
        rc = run.wait(timeout=120)
        leftovers = run.leftovers()
    finally:
        still = run.kill_all()
    err = run.stderr
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "stopped: interrupted by a signal" in err, err[-3000:]
    assert leftovers == [] and still == []
    mc = _client(f"sqlite:///{out / 'mlflow.db'}")
    runs = mc.search_runs([mc.get_experiment_by_name("signals").experiment_id], "tags.`senca.role` = 'parent'")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert "resume with --resume" in runs[0].data.tags["senca.error"]


@pytest.mark.timeout(900)
def test_sigterm_then_sigint_during_training_stop_cleanly_and_resume_finishes(tmp_path, clean_fault_run):
    """SIGTERM stops the first run, SIGINT the resumed one (each once training has checkpointed), and a second
    ``--resume`` finishes with the clean run's result: both signals, and a resume that is itself interrupted."""
    spec = fault_cohort(tmp_path, name="signals")
    out = tmp_path / "results"
    raytmp = ray_tmpdir()
    env = service_env(RAY_TMPDIR=str(raytmp))
    try:
        _interrupt(spec, out, env, signal.SIGTERM)
        _interrupt(spec, out, env, signal.SIGINT, ("--resume",))
        res = cli("run", str(spec), "--resume", "--json", env=env, timeout=500, cwd=tmp_path)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout)
    assert summary["status"] == "ok" and summary["n_failed"] == 0
    assert_same_result(clean_fault_run, out)  # the interrupted and resumed run computed the clean run's result
