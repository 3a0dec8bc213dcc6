"""A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifact store): a cohort run against it, then
``models list/show/promote``, ``runs list/show`` and ``predict`` with the registered model — which reproduces the
training run's regions for the training slides and puts new slides in the same regions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from _services import MlflowServer, cli, free_ports, service_env, tiny_cohort
from senca_platform.cli import app

pytestmark = [pytest.mark.slow]
NAME = "reg-demo"
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """`senca-platform run` of a tiny cohort with the spec's tracking.uri = the server."""
    root = tmp_path_factory.mktemp("cohort")
    spec = tiny_cohort(root, name=NAME, tracking_uri=server.uri, seed=5)
    t0 = time.perf_counter()
    res = cli("run", str(spec), "--json", timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout)
    summary["_seconds"] = time.perf_counter() - t0
    return spec, summary


@pytest.fixture
def uri(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    return server.uri


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_cohort_run_against_the_tracking_server_with_artifacts(server, trained, uri):
    spec, summary = trained
    assert summary["status"] == "ok" and summary["mlflow"]["tracking_uri"] == server.uri
    mc = _client(uri)
    run = mc.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    arts = {a.path for a in mc.list_artifacts(run.info.run_id, "tables")}
    assert "tables/patients.parquet" in arts
    # the artifacts went through the server into --artifacts-destination
    stored = {p.name for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"patients.parquet", "cohort_summary.json", "cohort.resolved.yaml"} <= stored
    assert any(p.name == "MLmodel" for p in server.artifacts.rglob("MLmodel"))
    # what predict needs travels with the run, so the version is usable where OUT is not visible
    state = {a.path for a in mc.list_artifacts(run.info.run_id, "model_state")}
    assert {"model_state/manifest.json", "model_state/pca_state.npz", "model_state/region_model.pkl"} <= state
    mv = mc.get_model_version_by_alias(NAME, "champion")
    assert int(mv.version) == summary["registered_model_version"] == 1
    # a described record: the run's note and source, the version's description and selection rule
    assert "SENCA-st cohort run of" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["mlflow.source.name"] == "senca-platform run"
    assert "SENCA-st spot-embedding model" in mv.description and summary["mlflow_run_id"] in mv.description
    print(f"\nrun against mlflow server: {summary['_seconds']:.1f}s")


def test_models_list_and_show(trained, uri):
    spec, summary = trained
    rows = _json(_invoke("models", "list", "--json"))
    row = next(r for r in rows if r["name"] == NAME)
    assert row["latest_version"] == 1 and row["aliases"] == {"champion": 1} and row["cohort"] == NAME

    info = _json(_invoke("models", "show", NAME, "--alias", "champion", "--json", "--tracking-uri", uri))
    assert info["version"] == 1 and info["aliases"] == ["champion"] and info["run_id"] == summary["mlflow_run_id"]
    assert info["cohort"]["name"] == NAME and info["cohort"]["n_patients"] == 2
    assert info["cohort"]["slides"] == [s["slide"] for s in summary["slides"]]
    assert info["params"]["preprocess.n_pca"] == "10" and info["params"]["clustering.k"] == "3"
    assert info["metrics"]["mean_ari"] == pytest.approx(np.mean([s["ari"] for s in summary["slides"]]))
    assert info["ui"].startswith(uri)
    # the per-patient summary link resolves to the real table
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(info["summary"]["runs:/patients.parquet"], tracking_uri=uri)
    table = pd.read_parquet(local)
    assert sorted(table["patient_id"]) == ["P1", "P2"] and "shannon" in table
    text = _invoke("models", "show", NAME, "--version", "1").stdout
    assert "per-patient summary (patients.parquet)" in text and "mean_ari" in text and "P1_S1" in text


def test_promote_moves_the_alias(trained, uri):
    mc = _client(uri)
    v1 = mc.get_model_version(NAME, "1")
    model_id = v1.source.split("/", 1)[1] if v1.source.startswith("models:/m-") else None
    v2 = mc.create_model_version(NAME, v1.source, run_id=v1.run_id, tags=dict(v1.tags), model_id=model_id)
    res = _invoke("models", "promote", NAME, str(v2.version), "--alias", "champion")
    assert res.exit_code == 0 and "-> version 2 (was version 1)" in res.stdout
    assert _json(_invoke("models", "show", NAME, "--alias", "champion", "--json"))["version"] == 2
    assert _invoke("models", "promote", NAME, "1").exit_code == 0
    assert int(mc.get_model_version_by_alias(NAME, "champion").version) == 1
    res = _invoke("models", "promote", NAME, "9")
    assert res.exit_code == 1 and "not found" in res.stderr
    res = _invoke("models", "promote", NAME, "1", "--alias", "v3")
    assert res.exit_code == 1 and "reserves" in res.stderr


def test_predict_reproduces_the_training_regions(trained, uri, tmp_path):
    spec, summary = trained
    out = tmp_path / "pred"
    res = _invoke("predict", "--model", f"models:/{NAME}@champion", str(spec), "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    pred = json.loads(res.stdout)  # only the summary on stdout (MLflow's run links go to stderr)
    assert pred["status"] == "ok" and pred["model"]["version"] == 1
    assert pred["model"]["training_run_id"] == summary["mlflow_run_id"]
    assert set(pred["model"]["training_regions_reproduced"].values()) == {1.0}
    for s_train, s_pred in zip(summary["slides"], pred["slides"]):
        a, b = ad.read_h5ad(s_train["h5ad"]), ad.read_h5ad(s_pred["h5ad"])
        assert list(a.obs_names) == list(b.obs_names)
        assert list(a.obs["region"].cat.categories) == list(b.obs["region"].cat.categories)
        assert (a.obs["region"].astype(str).values == b.obs["region"].astype(str).values).all(), s_pred["slide"]
        assert np.allclose(a.obsm["X_senca"], b.obsm["X_senca"], atol=1e-6)
        assert s_pred["ari"] == pytest.approx(s_train["ari"])
        assert b.uns["senca"]["model"]["version"] == "1"
        assert Path(s_pred["region_map"]).exists()
    assert set(pd.read_parquet(out / "tables" / "patients.parquet")["patient_id"]) == {"P1", "P2"}
    # the model state (gene panel, PCA basis, region model) is now attached to the training run
    mc = _client(uri)
    state = {a.path for a in mc.list_artifacts(summary["mlflow_run_id"], "model_state")}
    assert {"model_state/genes.npy", "model_state/pca_state.npz", "model_state/region_model.pkl"} <= state
    # the prediction is its own run, linked to the model version
    run = mc.get_run(pred["mlflow_run_id"])
    tags = run.data.tags
    assert tags["senca.role"] == "predict" and tags["senca.model_name"] == NAME
    assert tags["senca.model_version"] == "1" and tags["senca.training_run_id"] == summary["mlflow_run_id"]
    assert {"predict_summary.json", "tables", "region_maps"} <= {a.path for a in mc.list_artifacts(run.info.run_id)}
    shown = _json(_invoke("models", "show", NAME, "--version", "1", "--json"))
    assert pred["mlflow_run_id"] in [p["run_id"] for p in shown["predict_runs"]]
    assert shown["model_state"].endswith("/model_state")


def test_predict_new_slide_in_the_cohort_regions(trained, uri, tmp_path):
    from senca_core.datasets import synthetic_cohort

    spec, summary = trained
    rec = synthetic_cohort(tmp_path / "new", n_patients=1, n_spots=120, seed=11)[0]
    a = ad.read_h5ad(rec["h5ad"])
    panel = np.load(Path(summary["output_dir"]) / "preprocess" / "genes.npy")
    drop = [g for g in panel[:20] if g in a.var_names]  # genes this lab's panel lacks
    a = a[:, [g for g in a.var_names if g not in set(drop)]].copy()
    a.write_h5ad(rec["h5ad"])
    slides = tmp_path / "slides.yaml"
    slides.write_text(yaml.safe_dump({"patients": [{"id": "NEW", "slides": [
        {"id": "NEW_S1", "reader": "h5ad", "path": str(Path(rec["h5ad"]).relative_to(tmp_path))}]}]}))
    res = _invoke("predict", "--model", f"models:/{NAME}/1", str(slides), "--json")
    assert res.exit_code == 0, res.output
    pred = json.loads(res.stdout)
    assert Path(pred["output_dir"]) == tmp_path / "predict_out"
    s = pred["slides"][0]
    assert s["status"] == "ok" and s["n_spots"] == 120 and s["n_regions"] >= 2
    absent = [w for w in s["warnings"] if f"of {len(panel)} panel genes absent" in w]
    assert len(absent) == 1 and int(absent[0].split()[0]) >= len(drop), s["warnings"]
    b = ad.read_h5ad(s["h5ad"])
    assert list(b.obs["region"].cat.categories) == pred["categories"] == ["0", "1", "2"]
    # the cohort's regions carry over to a slide never seen in training: they still match its ground truth
    assert s["ari"] is not None and s["ari"] > 0.2, s


def test_predict_bad_inputs_are_one_line(trained, uri, tmp_path):
    spec, summary = trained
    res = _invoke("predict", "--model", "models:/nope@champion", str(spec), "--out", str(tmp_path / "x"))
    assert res.exit_code == 1 and res.stderr.startswith("error:") and "nope" in res.stderr
    res = _invoke("predict", "--model", "runs:/abc/model", str(spec))
    assert res.exit_code == 1 and "models:/NAME@ALIAS" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("patients:\n  - id: P\n    slides:\n      - id: S\n        reader: tiff\n        path: x\n")
    res = _invoke("predict", "--model", f"models:/{NAME}@champion", str(bad))
    assert res.exit_code == 2 and "bad.yaml:5" in res.stderr and "unknown reader" in res.stderr
    res = _invoke("predict", "--model", f"models:/{NAME}@champion", str(spec), "--out", summary["output_dir"])
    assert res.exit_code == 1 and "holds a training run" in res.stderr


def test_predict_without_model_state_or_output_dir_says_what_to_do(trained, uri, tmp_path):
    spec, summary = trained
    mc = _client(uri)
    v1 = mc.get_model_version(NAME, "1")
    exp = mc.get_run(v1.run_id).info.experiment_id
    run = mc.create_run(exp, tags={"senca.role": "parent", "senca.cohort": "elsewhere"})
    mc.log_param(run.info.run_id, "output_dir", str(tmp_path / "gone"))
    mc.set_terminated(run.info.run_id)
    model_id = v1.source.split("/", 1)[1] if v1.source.startswith("models:/m-") else None
    mc.create_registered_model("orphan")
    mc.create_model_version("orphan", v1.source, run_id=run.info.run_id, model_id=model_id)
    res = _invoke("predict", "--model", "models:/orphan/1", str(spec), "--out", str(tmp_path / "p"))
    assert res.exit_code == 1 and res.stderr.count("error:") == 1, res.output
    assert "no model state" in res.stderr and "models attach-state" in res.stderr


def test_runs_list_and_show(trained, uri):
    spec, summary = trained
    rows = _json(_invoke("runs", "list", "--kind", "all", "--json"))
    cohort = next(r for r in rows if r["run_id"] == summary["mlflow_run_id"])
    assert cohort["kind"] == "cohort" and cohort["cohort"] == NAME and cohort["n_slides_ok"] == 2
    info = _json(_invoke("runs", "show", summary["mlflow_run_id"], "--json"))
    assert {c["name"] for c in info["children"]} >= {"preprocess", "train", "infer"}
    assert {"name": NAME, "version": 1} in [{k: v[k] for k in ("name", "version")} for v in info["model_versions"]]
    assert info["tags"]["senca.status"] == "ok"
    res = _invoke("runs", "show", "0" * 32)
    assert res.exit_code == 1 and "not found" in res.stderr


def test_unreachable_server_and_no_uri_are_one_line(tmp_path, monkeypatch):
    (port,) = free_ports(1)
    env = service_env()
    res = cli("models", "list", "--tracking-uri", f"http://127.0.0.1:{port}", env=env, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"error: cannot reach the MLflow tracking server at http://127.0.0.1:{port} "
                                  "(listing registered models): is it running?")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = _invoke("models", "list")
    assert res.exit_code == 1 and "--tracking-uri" in res.stderr
