"""The registry commands of ``senca-platform``: ``models …`` (list, show, promote, attach-state), ``runs …``
(list, show) and ``predict`` (a registered model applied to new slides). Mounted by ``cli_cluster.register``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._console import stdout_to_stderr
from .cli_common import TrackingUri, _echo_json, _fmt, _guard, _progress, _table, _ts

models_app = typer.Typer(help="The MLflow model registry: list, show, promote (alias), attach-state.",
                         no_args_is_help=True, add_completion=False)
runs_app = typer.Typer(help="Cohort (and prediction) runs in MLflow: list, show.", no_args_is_help=True,
                       add_completion=False)


# ===================================================================================================== models
def _uri(tracking_uri: Optional[str]) -> str:
    from .registry import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri)


@models_app.command("list")
def models_list(tracking_uri: TrackingUri = None,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered models: versions, latest, aliases, the cohort of the latest version."""
    from .registry import list_models

    with _guard():
        rows = list_models(_uri(tracking_uri))
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            typer.echo("no registered models")
            return
        _table([["NAME", "VERSIONS", "LATEST", "ALIASES", "COHORT", "UPDATED"]] +
               [[r["name"], str(r["n_versions"]), _fmt(r["latest_version"]),
                 ",".join(f"{a}->v{v}" for a, v in r["aliases"].items()) or "-", r["cohort"] or "-",
                 _ts(r["updated"])] for r in rows])


@models_app.command("show")
def models_show(name: str = typer.Argument(...),
                version: Optional[int] = typer.Option(None, "--version", "-v", help="a version number"),
                alias: Optional[str] = typer.Option(None, "--alias", help="an alias (e.g. champion)"),
                tracking_uri: TrackingUri = None,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """One model version (default: the latest): metrics, params, the cohort it was trained on, the per-patient
    summary table, its aliases, model state and prediction runs."""
    from .registry import show_model

    with _guard():
        info = show_model(_uri(tracking_uri), name, version=version, alias=alias)
        if as_json:
            _echo_json(info)
            return
        typer.echo(f"{info['name']} version {info['version']}"
                   + (f"  aliases: {', '.join(info['aliases'])}" if info["aliases"] else "")
                   + f"  ({info['status']}, registered {_ts(info['created'])})")
        typer.echo(f"  uri:        {info['uri']}")
        typer.echo(f"  source:     {info['source']}")
        typer.echo(f"  run:        {info['run_id']} ({info.get('run_name', '-')}, {info.get('run_status', '-')})")
        if info.get("ui"):
            typer.echo(f"  ui:         {info['ui']}")
        c = info.get("cohort") or {}
        if c:
            typer.echo(f"  cohort:     {c.get('name')}: {c.get('n_patients')} patient(s), {c.get('n_slides')} "
                       f"slide(s) [{', '.join(c.get('slides') or [])}], status {c.get('status') or '-'}")
            if c.get("spec"):
                typer.echo(f"  spec:       {c['spec']}")
        for key, link in (info.get("summary") or {}).items():
            if not key.startswith("runs:/"):
                typer.echo(f"  per-patient summary ({key}): {link}")
        typer.echo(f"  model state: {info.get('model_state') or 'not attached (predict builds it on first use)'}")
        if info["metrics"]:
            typer.echo("  metrics:")
            for k, v in info["metrics"].items():
                typer.echo(f"    {k} = {_fmt(v)}")
        if info["params"]:
            typer.echo("  params:")
            for k, v in info["params"].items():
                typer.echo(f"    {k} = {v}")
        for p in info.get("predict_runs") or []:
            typer.echo(f"  predict run: {p['run_id']} ({p['name']}, {p['status']})")


@models_app.command("promote")
def models_promote(name: str = typer.Argument(...), version: int = typer.Argument(...),
                   alias: str = typer.Option("champion", "--alias", help="the alias to point at VERSION"),
                   tracking_uri: TrackingUri = None) -> None:
    """Point an alias (default champion) at a version: `predict --model models:/NAME@ALIAS` then uses it."""
    from .registry import promote_model

    with _guard():
        r = promote_model(_uri(tracking_uri), name, version, alias)
        prev = f" (was version {r['previous']})" if r["previous"] not in (None, r["version"]) else ""
        typer.echo(f"{r['name']}@{r['alias']} -> version {r['version']}{prev}")


@models_app.command("attach-state")
def models_attach_state(name: str = typer.Argument(...),
                        version: Optional[int] = typer.Option(None, "--version", "-v"),
                        alias: Optional[str] = typer.Option(None, "--alias"),
                        output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="the training run's "
                                                                  "output directory (default: its param)"),
                        tracking_uri: TrackingUri = None
                        ) -> None:
    """Log a model version's preprocessing state (gene panel, PCA basis) and region model from its training
    run's output directory to the run's model_state/ (predict needs it; submitted jobs attach it themselves)."""
    from .model_state import attach_model_state
    from .registry import ModelRef, client, get_version

    with _guard():
        uri = _uri(tracking_uri)
        mv = get_version(client(uri), uri, ModelRef(name, version=str(version) if version else None, alias=alias))
        m = attach_model_state(uri, mv.run_id, output_dir, model_name=mv.name, model_version=mv.version,
                               echo=typer.echo)
        typer.echo(json.dumps({"reproduced": m["reproduced"]}))


