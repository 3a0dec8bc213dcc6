"""Security: every server the platform starts (the embedded Ray: GCS, raylet, workers, dashboard, agents, metrics)
and the test MLflow server listen on 127.0.0.1 only; secrets from the environment and credentials in the spec
appear nowhere (MLflow params / tags / artifacts, the summary, the output directory, the CLI's output); a spec
with a Python-object YAML tag is refused without being constructed."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

import pytest
import yaml

from _procs import Cli, SocketWatch, is_loopback, listening, ray_tmpdir
from _services import MlflowServer, REPO, cli, service_env, session_pids, tiny_cohort

pytestmark = [pytest.mark.slow]
NAME = "secure-demo"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, request):
    """A tiny cohort run with secrets in the environment and a password in the spec's tracking URI, against a
    real MLflow server; the listening sockets of every process of the run sampled while it runs."""
    root = tmp_path_factory.mktemp("secure")
    server = MlflowServer(root / "mlflow").start()
    request.addfinalizer(server.stop)  # also when the run below fails or times out
    tag = uuid.uuid4().hex[:12]
    # the URI's password holds an '@' (its two halves are checked apart: a partial mask leaves the second), and
    # the spec carries a secret in a comment line and in a comment after a value
    secrets = {"MLFLOW_TRACKING_PASSWORD": f"mlflowpw{tag}", "AWS_SECRET_ACCESS_KEY": f"awssecret{tag}",
               "RAY_AUTH_TOKEN": f"raytoken{tag}", "uri_password": f"uripw{tag}", "uri_password_tail": f"at{tag}",
               "comment_token": f"commenttoken{tag}", "comment_uri": f"commentpw{tag}"}
    port = server.uri.rsplit(":", 1)[1]
    spec = tiny_cohort(root, name=NAME, n_patients=2, n_spots=150, seed=8, epochs=2,
                       tracking_uri=f"http://senca:uripw{tag}@at{tag}@127.0.0.1:{port}")
    spec.write_text(f"# deploy token: {secrets['comment_token']}\n" + spec.read_text().replace(
        f"@127.0.0.1:{port}", f"@127.0.0.1:{port}  # was http://u:{secrets['comment_uri']}@old-host", 1))
    assert secrets["comment_uri"] in spec.read_text()
    raytmp = ray_tmpdir()
    env = service_env(RAY_TMPDIR=str(raytmp), MLFLOW_TRACKING_USERNAME="senca",
                      **{k: v for k, v in secrets.items() if k.isupper()})
    state = {"root": root, "server": server, "secrets": secrets, "out": root / "results",
             "server_sockets": listening(session_pids(server.sid))}
    run = Cli("run", str(spec), "--json", cwd=root, env=env, name="run")
    try:
        with SocketWatch(run.sid) as watch:
            state["rc"] = run.wait(timeout=600)
        state["sockets"], state["processes"] = watch.seen, watch.processes
    finally:
        state["left"] = run.kill_all()
        shutil.rmtree(raytmp, ignore_errors=True)
    state["stdout"], state["stderr"] = run.stdout, run.stderr
    yield state


@pytest.mark.timeout(900)
def test_every_server_listens_on_loopback_only(secured):
    assert secured["rc"] == 0, secured["stderr"][-4000:]
    assert secured["left"] == []
    sockets = secured["sockets"]
    print(f"\nlistening sockets of the run's processes: {len(sockets)}")
    exposed = [f"{cmd} (pid {pid}) on {ip}:{port}" for (ip, port, pid), cmd in sorted(sockets.items())
               if not is_loopback(ip)]
    assert exposed == []
    # the sampling caught the embedded Ray: the GCS and the raylet (up from the first second to the last) were seen
    # listening (by any process holding their sockets: Ray's workers may inherit the raylet's); the dashboard
    # process ran (its head can take a while to bind on a loaded 2-core machine, so a
    # run that ends first may leave it unsampled; whatever it bound was checked above with the rest)
    listeners = " ".join(sockets.values())
    ran = " ".join(secured["processes"].values())
    missing = [name for name, where in (("gcs_server", listeners), ("raylet", listeners),
                                        ("dashboard/dashboard.py", ran)) if name not in where]
    assert missing == [], f"not seen: {missing}; listening: {sorted(set(sockets.values()))}"
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
    assert "#" not in original  # the YAML as written, without its comments (free text no rule can vet)
    run_json = json.loads((secured["out"] / "tracking" / "run.json").read_text())
    assert run_json["tracking_uri"].startswith("http://***@127.0.0.1:") and "#" not in run_json["spec_text"]
    assert f"MLflow: http://***@127.0.0.1:{secured['server'].uri.rsplit(':', 1)[1]}" in secured["stderr"]


@pytest.mark.timeout(60)
def test_results_follow_the_umask(secured):
    """Output files get the umask's mode (here the test process's), not 0600 whatever the umask; none of them
    holds a credential (the previous test), so none needs 0600. Ray's own storage (``ray/``) is Ray's."""
    assert secured["rc"] == 0, secured["stderr"][-4000:]
    mask = os.umask(0o022)
    os.umask(mask)
    out = secured["out"]
    files = [p for p in out.rglob("*") if p.is_file() and not p.is_relative_to(out / "ray")]
    assert len(files) > 30
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files}
    wrong = {k: v for k, v in modes.items() if int(v, 8) != 0o666 & ~mask}
    assert wrong == {}, f"umask {oct(mask)}: {wrong}"


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


# --------------------------------------------------------------------------------------------- redaction
@pytest.mark.parametrize("uri,shown", [
    ("http://user:p@ssw0rd@host:5000", "http://***@host:5000"),
    ("https://u:a@b@c@mlflow.example.org/prefix", "https://***@mlflow.example.org/prefix"),
    ("http://u:pa/ss?w#rd@host:5000/x", "http://***@host:5000/x"),  # unencoded / ? # in a password
    ("http://token@host", "http://***@host"),
    ("http://host:5000", "http://host:5000"),
    ("sqlite:////home/me@lab/mlflow.db", "sqlite:////home/me@lab/mlflow.db"),  # no authority: no credential
])
def test_a_uri_is_masked_up_to_its_last_at(uri, shown):
    from senca_platform import registry, spec, tracking
    from senca_platform._redact import redact_uri, redact_uris

    assert registry.redact_uri is redact_uri and spec.redact is not None  # one helper, everywhere
    assert redact_uri(uri) == shown
    assert redact_uris(f"cannot reach {uri} (x): see '{uri}'") == f"cannot reach {shown} (x): see '{shown}'"
    assert tracking.redact_uris(uri) == shown
    assert spec.redact({"tracking": {"uri": uri}, "name": "c"}) == {"tracking": {"uri": shown}, "name": "c"}


def test_yaml_comments_are_stripped_from_the_logged_spec_text_and_values_kept():
    from senca_platform._redact import redact_text

    text = ("# deploy token ghp_SECRET1\n"
            "name: c   # password: SECRET2\n"
            "note: \"a # inside quotes\"\n"
            "other: 'q#r'  # SECRET3\n"
            "block: |\n"
            "  kept # in a block scalar\n"
            "  # also block content\n"
            "#SECRET4\n"
            "tracking:\n"
            "  uri: http://u:p@ss@h:5000  #SECRET5 http://x:SECRET6@y\n"
            "  api_key: SECRET7\n"
            "url: http://h/#/experiments\n")
    out = redact_text(text)
    assert "SECRET" not in out and "p@ss" not in out, out
    assert out.count("\n") == text.count("\n")  # line numbers still match the file
    data, original = yaml.safe_load(out), yaml.safe_load(text)
    assert {k: data[k] for k in ("name", "note", "other", "block", "url")} == \
        {k: original[k] for k in ("name", "note", "other", "block", "url")}
    assert data["tracking"] == {"uri": "http://***@h:5000", "api_key": "***"}
    # YAML that does not scan still loses every comment
    assert "SECRET" not in redact_text("a: [1, 2\n# SECRET8\nb: x # SECRET9\n")


# --------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_writes_follow_the_umask_and_private_files_stay_0600(tmp_path, mask):
    import numpy as np

    from jobs._files import atomic_write_json, atomic_write_with

    old = os.umask(mask)
    try:
        a = atomic_write_json(tmp_path / "a.json", {"x": 1})
        b = atomic_write_with(tmp_path / "b.npy", lambda tmp: np.save(open(tmp, "wb"), np.arange(3)))
        c = atomic_write_json(tmp_path / "creds.json", {"password": "x"}, private=True)
    finally:
        os.umask(old)
    assert oct(a.stat().st_mode & 0o777) == oct(0o666 & ~mask)
    assert oct(b.stat().st_mode & 0o777) == oct(0o666 & ~mask)
    assert oct(c.stat().st_mode & 0o777) == oct(0o600)


# --------------------------------------------------------------------------------------------- the output folder
#: hidden files of a user, shaped like the temp files of earlier versions (``.<x>.<8 chars>[.ext]``)
USER_FILES = [".bashrc.original", ".env.backup01", ".notes.20240101.txt", "tables/.mytable.draft001.csv",
              "slides/.P1_S1.k1ll3d00.h5ad", ".cohort_summary.json.k1ll3d00.tmp", "cache/.infer.json.abcdefgh.tmp",
              "notes.md", "cache/mine.json"]


def _user_folder(root) -> dict:
    for i, rel in enumerate(USER_FILES):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"the user's own file {i}\n")
    return {rel: (root / rel).read_bytes() for rel in USER_FILES}


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec_file(tmp_path):
    """A valid one-slide spec tracked at a closed port: a run that gets past the output folder stops at the
    tracking probe (exit 3, no Ray), so what it did to the folder is all it did."""
    corpus = REPO / "tests" / "bad_inputs" / "legacy"
    spec = tmp_path / "cohort.yaml"
    spec.write_text(f"name: c\npatients:\n  - id: P1\n    slides:\n      - id: S1\n        reader: legacy_st\n"
                    f"        counts: {corpus / 'S1.tsv.gz'}\n        spots: {corpus / 'S1_selection.tsv'}\n"
                    f"tracking:\n  uri: http://127.0.0.1:{_closed_port()}\n")
    return spec


def _run_cli(*args: str, cwd=None):
    from typer.testing import CliRunner

    from senca_platform.cli import app

    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        res = CliRunner().invoke(app, ["run", *args])
    finally:
        os.chdir(here)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def test_temp_names_are_ours_only(tmp_path):
    from jobs._files import atomic_write_with, is_temp_of

    seen = []
    atomic_write_with(tmp_path / "P1_S1.h5ad", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert is_temp_of(seen[0]) and is_temp_of(seen[0], tmp_path / "P1_S1.h5ad") and "senca-tmp-" in seen[0]
    assert not is_temp_of(seen[0], tmp_path / "P1_S2.h5ad")
    for rel in USER_FILES:
        assert not is_temp_of(rel.rsplit("/", 1)[-1]), rel


@pytest.mark.timeout(120)
def test_run_refuses_a_non_empty_folder_no_run_wrote_and_deletes_nothing(tmp_path):
    out = tmp_path / "mine"
    before = _user_folder(out)
    code, output = _run_cli(str(_spec_file(tmp_path)), "--out", str(out))
    assert code == 3, output
    [line] = [x for x in output.splitlines() if x.strip()]
    assert line.startswith("error: output folder") and "is not empty" in line and "--force-out" in line, line
    assert {rel: (out / rel).read_bytes() for rel in USER_FILES} == before
    assert sorted(p.name for p in out.iterdir()) == sorted({r.split("/")[0] for r in USER_FILES})  # nothing added


@pytest.mark.timeout(120)
def test_force_out_writes_into_the_folder_and_still_deletes_nothing_of_the_users(tmp_path):
    from jobs._files import OUTPUT_MARKER
    from jobs.pipeline import partial_files

    out = tmp_path / "mine"
    before = _user_folder(out)
    code, output = _run_cli(str(_spec_file(tmp_path)), "--out", str(out), "--force-out")
    assert code == 3 and "cannot reach the MLflow tracking server" in output, output  # past the folder
    assert {rel: (out / rel).read_bytes() for rel in USER_FILES} == before
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["forced"] is True and marker["n_entries_before"] == 8 and "notes.md" in marker["entries_before"]
    # the folder is now a run's: a rerun needs no flag; a temp file of its own (and only that) is swept
    ours = [out / ".cohort_summary.senca-tmp-k1ll3d00.json", out / "slides" / ".P1_S1.senca-tmp-abc_1234.h5ad"]
    for p in ours:
        p.write_bytes(b"half a file")
    assert partial_files(out) == sorted(ours)
    code, output = _run_cli(str(_spec_file(tmp_path)), "--out", str(out))
    assert code == 3 and "removed 2 partial file(s)" in output, output
    assert not any(p.exists() for p in ours)
    assert {rel: (out / rel).read_bytes() for rel in USER_FILES} == before


def test_no_clean_up_without_the_marker(tmp_path):
    from jobs.pipeline import partial_files, sweep_partial_files

    planted = [tmp_path / "cache" / ".infer.senca-tmp-abcdefgh.json", tmp_path / "cache" / ".infer.json.abcdefgh.tmp",
               tmp_path / ".cohort_summary.json.k1ll3d00.tmp"]  # ours, and two of the shape earlier versions used
    planted[0].parent.mkdir()
    for p in planted:
        p.write_bytes(b"x")
    assert partial_files(tmp_path) == [] and sweep_partial_files(tmp_path) == []
    assert all(p.exists() for p in planted)


@pytest.mark.timeout(120)
def test_empty_out_a_file_and_an_unwritable_folder_are_refused_in_one_line(tmp_path):
    spec = _spec_file(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    code, output = _run_cli(str(spec), "--out", "", cwd=cwd)
    assert code == 3 and output.strip() == "error: --out is empty: name the output folder (e.g. --out results); " \
                                           "'.' for the current folder must be written out", output
    assert list(cwd.iterdir()) == []  # not the current directory
    afile = tmp_path / "results.txt"
    afile.write_text("mine")
    code, output = _run_cli(str(spec), "--out", str(afile))
    assert code == 3 and "exists and is not a folder" in output and len(output.strip().splitlines()) == 1, output
    assert afile.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        code, output = _run_cli(str(spec), "--out", str(ro / "new"))
        assert code == 3 and "cannot create or read the output folder" in output, output


def test_an_output_folder_of_an_earlier_version_is_taken_back(tmp_path):
    from jobs._files import is_output_dir
    from senca_platform.outdir import OutputDirError, claim_output_dir

    out = tmp_path / "results"
    (out / "tracking").mkdir(parents=True)
    (out / "tracking" / "run.json").write_text(json.dumps({"format": 1, "output_dir": str(tmp_path / "other")}))
    with pytest.raises(OutputDirError):
        claim_output_dir(out)
    (out / "tracking" / "run.json").write_text(json.dumps({"format": 1, "output_dir": str(out)}))
    assert claim_output_dir(out) == out and is_output_dir(out)


def test_model_files_follow_the_umask(tmp_path):
    from jobs._files import is_temp_of
    from senca_core.model import SencaConfig, SencaModel, load_model, save_model

    old = os.umask(0o022)
    try:
        path = save_model(SencaModel(SencaConfig(), n_expr=5, n_hist=0), tmp_path / "ckpt" / "model.pt")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # was 0600 (mkstemp), unlike every other result
    assert load_model(path).n_expr == 5 and sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    assert is_temp_of(".model.senca-tmp-abc_1234.pt", path)  # its temp is named as a run's clean-up knows
