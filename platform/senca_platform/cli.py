"""``senca-platform``: a thin typed command line over :mod:`senca_platform` (spec, runner, demo).

Exit codes of ``run``: 0 every slide finished (and is tracked); 1 a slide (or a stage) failed, see the summary;
2 the spec is invalid; 3 nothing ran (the tracking server cannot be reached, or the output directory is in use or
cannot be used: ``--out ""``, a file, not writable, or a non-empty folder no run wrote without ``--force-out``);
4 every slide finished but MLflow tracking failed mid-run (results on disk: ``senca-platform sync OUTPUT_DIR``);
130 stopped by SIGINT / SIGTERM (one line; the MLflow run is KILLED; ``--resume`` continues it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from jobs._say import PREFIX

from ._console import stdout_to_stderr
from .cli_common import tracking_uri_option

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

app = typer.Typer(help="SENCA-st cohort platform: cohort.yaml -> Ray Data / Ray Train / Ray Tune -> MLflow.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


#: exit code of a run stopped by SIGINT / SIGTERM (the shell's 128 + SIGINT)
EXIT_INTERRUPTED = 130


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def version_line() -> str:
    """``senca-platform X (python P; ray R, mlflow M, torch T, scanpy S)`` from the installed metadata (no imports)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{d} {of(d)}" for d in ("ray", "mlflow", "torch", "scanpy"))
    return f"senca-platform {of('senca-platform')} (python {platform.python_version()}; {deps})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="print the version (and Ray, MLflow, torch, scanpy's) and exit")) -> None:
    """SENCA-st cohort platform: cohort.yaml -> Ray Data / Ray Train / Ray Tune -> MLflow."""


def _verbosity(quiet: bool, verbose: bool) -> str:
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    return "quiet" if quiet else "verbose" if verbose else "normal"


QUIET = typer.Option(False, "--quiet", "-q", help="print only warnings, errors and the result (the rest: "
                     "OUTPUT/logs/run.log)")
VERBOSE = typer.Option(False, "--verbose", "-v", help="also show Ray's, Tune's, MLflow's and torch's own output "
                       "(by default it goes to OUTPUT/logs/run.log)")


def _run(spec_path: Path, out: Optional[str], fresh: bool, as_json: bool, resume: bool,
         force_out: bool = False, verbosity: str = "normal") -> int:
    import signal

    from .runner import EXIT_NOT_STARTED, INTERRUPTED, RunNotStarted, run_cohort
    from .spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        _err(str(err))
        return 2
    def terminate(signum, frame):  # SIGTERM stops the run the way Ctrl-C does (one line, MLflow run KILLED)
        raise KeyboardInterrupt

    # SIGINT too, explicitly: a process started from a script in the background inherits SIGINT *ignored*, and
    # Python then never raises KeyboardInterrupt, so `kill -INT` would be dropped and the run go on
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, terminate) for sig in stops}
    with stdout_to_stderr(as_json):
        try:
            result = run_cohort(spec, output_dir=out, fresh=fresh, resume=resume, progress=not as_json,
                                spec_path=spec_path, command=True, force_out=force_out, verbosity=verbosity)
        except RunNotStarted as err:  # nothing ran: one line, no traceback
            _err(f"error: {err}")
            return EXIT_NOT_STARTED
        except KeyboardInterrupt:
            for sig in stops:  # a second signal must not interrupt the clean-up line
                signal.signal(sig, signal.SIG_IGN)
            _err(f"stopped: {INTERRUPTED}; continue with: senca-platform run {spec_path} --resume")
            return EXIT_INTERRUPTED
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if as_json:
        typer.echo(json.dumps(result.summary, indent=2))
    elif verbosity == "quiet":
        summary = result.summary
        typer.echo(f"summary: {Path(summary['output_dir']) / 'cohort_summary.json'} ({summary['status']})")
    else:
        _print_table(result.summary)
    return result.exit_code


