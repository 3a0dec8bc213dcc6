"""MLflow faults: a tracking server that is not there at the start (a clear error in seconds, nothing started), and
one killed mid-run (the run finishes on disk, says what was not logged; ``senca-platform sync`` logs it later into
the restarted server, once)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from _procs import Cli, ray_tmpdir, wait_until
from _services import MlflowServer, cli, free_ports, service_env, tiny_cohort

pytestmark = [pytest.mark.slow]
NAME = "mlflow-faults"
EPOCHS = 3


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.timeout(180)
def test_unreachable_server_at_start_fails_fast_before_any_work(tmp_path):
    (port,) = free_ports(1)
    secret = "pw-7f3a91c2e5"
    spec = tiny_cohort(tmp_path, name="nowhere", tracking_uri=f"http://senca:{secret}@127.0.0.1:{port}")
    raytmp = ray_tmpdir()
    try:
        res = cli("run", str(spec), "--json", env=service_env(RAY_TMPDIR=str(raytmp)), timeout=120, cwd=tmp_path)
        ray_sessions = list(raytmp.rglob("session_*"))
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    assert res.returncode == 3, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach the MLflow tracking server at http://***@127.0.0.1:{port} "
                      "(starting the cohort run): is it running?"], res.stderr
    assert "Traceback" not in res.stderr and secret not in res.stderr + res.stdout and res.stdout == ""
    assert ray_sessions == [] and "Ray:" not in res.stderr  # no Ray was started
    out = tmp_path / "results"
    assert not (out / "cache").exists() and not (out / "preprocess").exists() and not (out / "tracking").exists()


# --------------------------------------------------------------------------------------------- server killed
@pytest.fixture(scope="module")
def server_killed(tmp_path_factory):
    """`run` against a real `mlflow server` that is killed (by pid) once the preprocess stage is logged, while the
    training runs: the fault hook (``jobs._faults``) holds each epoch 1 s, so the train stage cannot finish and be
    logged between the poll that sees the preprocess stage and the kill (three epochs of a tiny cohort otherwise
    take under a second)."""
    root = tmp_path_factory.mktemp("mlflowfault")
    store = root / "mlflow"
    server = MlflowServer(store).start()
    raytmp = ray_tmpdir()
    (root / "pids").mkdir()
    env = service_env(RAY_TMPDIR=str(raytmp), SENCA_FAULT_PIDDIR=str(root / "pids"), SENCA_FAULT_SLOW_S="1.0")
    spec = tiny_cohort(root, name=NAME, tracking_uri=server.uri, n_patients=2, n_spots=200, seed=6, epochs=EPOCHS)
    state = {"root": root, "store": store, "spec": spec, "out": root / "results", "first_uri": server.uri}
    run = Cli("run", str(spec), "--json", cwd=root, env=env, name="run")
    try:
        from senca_platform.tracking import PROBE_HTTP, http_settings

        def preprocess_logged():
            if not run.running():
                raise AssertionError(f"the run ended before the server was killed: {run.stderr[-3000:]}")
            with http_settings(PROBE_HTTP, override=True):
                try:
                    runs = _client(server.uri).search_runs(
                        [e.experiment_id for e in _client(server.uri).search_experiments()],
                        "tags.`senca.stage` = 'preprocess' and attributes.status = 'FINISHED'")
                except Exception:  # noqa: BLE001 - the experiment is being created
                    return None
            return runs or None

        wait_until(preprocess_logged, timeout=300, interval=0.5, what="the preprocess stage logged in MLflow")
        server.stop()  # by the pids of its session: SIGTERM, then SIGKILL
        state["server_killed_at"] = time.monotonic()
        state["rc"] = run.wait(timeout=600)
        state["run_seconds_after_kill"] = time.monotonic() - state["server_killed_at"]
    finally:
        state["left"] = run.kill_all()
        server.stop()  # already stopped unless the wait failed: then it must not outlive the fixture
        shutil.rmtree(raytmp, ignore_errors=True)
    state["stdout"], state["stderr"] = run.stdout, run.stderr
    state["restarted"] = MlflowServer(store).start()  # same backend store, a new port
    try:
        yield state
    finally:
        state["restarted"].stop()


@pytest.mark.timeout(1200)
def test_the_run_finishes_on_disk_and_reports_the_tracking_error(server_killed):
    st = server_killed
    assert st["left"] == []
    assert st["rc"] == 4, st["stderr"][-4000:]  # every slide ok, tracking incomplete
    summary = json.loads(st["stdout"])
    assert summary == json.loads((st["out"] / "cohort_summary.json").read_text())
    assert summary["status"] == "ok" and summary["n_failed"] == 0
    for s in summary["slides"]:
        assert s["status"] == "ok" and Path(s["h5ad"]).exists() and Path(s["region_map"]).exists()
    assert Path(summary["tables"]["patients_parquet"]).exists()
    tracking = summary["tracking"]
    assert tracking["status"] == "incomplete"
    assert summary["tracking_error"] == tracking["error"]
    assert f"cannot reach the MLflow tracking server at {st['first_uri']}" in tracking["error"]
    assert tracking["pending"][:1] == ["stage:train"] and {"stage:infer", "model", "finish"} <= set(tracking["pending"])
    pending = json.loads(Path(tracking["pending_file"]).read_text())
    assert pending["pending"] == tracking["pending"] and pending["run_id"] == summary["mlflow_run_id"]
    assert pending["logged"] == ["stage:preprocess"]
    assert "Traceback" not in st["stderr"] and "warning: MLflow tracking failed" in st["stderr"]
    assert f"senca-platform sync {st['out']}" in st["stderr"]
    print(f"\nrun went on {st['run_seconds_after_kill']:.0f}s after the server was killed")


@pytest.mark.timeout(600)
def test_sync_logs_the_run_into_the_restarted_server_once(server_killed):
    st = server_killed
    uri = st["restarted"].uri
    first = json.loads((st["out"] / "cohort_summary.json").read_text())
    res = cli("sync", str(st["out"]), "--tracking-uri", uri, "--json", env=service_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    synced = json.loads(res.stdout)
    assert synced["synced"] is True and synced["run_id"] == first["mlflow_run_id"]  # the same parent, continued
    assert synced["logged"] == ["stage:train", "stage:infer", "model", "finish"]
    mc = _client(uri)
    run = mc.get_run(synced["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["senca.tracking"] == "complete"
    assert run.data.tags["senca.status"] == "ok" and run.data.params["n_slides"] == "2"
    assert run.data.metrics["mean_ari"] == pytest.approx(
        sum(s["ari"] for s in first["slides"]) / len(first["slides"]))
    assert [m.step for m in mc.get_metric_history(run.info.run_id, "train_loss")] == list(range(EPOCHS))
    kids = mc.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(k.data.tags["senca.stage"] for k in kids) == ["infer", "preprocess", "train"]
    arts = {a.path for a in mc.list_artifacts(run.info.run_id)}
    assert {"spec", "tables", "region_maps", "cohort_summary.json", "model_state"} <= arts
    assert "tables/patients.parquet" in {a.path for a in mc.list_artifacts(run.info.run_id, "tables")}
    versions = mc.search_model_versions(f"name = '{NAME}'")
    assert [int(v.version) for v in versions] == [1] and versions[0].run_id == run.info.run_id
    assert str(mc.get_model_version_by_alias(NAME, "champion").version) == "1"
    summary = json.loads((st["out"] / "cohort_summary.json").read_text())
    assert summary["tracking"]["status"] == "complete" and summary["tracking_error"] is None
    assert summary["registered_model_version"] == 1
    assert not (st["out"] / "tracking" / "pending.json").exists()
    # the model logged by sync serves what the run computed
    import anndata as ad
    import mlflow.pyfunc
    import numpy as np

    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
    slide = ad.read_h5ad(summary["slides"][0]["h5ad"])
    Z = pyfunc.predict({"X_pca": slide.obsm["X_pca"].astype(np.float32),
                        "X_hist": slide.obsm["X_hist"].astype(np.float32),
                        "spatial_neighbors": slide.obsm["spatial_neighbors"].astype(np.int64)})
    latent = slide.obsm["X_senca_latent"] if "X_senca_latent" in slide.obsm else slide.obsm["X_senca"]
    zcols = [c for c in Z.columns if c.startswith("z_")]
    assert np.allclose(Z[zcols].to_numpy(), latent, atol=1e-5)  # the pyfunc embeds: z ...
    assert (Z["region"].astype(str).to_numpy() == slide.obs["region"].astype(str).to_numpy()).mean() > 0.95  # regions

    # idempotent: a second sync changes nothing
    n_runs = len(mc.search_runs([run.info.experiment_id], ""))
    again = cli("sync", str(st["out"]), "--tracking-uri", uri, env=service_env(), timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("already in sync"), again.stderr[-3000:]
    assert len(mc.search_runs([run.info.experiment_id], "")) == n_runs
    assert [int(v.version) for v in mc.search_model_versions(f"name = '{NAME}'")] == [1]


@pytest.mark.timeout(600)
def test_sync_into_another_store_creates_the_run_there_once(server_killed, tmp_path):
    st = server_killed
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first = json.loads((st["out"] / "cohort_summary.json").read_text())
    res = cli("sync", str(st["out"]), "--tracking-uri", other, "--json", env=service_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    synced = json.loads(res.stdout)
    assert synced["synced"] is True and synced["run_id"] != first["mlflow_run_id"]
    mc = _client(other)
    run = mc.get_run(synced["run_id"])
    assert run.data.tags["senca.synced_from"] == first["mlflow_run_id"]
    kids = mc.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(k.data.tags["senca.stage"] for k in kids) == ["infer", "preprocess", "train"]
    assert [int(v.version) for v in mc.search_model_versions(f"name = '{NAME}'")] == [1]
    again = cli("sync", str(st["out"]), "--tracking-uri", other, "--json", env=service_env(), timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["synced"] is False
    assert len(mc.search_runs([run.info.experiment_id], "tags.`senca.role` = 'parent'")) == 1


@pytest.mark.timeout(120)
def test_sync_without_a_finished_run_is_one_clear_line(tmp_path):
    res = cli("sync", str(tmp_path), env=service_env(), timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"error: {tmp_path}: no tracking record (tracking/run.json): not the output "
                                  "directory of a `senca-platform run`")
