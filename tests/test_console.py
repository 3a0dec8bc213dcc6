"""The console belongs to the tool: its own lines (and a progress display) on the terminal, every engine's output
in ``OUTPUT/logs/run.log``; ``--quiet`` and ``--verbose`` (issue 14)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_SNIPPET = textwrap.dedent("""
    import logging, os, sys
    from senca_platform._console import RunConsole
    logging.basicConfig(level=logging.INFO)
    with RunConsole(sys.argv[1], sys.argv[2]) as con:
        print("engine print noise", flush=True)
        os.write(1, b"native stdout noise\\n")
        os.write(2, b"native stderr noise\\n")
        logging.getLogger("ray.data").warning("ray logger noise")
        con.echo("preprocess: ok in 1.0s")
        con.echo("warning: slide S1: 3 spots on background")
        con.start_stage("train", 4)
        for e in range(4):
            con.epoch("train", {"epoch": e, "loss": 1.0 / (e + 1), "time": 0.0})
        con.end_stage()
    print("after the run", flush=True)
""")


def _console(tmp_path: Path, verbosity: str) -> tuple[subprocess.CompletedProcess, str]:
    logs = tmp_path / verbosity / "logs"
    res = subprocess.run([sys.executable, "-c", _SNIPPET, str(logs), verbosity], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr
    return res, (logs / "run.log").read_text()


def test_normal_shows_the_tools_lines_and_logs_the_engines(tmp_path):
    res, log = _console(tmp_path, "normal")
    shown = res.stdout + res.stderr
    for noise in ("engine print noise", "native stdout noise", "native stderr noise", "ray logger noise"):
        assert noise not in shown
        assert noise in log
    assert "[senca-platform] preprocess: ok in 1.0s" in res.stderr
    assert "[senca-platform] warning: slide S1" in res.stderr
    assert "[senca-platform] train: epoch 4/4, loss 0.2500" in res.stderr  # the last epoch is always shown
    assert "[senca-platform] preprocess: ok" in log  # the tool's lines are in the log too, time-stamped
    assert res.stdout.strip() == "after the run"  # descriptors restored after the run


def test_quiet_shows_only_warnings(tmp_path):
    res, log = _console(tmp_path, "quiet")
    assert "warning: slide S1" in res.stderr
    assert "preprocess: ok" not in res.stderr and "epoch" not in res.stderr
    assert "preprocess: ok" in log and "ray logger noise" in log


def test_verbose_redirects_nothing(tmp_path):
    res, _ = _console(tmp_path, "verbose")
    shown = res.stdout + res.stderr
    for noise in ("engine print noise", "native stdout noise", "native stderr noise", "ray logger noise"):
        assert noise in shown
    assert "[senca-platform] preprocess: ok" in res.stderr


def test_quiet_and_verbose_exclude_each_other():
    from typer.testing import CliRunner

    from senca_platform.cli import app

    res = CliRunner().invoke(app, ["run", "--quiet", "--verbose", "x.yaml"])
    assert res.exit_code == 2 and "exclude each other" in res.output


_TOOL_LINE = re.compile(r"^(\[senca-platform\] |demo cohort spec: |patient\s+slide|P\d+\s+P\d+_S1|model: |MLflow run |"
                        r"summary: |browse it: )")


def test_a_demo_run_prints_only_the_tools_lines(demo_cli_run):
    """The real CLI, default verbosity: every printed line is the tool's; Ray / Tune / MLflow output is in the log;
    no traceback anywhere in a successful run."""
    out, res = demo_cli_run
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    strangers = [ln for ln in lines if not _TOOL_LINE.match(ln)]
    assert not strangers, strangers
    ray_line = next(ln for ln in lines if "] Ray: embedded local (" in ln)
    # 2 x 200 spots train as one task: no worker group, so Ray starts without its dashboard (spec.census)
    assert "dashboard" not in ray_line, ray_line
    assert any(re.search(r"tune: epoch \d+/\d+", ln) for ln in lines)  # training progress
    log = (out / "logs" / "run.log").read_text()
    assert "Trial status" in log or "trial_fn" in log  # Tune's own output went to the log
    assert "[senca-platform] summary:" in log
    assert "Traceback" not in res.stderr + res.stdout


def test_a_run_says_what_its_training_multiplied_in(demo_cli_run):
    """``model.precision`` auto: the trials' worker decides by its hardware; the summary's stage params and the
    stage's console line say what it used."""
    import json

    import torch
    from senca_core.model import precision_name

    out, res = demo_cli_run
    used = precision_name("auto", torch.device("cpu"))  # the embedded Ray's workers run on this machine
    tune = json.loads((out / "cohort_summary.json").read_text())["stages"]["tune"]
    assert tune["precision_used"] == used
    line = next(ln for ln in res.stderr.splitlines() if re.search(r"\] tune: ok( \(cached\))? in", ln))
    assert line.endswith("(matrix products in bfloat16)") == (used == "bfloat16"), line


@pytest.mark.parametrize("verbosity", ["bogus"])
def test_unknown_verbosity_is_refused(verbosity):
    from senca_platform._console import RunConsole

    with pytest.raises(ValueError):
        RunConsole(None, verbosity)