def _print_table(summary: dict) -> None:
    rows = [("patient", "slide", "spots", "regions", "ARI", "NMI", "status")]
    for s in summary["slides"]:
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        rows.append((s["patient"], s["slide"], str(s["n_spots"]), str(s["n_regions"]), fmt(s["ari"]), fmt(s["nmi"]),
                     s["status"] if s["status"] == "ok" else f"FAILED: {s['error']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    model = summary.get("registered_model") or {}
    if model.get("version") is not None:
        typer.echo(f"model: {model['name']} version {model['version']} (alias {model['alias']})")
    if summary.get("mlflow"):
        typer.echo(f"MLflow run {summary['mlflow']['run_id']}: {summary['mlflow']['ui']}")
    typer.echo(f"summary: {Path(summary['output_dir']) / 'cohort_summary.json'} ({summary['status']})")


@app.command()
def run(
    spec: Path = typer.Argument(..., help="the cohort spec (YAML)", show_default=False),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="output directory (overrides the spec's); a "
                                      "non-empty folder that no run wrote is refused (see --force-out)"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore cached stage outputs, recompute everything"),
    as_json: bool = typer.Option(False, "--json", help="print the cohort summary as JSON on stdout (logs: stderr)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run: cached stages are kept, "
                                                        "training goes on from its last checkpoint, the same "
                                                        "MLflow parent run is continued"),
    force_out: bool = typer.Option(False, "--force-out", help="write into a non-empty output folder that no run "
                                   "wrote (nothing of yours in it is deleted; files named like the run's outputs "
                                   "are overwritten)"),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Run the cohort: preprocess (Ray Data), train (Ray Train) or tune (Ray Tune), infer + summaries, MLflow."""
    raise typer.Exit(_run(spec, out, fresh, as_json, resume, force_out, _verbosity(quiet, verbose)))


#: ``--tracking-uri`` of ``sync`` (cli_common.tracking_uri_option)
SyncTrackingUri = tracking_uri_option("log into this MLflow tracking URI (default: the one the run used)")


@app.command()
def sync(
    output_dir: Path = typer.Argument(..., help="the output directory of a finished `run`", show_default=False),
    tracking_uri: SyncTrackingUri = None,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
) -> None:
    """Log a run's results from its output directory into MLflow (after the tracking server was unreachable, or to
    another server). Idempotent: runs, stages and model versions already there are not logged twice."""
    from .sync import SyncError, sync_output

    try:
        with stdout_to_stderr(as_json):
            res = sync_output(output_dir, tracking_uri, echo=lambda m: _err(f"{PREFIX} {m}"))
    except SyncError as err:
        _err(f"error: {err}")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    model = res.get("model") or {}
    typer.echo(f"{'synced' if res['synced'] else 'already in sync'}: MLflow run {res['run_id']} at "
               f"{res['tracking_uri']}" + (f"; model {model.get('name')} version {model.get('version')}"
                                           if model.get("version") is not None else ""))


@app.command()
def validate(
    spec: Path = typer.Argument(..., help="the cohort spec (YAML)", show_default=False),
    strict: bool = typer.Option(False, "--strict", help="missing input files are errors (default: warnings; "
                                "unreadable data is always an error)"),
) -> None:
    """Check a cohort spec without running it (schema, field and line of each problem; input files)."""
    from .spec import SpecError, load_spec, missing_files, resource_warnings

    try:
        s = load_spec(spec)
    except SpecError as err:
        _err(str(err))
        raise typer.Exit(2)
    issues = missing_files(s)
    # a file that is absent here may exist where the job runs (submit): a warning unless --strict; a file that is
    # here but unreadable, or a cohort the regions cannot be fitted on, fails wherever it runs: always an error
    errors = [i for i in issues if strict or i.kind != "missing"]
    for issue in issues:
        _err(f"{'error' if issue in errors else 'warning'}: {spec}: {issue.field}: {issue.message}")
    for line in resource_warnings(s):  # only warnings: where the job runs may have more
        _err(f"warning: {spec}: {line}")
    n_slides = len(s.slides())
    if errors:
        raise typer.Exit(2)
    typer.echo(f"{spec}: valid ({len(s.patients)} patient(s), {n_slides} slide(s); output {s.output_dir}; "
               f"tuning {'on' if s.tuning.enabled else 'off'})")


@app.command()
def init(
    path: Path = typer.Argument(Path("cohort.yaml"), help="where to write the example spec"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented example cohort spec (HER2ST A1 with its image, B1 and C1 without)."""
    from jobs._files import atomic_write_text

    from .example import example_yaml

    if path.exists() and not force:
        _err(f"{path} exists (use --force to overwrite)")
        raise typer.Exit(1)
    atomic_write_text(path, example_yaml(filename=path.name))
    typer.echo(f"wrote {path}: edit the paths, then `senca-platform validate {path}`")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="directory for the cohort, spec and results"),
    patients: int = typer.Option(4, help="synthetic patients (one slide each)"),
    spots: int = typer.Option(600, help="spots per slide"),
    seed: int = typer.Option(0),
    fresh: bool = typer.Option(False, "--fresh"),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Generate a synthetic cohort (with ground truth) into OUT, write OUT/cohort.yaml and run it."""
    from .demo import write_demo

    verbosity = _verbosity(quiet, verbose)
    spec_path = write_demo(out, n_patients=patients, n_spots=spots, seed=seed)
    if verbosity != "quiet":
        _err(f"demo cohort spec: {spec_path}")
    code = _run(spec_path, None, fresh, as_json, False, verbosity=verbosity)
    if code == 0 and not as_json and verbosity != "quiet":
        typer.echo(f"browse it: mlflow ui --backend-store-uri sqlite:///{(out / 'results' / 'mlflow.db').resolve()}")
    raise typer.Exit(code)


# the cluster / registry commands (submit, jobs, models, runs, predict, job-run) live in cli_cluster.py
from .cli_cluster import register as _register_cluster  # noqa: E402

_register_cluster(app)


def main() -> None:
    """The ``senca-platform`` console script: the app, then a prompt end of the process.

    Once a command has returned, every file is written and closed, every handler registered at exit has run (MLflow's,
    Ray's, torch's) and Ray is shut down; what is left is the interpreter tearing down its modules, which took 1.9 s
    after a one-slide run (docs/BENCHMARKS.md, "The platform against its own science"). So the last handler at exit,
    registered first, flushes the output streams and the logging handlers and ends the process with the command's
    exit code (``os._exit``). Only the console script does this; ``app`` called in-process (tests, notebooks) does not.
    """
    import atexit
    import logging
    import sys

    state = {"code": 0}

    def _end() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: nothing more to say
                pass
        logging.shutdown()
        os._exit(state["code"])

    atexit.register(_end)  # handlers run last-registered first: this one after all others
    try:
        app()
    except SystemExit as err:  # how click ends every command; a message (a str code) is printed before the handlers
        code = err.code
        state["code"] = code if isinstance(code, int) else (0 if code is None else 1)
        raise
    except BaseException:  # an uncaught error: Python prints it, then exits 1
        state["code"] = 1
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
