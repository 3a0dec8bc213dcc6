"""SIGTERM (what `kill PID`, systemd and Kubernetes send) and SIGINT stop a run cleanly: one line, exit 130, no
traceback, the MLflow parent run KILLED, no process left behind, and `--resume` finishes it with the result of a
run that was never interrupted."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from _procs import Cli, ray_tmpdir, wait_until
from _services import assert_same_result, cli, fault_cohort, service_env
from test_faults_driver import _checkpoint_history, _client

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_training_stops_cleanly_and_resume_finishes(tmp_path, sig, clean_fault_run):
    spec = fault_cohort(tmp_path, name="signals")
    out = tmp_path / "results"
    raytmp = ray_tmpdir()
    env = service_env(RAY_TMPDIR=str(raytmp))
    slow = dict(env, SENCA_FAULT_PIDDIR=str(tmp_path / "pids"), SENCA_FAULT_SLOW_S="1.0")
    (tmp_path / "pids").mkdir()
    run = Cli("run", str(spec), cwd=tmp_path, env=slow, name="run1")
    try:
        def training():
            if not run.running():
                raise AssertionError(f"the run ended (rc {run.proc.returncode}) before the signal: {run.stderr[-3000:]}")
            return _checkpoint_history(out)

        wait_until(training, timeout=300, what="a training checkpoint")
        run.proc.send_signal(sig)  # the driver only, as `kill PID` does
        rc = run.wait(timeout=120)
        leftovers = run.leftovers()
    finally:
        still = run.kill_all()
    err = run.stderr
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "stopped: interrupted by a signal" in err, err[-3000:]
    assert leftovers == [] and still == []
    uri = f"sqlite:///{out / 'mlflow.db'}"
    mc = _client(uri)
    runs = mc.search_runs([mc.get_experiment_by_name("signals").experiment_id], "tags.`senca.role` = 'parent'")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert "resume with --resume" in runs[0].data.tags["senca.error"]
    try:
        res = cli("run", str(spec), "--resume", "--json", env=env, timeout=500, cwd=tmp_path)
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout)
    assert summary["status"] == "ok" and summary["n_failed"] == 0
    assert_same_result(clean_fault_run, out)  # the interrupted and resumed run computed the clean run's result