# ===================================================================================================== runs
@runs_app.command("list")
def runs_list(tracking_uri: TrackingUri = None,
              experiment: Optional[str] = typer.Option(None, "--experiment", "-e"),
              kind: str = typer.Option("cohort", "--kind", help="cohort, predict or all"),
              limit: int = typer.Option(50, "--limit"),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Cohort runs (MLflow parent runs), newest first; --kind predict for prediction runs."""
    from .registry import list_runs

    with _guard():
        rows = list_runs(_uri(tracking_uri), experiment=experiment, kind=kind, max_results=limit)
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            typer.echo("no runs")
            return
        _table([["RUN", "KIND", "COHORT", "STATUS", "STARTED", "MEAN_ARI", "SLIDES OK/FAILED", "MODEL"]] +
               [[r["run_id"], r["kind"], r["cohort"] or "-", r["senca_status"] or r["status"], _ts(r["start_time"]),
                 _fmt(r["mean_ari"]), f"{_fmt(r['n_slides_ok'] and int(r['n_slides_ok']))}/"
                 f"{_fmt(r['n_slides_failed'] if r['n_slides_failed'] is None else int(r['n_slides_failed']))}",
                 r["model"] or "-"] for r in rows])


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(...),
              tracking_uri: TrackingUri = None,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """A run: status, per-slide errors, metrics, params, child runs (stages, trials), artifacts, model versions."""
    from .registry import show_run

    with _guard():
        info = show_run(_uri(tracking_uri), run_id)
        if as_json:
            _echo_json(info)
            return
        typer.echo(f"run {info['run_id']} ({info['name']}): {info['status']}, {_ts(info['start_time'])} -> "
                   f"{_ts(info['end_time'])}")
        typer.echo(f"  artifacts: {info['artifact_uri']}  [{', '.join(info['artifacts'])}]")
        for k, v in info["tags"].items():
            if k.startswith("senca."):
                typer.echo(f"  {k}: {v}")
        for mv in info["model_versions"]:
            typer.echo(f"  model: {mv['name']} version {mv['version']} {mv['aliases'] or ''}")
        for ch in info["children"]:
            typer.echo(f"  child: {ch['name']} {ch['run_id']} {ch['status']}")
        for k, v in info["metrics"].items():
            typer.echo(f"  metric {k} = {_fmt(v)}")
        for k, v in info["params"].items():
            typer.echo(f"  param {k} = {v}")


# ===================================================================================================== predict
def predict_cmd(
    slides: Path = typer.Argument(..., help="slides.yaml: `patients:` as in a cohort spec (a cohort.yaml works "
                                  "too: only its patients are used)", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="models:/NAME@ALIAS or models:/NAME/VERSION"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="output directory (default: the slides file's "
                                      "output_dir if set, else predict_out/ next to it); a non-empty folder that "
                                      "no run wrote is refused (see --force-out)"),
    force_out: bool = typer.Option(False, "--force-out", help="write into a non-empty output folder that no run "
                                   "wrote (nothing in it is deleted; files named like the outputs are overwritten)"),
    tracking_uri: TrackingUri = None,
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment of the prediction run "
                                             "(default: the training run's)"),
    no_track: bool = typer.Option(False, "--no-track", help="do not log a prediction run"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Apply a registered model to new slides (no training); see PREDICT_HELP."""
    from .predict import predict_cohort

    with _guard():
        with stdout_to_stderr(as_json):
            result = predict_cohort(model, slides, tracking_uri=_uri(tracking_uri), output_dir=out,
                                    experiment=experiment, track=not no_track, echo=_progress,
                                    force_out=force_out)
        if as_json:
            _echo_json(result.summary)
        else:
            _table([["patient", "slide", "spots", "regions", "ARI", "NMI", "status"]] +
                   [[s["patient"], s["slide"], str(s["n_spots"]), str(s["n_regions"]), _fmt(s["ari"]),
                     _fmt(s["nmi"]), s["status"] if s["status"] == "ok" else f"FAILED: {s['error']}"]
                    for s in result.summary["slides"]])
            m = result.summary["model"]
            typer.echo(f"model: {m['name']} version {m['version']} ({m['uri']}); "
                       f"summary: {result.summary_path}" + (f"; MLflow run {result.summary['mlflow_run_id']}"
                                                            if result.summary["mlflow_run_id"] else ""))
    raise typer.Exit(result.exit_code)


#: the help of ``predict`` (mounted by ``cli_cluster.register``)
PREDICT_HELP = (
    "Apply a registered model to new slides (no training): the slides are preprocessed with the training "
    "cohort's gene panel and PCA basis and assigned to its regions (the cohort's fitted region model), then "
    "summaries, h5ad, region maps and tables as `run` writes them; logged as an MLflow run linked to the model "
    "version. A slide of the training cohort gets its training regions back.")


__all__ = ["PREDICT_HELP", "models_app", "predict_cmd", "runs_app"]
