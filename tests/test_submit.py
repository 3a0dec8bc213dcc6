"""``senca-platform submit`` and ``jobs …`` against a real Ray head on 127.0.0.1 (``ray start --head`` with token
auth), plus the submission rules (what is packaged, what must be cluster-visible) without a cluster.

The head is started once for this module with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` in its environment
(Ray 2.60: ``ray start`` only enables auth when asked or when a token already exists; the client sends the token
from ``RAY_AUTH_TOKEN``) and stopped at the end by ending its process session (its own processes only)."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
import yaml

from _services import RayHead, cli, free_ports, service_env, tiny_cohort
from senca_platform.spec import load_spec
from senca_platform.submit import (BUNDLE, ClusterError, normalize_address, prepare_submission, resolve_tracking)

TOKEN = "senca-test-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def head():
    h = RayHead(TOKEN, num_cpus=2).start()
    try:
        yield h
    finally:
        h.stop()


def _env(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = service_env(**extra)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _one_clear_line(res) -> str:
    err = res.stderr.strip()
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------ real cluster
@pytest.mark.slow
def test_submit_follow_and_find_the_run_in_mlflow(head, tmp_path):
    cohort = tiny_cohort(tmp_path / "cohort", name="cluster-demo")
    out = tmp_path / "cluster_out"
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    t0 = time.perf_counter()
    res = cli("submit", str(cohort), "--address", head.address, "--out", str(out), "--tracking-uri", uri,
              env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().splitlines()[-1]
    assert job_id.startswith("senca-cluster-demo-")
    assert "2 packaged input(s)" in res.stderr

    logs = cli("jobs", "logs", job_id, "--follow", "--address", head.address, env=_env(), timeout=400)
    assert logs.returncode == 0, logs.stdout[-4000:] + logs.stderr[-2000:]
    seconds = time.perf_counter() - t0
    # the job ran the same pipeline, with the uploaded copy of the code, joined to this cluster
    assert "runtime_resources" in logs.stdout and "job-run: .senca_cohort/cohort.yaml" in logs.stdout
    assert "Ray: connected (2 CPUs)" in logs.stdout
    assert "model state attached" in logs.stdout
    line = [ln for ln in logs.stdout.splitlines() if ln.startswith('{"senca_summary"')][-1]
    brief = json.loads(line)["senca_summary"]
    assert brief["status"] == "ok" and brief["n_slides"] == 2 and brief["n_failed"] == 0
    assert f"job {job_id}: SUCCEEDED" in logs.stderr

    status = cli("jobs", "status", job_id, "--json", "--address", head.address, env=_env())
    info = json.loads(status.stdout)
    assert info["status"] == "SUCCEEDED" and info["metadata"]["senca.cohort"] == "cluster-demo"
    listed = json.loads(cli("jobs", "list", "--json", "--address", head.address, env=_env()).stdout)
    assert job_id in [j["job_id"] for j in listed]

    # outputs on the "cluster" side, and the run in MLflow
    summary = json.loads((out / "cohort_summary.json").read_text())
    assert summary["status"] == "ok" and summary["mlflow_run_id"] == brief["mlflow_run_id"]
    assert all(Path(s["h5ad"]).exists() and s["n_regions"] >= 2 for s in summary["slides"])
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = mc.get_run(brief["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["senca.cohort"] == "cluster-demo"
    assert run.data.metrics["n_slides_ok"] == 2 and "mean_ari" in run.data.metrics
    assert {"tables", "spec", "model_state"} <= {a.path for a in mc.list_artifacts(run.info.run_id)}
    mv = mc.get_model_version_by_alias("cluster-demo", "champion")
    assert mv.run_id == run.info.run_id
    # the packaged spec was rewritten for the cluster: output dir + tracking URI, paths inside the bundle
    logged = [a.path for a in mc.list_artifacts(run.info.run_id, "spec")]
    assert "spec/cohort.yaml" in logged
    # the token never shows up anywhere the user or the job wrote
    for text in (res.stdout, res.stderr, logs.stdout, logs.stderr, status.stdout, json.dumps(info)):
        assert TOKEN not in text
    print(f"\nsubmit -> SUCCEEDED in {seconds:.1f}s (tiny cohort, 2 CPUs)")


@pytest.mark.slow
def test_an_embedded_ray_beside_a_ray_start_cluster_is_its_own(head):
    """`ray start` names its cluster in Ray's temp dir (``ray_current_cluster``), and ``ray.init()`` without an
    address joined that cluster: a run without ``ray.address`` ran on it while printing "embedded local". The
    embedded Ray starts with ``address="local"``: its own GCS and the CPUs it asked for."""
    import shutil
    import subprocess
    import sys
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="srt", dir="/tmp"))  # short: Ray's socket paths are limited
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text(head.gcs)
        code = ("import json, ray; from senca_platform.ray_local import start_local_ray; "
                "gcs = start_local_ray(1, log_to_driver=False, logging_level='ERROR', dashboard=False); "
                "print(json.dumps([gcs, ray.cluster_resources().get('CPU')])); ray.shutdown()")
        res = subprocess.run([sys.executable, "-c", code], env=_env(RAY_TMPDIR=str(tmp)), capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-3000:]
        gcs, cpus = json.loads(res.stdout.strip().splitlines()[-1])
        assert gcs != head.gcs and cpus == 1, (gcs, cpus, head.gcs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_jobs_stop(head):
    from ray.job_submission import JobSubmissionClient

    c = JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {TOKEN}"})
    job = c.submit_job(entrypoint="sleep 120", metadata={"senca.cohort": "sleeper"})
    deadline = time.monotonic() + 60
    while c.get_job_status(job).value == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)
    res = cli("jobs", "stop", job, "--address", head.address, env=_env())
    assert res.returncode == 0 and "stop requested" in res.stdout, res.stderr
    deadline = time.monotonic() + 60
    while c.get_job_status(job).value not in ("STOPPED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert c.get_job_status(job).value == "STOPPED"
    res = cli("jobs", "status", job, "--address", head.address, env=_env())
    assert res.returncode == 0 and "STOPPED" in res.stdout


@pytest.mark.slow
def test_bad_token_missing_token_unknown_job_are_one_clear_error(head, tmp_path):
    cohort = tiny_cohort(tmp_path / "c", name="auth-demo", n_patients=1, n_spots=60)
    wrong = "wrong-" + secrets.token_hex(6)
    res = cli("submit", str(cohort), "--address", head.address, "--out", str(tmp_path / "o"),
              env=_env(token=wrong))
    line = _one_clear_line(res)
    assert "authentication failed" in line and "refused" in line
    assert wrong not in res.stdout + res.stderr and TOKEN not in res.stdout + res.stderr
    res = cli("jobs", "list", "--address", head.address, env=_env(token=None))
    assert "authentication failed" in _one_clear_line(res) and "RAY_AUTH_TOKEN" in res.stderr
    res = cli("jobs", "status", "no-such-job", "--address", head.address, env=_env())
    assert "not found" in _one_clear_line(res)
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_submit_to_an_address_where_nothing_listens(tmp_path):
    cohort = tiny_cohort(tmp_path / "c", name="nobody", n_patients=1, n_spots=60)
    (port,) = free_ports(1)
    res = cli("submit", str(cohort), "--address", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "o"),
              env=_env())
    line = _one_clear_line(res)
    assert f"cannot reach the Ray Job API at http://127.0.0.1:{port}" in line
    res = cli("jobs", "logs", "x", "--follow", "--address", f"127.0.0.1:{port}", env=_env())
    assert "cannot reach" in _one_clear_line(res)


# ------------------------------------------------------------------------------------------ the rules
def test_bundle_packages_files_under_the_cohort_dir_and_keeps_others_absolute(tmp_path):
    cohort = tiny_cohort(tmp_path / "c", name="bundle-demo", n_patients=2, n_spots=60)
    spec = yaml.safe_load(cohort.read_text())
    outside = tmp_path / "shared" / "far.h5ad"
    outside.parent.mkdir()
    outside.write_bytes((cohort.parent / spec["patients"][1]["slides"][0]["path"]).read_bytes())
    spec["patients"][1]["slides"][0]["path"] = "../shared/far.h5ad"
    spec["patients"].append({"id": "P9", "slides": [{"id": "P9_S1", "reader": "h5ad",
                                                     "path": "/cluster/only/p9.h5ad"}]})
    cohort.write_text(yaml.safe_dump(spec, sort_keys=False))
    sub = prepare_submission(cohort, out="/shared/runs/x", tracking_uri="http://mlflow.internal:5000")
    try:
        assert [p for _, p, _ in sub.packaged] == [spec["patients"][0]["slides"][0]["path"]]
        assert dict(sub.shared) == {"patients[1].slides[0].path": str(outside),
                                    "patients[2].slides[0].path": "/cluster/only/p9.h5ad"}
        assert any("/cluster/only/p9.h5ad" in w and "every Ray node" in w for w in sub.warnings)
        # the bundled spec validates on its own, from inside the working dir, with the rewritten paths
        bundled = sub.staging / sub.bundle_spec
        assert bundled.parent.name == BUNDLE
        s = load_spec(bundled)
        paths = {sl.id: Path(sl.path) for _, sl in s.slides()}
        assert paths["P1_S1"].is_file() and paths["P1_S1"].is_relative_to(sub.staging / BUNDLE)
        assert paths["P2_S1"] == outside and paths["P9_S1"] == Path("/cluster/only/p9.h5ad")
        assert str(s.output_dir) == "/shared/runs/x" and s.tracking.uri == "http://mlflow.internal:5000"
        assert s.ray.address is None
        # the project copy: the code, without the venv, git, caches
        for rel in ("platform/senca_platform/cli.py", "jobs/pipeline.py", "senca_core/__init__.py",
                    "pyproject.toml", "constraints.txt"):
            assert (sub.staging / rel).is_file(), rel
        for rel in (".venv", ".git", "__pycache__", "platform/senca_platform/__pycache__"):
            assert not (sub.staging / rel).exists(), rel
        assert sub.runtime_env["working_dir"] == str(sub.staging)
        assert sub.runtime_env["py_modules"] == [str(sub.staging / "platform" / "senca_platform")]
        assert sub.entrypoint == "python -m senca_platform.cli job-run .senca_cohort/cohort.yaml"
        assert "RAY_AUTH_TOKEN" not in json.dumps(sub.runtime_env)
    finally:
        sub.cleanup()
    assert not sub.staging.exists()


def test_installed_code_image_and_shared_data(tmp_path):
    cohort = tiny_cohort(tmp_path / "c", name="img-demo", n_patients=1, n_spots=60)
    sub = prepare_submission(cohort, out="/shared/o", image="ghcr.io/x/y:1", data="shared")
    try:
        assert sub.packaged == [] and len(sub.shared) == 1
        assert sub.entrypoint.startswith("senca-platform job-run ") and sub.runtime_env["image_uri"] == "ghcr.io/x/y:1"
        assert "py_modules" not in sub.runtime_env and not (sub.staging / "jobs").exists()
    finally:
        sub.cleanup()


@pytest.mark.parametrize("kwargs, message", [
    ({"out": None}, "not an absolute path"),
    ({"out": "relative/out"}, "not an absolute path"),
    ({"out": "/o", "tracking_uri": "http://user:pw@mlflow:5000"}, "carries credentials"),
    ({"out": "/o", "tracking_uri": "sqlite:///rel.db"}, "absolute path"),
    ({"out": "/o", "env": ["RAY_AUTH_TOKEN=x"]}, "never sent"),
    ({"out": "/o", "max_upload_mb": 0.01}, "--max-upload-mb"),
    ({"out": "/o", "data": "everything"}, "--data"),
])
def test_submission_refusals(tmp_path, kwargs, message):
    cohort = tiny_cohort(tmp_path / "c", name="refuse", n_patients=1, n_spots=60)
    with pytest.raises(ClusterError, match=message.replace("-", r"\-")):
        prepare_submission(cohort, **kwargs)


def test_missing_packaged_file_and_invalid_spec(tmp_path):
    cohort = tiny_cohort(tmp_path / "c", name="missing", n_patients=1, n_spots=60)
    spec = yaml.safe_load(cohort.read_text())
    spec["patients"][0]["slides"][0]["path"] = "data/nope.h5ad"
    cohort.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(ClusterError, match="nope.h5ad"):
        prepare_submission(cohort, out="/o")
    cohort.write_text(cohort.read_text().replace("n_pca: 10", "n_pcs: 10"))
    res = cli("submit", str(cohort), "--address", "http://127.0.0.1:9", "--out", "/o", env=_env())
    assert res.returncode == 2 and "preprocess.n_pcs" in res.stderr and "Traceback" not in res.stderr


def test_address_and_tracking_resolution(monkeypatch):
    assert normalize_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert normalize_address("https://ray.example/") == "https://ray.example"
    for bad in ("ray://h:10001", "auto"):
        with pytest.raises(ClusterError):
            normalize_address(bad)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match="--address"):
        normalize_address(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking("http://opt:5000", "http://spec:5000")[0] == "http://opt:5000"
    assert resolve_tracking(None, "http://spec:5000") == ("http://spec:5000", "the spec's tracking.uri")
    assert resolve_tracking(None, None) == ("http://env:5000", "MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking(None, None) == (None, "default")
