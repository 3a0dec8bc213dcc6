"""Security: every server the platform starts (the embedded Ray: GCS, raylet, workers, dashboard, agents, metrics)
and the test MLflow server listen on 127.0.0.1 only; secrets from the environment and credentials in the spec
appear nowhere (MLflow params / tags / artifacts, the summary, the output directory, the CLI's output); a spec
with a Python-object YAML tag is refused without being constructed."""

from __future__ import annotations

import json
import re
import shutil
import uuid

import pytest

from _procs import Cli, SocketWatch, is_loopback, listening, ray_tmpdir
from _services import MlflowServer, REPO, cli, service_env, session_pids, tiny_cohort

pytestmark = [pytest.mark.slow]
NAME = "secure-demo"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A tiny cohort run with secrets in the environment and a password in the spec's tracking URI, against a
    real MLflow server; the listening sockets of every process of the run sampled while it runs."""
    root = tmp_path_factory.mktemp("secure")
    server = MlflowServer(root / "mlflow").start()
    tag = uuid.uuid4().hex[:12]
    secrets = {"MLFLOW_TRACKING_PASSWORD": f"mlflowpw{tag}", "AWS_SECRET_ACCESS_KEY": f"awssecret{tag}",
               "RAY_AUTH_TOKEN": f"raytoken{tag}", "uri_password": f"uripw{tag}"}
    port = server.uri.rsplit(":", 1)[1]
    spec = tiny_cohort(root, name=NAME, n_patients=2, n_spots=150, seed=8, epochs=2,
                       tracking_uri=f"http://senca:{secrets['uri_password']}@127.0.0.1:{port}")
    raytmp = ray_tmpdir()
    env = service_env(RAY_TMPDIR=str(raytmp), MLFLOW_TRACKING_USERNAME="senca",
                      **{k: v for k, v in secrets.items() if k.isupper()})
    state = {"root": root, "server": server, "secrets": secrets, "out": root / "results",
             "server_sockets": listening(session_pids(server.sid))}
    run = Cli("run", str(spec), "--json", cwd=root, env=env, name="run")
    try:
        with SocketWatch(run.sid) as watch:
            state["rc"] = run.wait(timeout=600)
        state["sockets"] = watch.seen
    finally:
        state["left"] = run.kill_all()
        shutil.rmtree(raytmp, ignore_errors=True)
    state["stdout"], state["stderr"] = run.stdout, run.stderr
    try:
        yield state
    finally:
        server.stop()


@pytest.mark.timeout(900)
def test_every_server_listens_on_loopback_only(secured):
    assert secured["rc"] == 0, secured["stderr"][-4000:]
    assert secured["left"] == []
    sockets = secured["sockets"]
    print(f"\nlistening sockets of the run's processes: {len(sockets)}")
    exposed = [f"{cmd} (pid {pid}) on {ip}:{port}" for (ip, port), (pid, cmd) in sorted(sockets.items())
               if not is_loopback(ip)]
    assert exposed == []
    commands = " ".join(cmd for _, cmd in sockets.values())
    # the dashboard, the GCS and the raylet were seen (the sampling caught the embedded Ray)
    assert "dashboard/dashboard.py" in commands and "gcs_server" in commands and "raylet" in commands
    assert secured["server_sockets"] and all(is_loopback(ip) for ip, *_ in secured["server_sockets"])


def _texts(secured) -> dict[str, bytes]:
    """Everything that could carry a secret: the CLI's output, every file under the output directory, every file
    of the MLflow server's artifact store and its database."""
    out = {"stdout": secured["stdout"].encode(), "stderr": secured["stderr"].encode()}
    server: MlflowServer = secured["server"]
    for folder in (secured["out"], server.artifacts):
        for p in folder.rglob("*"):
            if p.is_file():
                out[str(p)] = p.read_bytes()
    out["mlflow.db"] = (server.root / "mlflow.db").read_bytes()
    return out


@pytest.mark.timeout(120)
def test_secrets_appear_nowhere(secured):
    from mlflow.tracking import MlflowClient

    assert secured["rc"] == 0, secured["stderr"][-4000:]
    texts = _texts(secured)
    assert len(texts) > 50 and any(k.endswith("cohort.resolved.yaml") for k in texts)
    assert any(k.endswith("cohort_summary.json") for k in texts)
    for name, value in secured["secrets"].items():
        hits = [where for where, data in texts.items() if value.encode() in data]
        assert hits == [], f"{name} leaked into {hits}"
    mc = MlflowClient(tracking_uri=secured["server"].uri)
    runs = mc.search_runs([e.experiment_id for e in mc.search_experiments()], "")
    assert len(runs) >= 4  # parent + preprocess, train, infer
    for r in runs:
        blob = json.dumps({"params": r.data.params, "tags": r.data.tags})
        for value in secured["secrets"].values():
            assert value not in blob, r.info.run_id
    # the credential is redacted, not dropped: the logged spec says where tracking went, without the password
    summary = json.loads(secured["stdout"])
    assert summary["mlflow"]["tracking_uri"] == f"http://***@127.0.0.1:{secured['server'].uri.rsplit(':', 1)[1]}"
    parent = mc.get_run(summary["mlflow_run_id"])
    assert parent.data.params["tracking.uri"].startswith("http://***@127.0.0.1:")
    original = next(v for k, v in texts.items() if k.endswith("/spec/cohort.yaml")).decode()
    assert "uri: http://***@127.0.0.1:" in original


# --------------------------------------------------------------------------------------------- YAML
@pytest.mark.timeout(120)
def test_a_python_object_tag_in_the_spec_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    spec = tmp_path / "cohort.yaml"
    spec.write_text(f"name: !!python/object/apply:os.system [\"touch {marker}\"]\npatients:\n"
                    "  - id: P\n    slides: [{id: S, reader: h5ad, path: s.h5ad}]\n")
    for command in ("validate", "run"):
        res = cli(command, str(spec), env=service_env(), timeout=120, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        assert f"{spec}:1:" in res.stderr and "python/object/apply:os.system" in res.stderr, res.stderr
        assert not marker.exists()
    assert not (tmp_path / "senca_out").exists()


def test_no_unsafe_yaml_or_pickle_loading_of_specs_in_the_sources():
    """Specs and configs are read with safe loading only (``yaml.safe_load`` / a ``SafeLoader`` subclass)."""
    unsafe = re.compile(r"yaml\.(load|full_load|unsafe_load)\(|yaml\.(Loader|FullLoader|UnsafeLoader)\b")
    hits = [f"{p.relative_to(REPO)}:{i}" for folder in ("platform", "jobs", "senca_core")
            for p in (REPO / folder).rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if unsafe.search(line)]
    assert hits == []
