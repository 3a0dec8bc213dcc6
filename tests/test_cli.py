"""The ``senca-platform`` command line (no Ray here: the runs themselves are in test_pipeline.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from senca_platform.cli import app
from senca_platform.spec import load_spec

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_console_script_is_installed():
    exe = shutil.which("senca-platform") or str(Path(sys.executable).parent / "senca-platform")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("run", "validate", "init", "demo"):
        assert command in out.stdout


def test_the_console_script_ends_promptly_with_the_commands_code_output_and_exit_handlers(tmp_path):
    """``main`` ends the process with ``os._exit`` after the last exit handler: the command's exit code, its whole
    output (piped) and every handler a command registered at exit (MLflow's, Ray's) survive it."""
    marker = tmp_path / "handler_ran"
    probe = (
        "import atexit, sys\n"
        "from senca_platform import cli\n"
        "@cli.app.command('probe')\n"
        "def probe(code: int = 0):\n"
        f"    atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "    print('x' * 200000)\n"
        "    raise SystemExit(code)\n"
        "sys.argv = ['senca-platform', 'probe', '--code', sys.argv[1]]\n"
        "cli.main()\n"
    )
    for code in (0, 4):
        marker.unlink(missing_ok=True)
        out = subprocess.run([sys.executable, "-c", probe, str(code)], capture_output=True, text=True, timeout=60)
        assert out.returncode == code, out.stderr
        assert out.stdout == "x" * 200000 + "\n"
        assert marker.read_text() == "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    exe = shutil.which("senca-platform") or str(Path(sys.executable).parent / "senca-platform")
    out = subprocess.run([exe, "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and str(bad) in out.stderr, (out.returncode, out.stderr)


def test_version_names_the_tool_and_its_engines():
    from importlib.metadata import version

    result = _invoke("--version")
    assert result.exit_code == 0
    line = result.output.strip()
    assert line.startswith(f"senca-platform {version('senca-platform')} (python ")
    assert f"ray {version('ray')}" in line and f"mlflow {version('mlflow')}" in line and "torch " in line


def test_init_writes_a_commented_example_that_validates(tmp_path):
    path = tmp_path / "cohort.yaml"
    res = _invoke("init", str(path))
    assert res.exit_code == 0, res.output
    text = path.read_text()
    assert text.count("#") > 20 and "reader: legacy_st" in text and "search_space" in text
    spec = load_spec(path)
    assert [s.id for _, s in spec.slides()] == ["A1", "B1", "C1"]
    res = _invoke("validate", str(path))
    # the example's data paths do not exist here: warnings, still valid
    assert res.exit_code == 0, res.output
    assert "valid (3 patient(s), 3 slide(s)" in res.stdout
    assert "warning:" in res.stderr and "patients[0].slides[0].counts" in res.stderr
    res = _invoke("validate", "--strict", str(path))
    assert res.exit_code == 2


def test_init_does_not_overwrite_without_force(tmp_path):
    path = tmp_path / "cohort.yaml"
    path.write_text("keep me")
    res = _invoke("init", str(path))
    assert res.exit_code == 1 and path.read_text() == "keep me"
    assert _invoke("init", "--force", str(path)).exit_code == 0
    assert path.read_text() != "keep me"


def test_validate_reports_field_and_line(tmp_path):
    path = tmp_path / "cohort.yaml"
    _invoke("init", str(path))
    text = path.read_text().replace("  n_pca: 30", "  n_pcs: 30")
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "n_pcs" in l)
    res = _invoke("validate", str(path))
    assert res.exit_code == 2
    assert f"{path}:{line}: preprocess.n_pcs: unknown field" in res.stderr


def test_run_refuses_an_invalid_spec_before_starting_anything(tmp_path):
    path = tmp_path / "cohort.yaml"
    path.write_text("name: x\npatients: []\n")
    res = _invoke("run", "--json", str(path))
    assert res.exit_code == 2
    assert ":2: patients:" in res.stderr
    assert not (tmp_path / "senca_out").exists()


def test_validate_with_real_files_is_clean(tmp_path, her2st_root):
    from senca_platform.example import example_yaml

    path = tmp_path / "cohort.yaml"
    path.write_text(example_yaml(root=str(her2st_root)))
    res = _invoke("validate", "--strict", str(path))
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr


def test_job_run_with_an_unreachable_tracking_server_is_one_line_and_exit_3(tmp_path):
    """What a cluster job sees when its MLflow server is down: nothing runs, one line naming the URI, exit 3."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    spec = tmp_path / "cohort.yaml"
    assert runner.invoke(app, ["init", str(spec)]).exit_code == 0
    spec.write_text(spec.read_text().replace("tracking:", f"tracking:\n  uri: http://127.0.0.1:{port}", 1))
    res = runner.invoke(app, ["job-run", str(spec)])
    assert res.exit_code == 3, res.output
    assert f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in res.output
    assert "Traceback" not in res.output


def test_resume_with_an_edited_spec_is_refused_naming_the_settings(tmp_path):
    """`--resume` continues the interrupted computation: with a spec edited since, it is refused in one line (exit
    3, nothing started) naming what changed; the same spec is not refused by that check."""
    from senca_platform.spec import load_spec
    from senca_platform.sync import Journal

    path = tmp_path / "cohort.yaml"
    assert _invoke("init", str(path)).exit_code == 0
    out = (tmp_path / "results").resolve()
    Journal(out).start(load_spec(path), spec_path=path, tracker=None)  # what the interrupted run recorded
    assert Journal(out).spec_changes(load_spec(path)) == []
    text = path.read_text()
    edited = text.replace("  epochs: 200 ", "  epochs: 7 ", 1)
    assert edited != text
    path.write_text(edited)
    assert Journal(out).spec_changes(load_spec(path)) == ["training.epochs"]
    res = _invoke("run", str(path), "--resume", "--out", str(out))
    assert res.exit_code == 3, res.output
    assert "--resume: the spec differs from the interrupted run's in training.epochs" in res.stderr
    assert "Traceback" not in res.output and not (out / "ray").exists()
