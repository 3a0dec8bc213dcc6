"""A new local sqlite MLflow store is a copy of a cached, migrated empty one: the same store MLflow would build,
without its ~2 s of migrations; anything unusual leaves the store to MLflow (no Ray)."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest

from senca_platform import tracking_store

pytestmark = [pytest.mark.timeout(120)]


def _schema(db: Path) -> list[str]:
    """The store's tables, indexes and rows (timestamps blanked, lines of each statement sorted: SQLAlchemy
    writes a table's constraints in set order, which varies between processes)."""
    con = sqlite3.connect(db)
    try:
        return sorted("\n".join(sorted(re.sub(r"\b\d{13}\b", "T", s).split("\n"))) for s in con.iterdump())
    finally:
        con.close()


def _default_experiment(db: Path) -> tuple:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT name, artifact_location, lifecycle_stage, creation_time FROM experiments "
                           "WHERE experiment_id = 0").fetchone()
    finally:
        con.close()


def _open(db: Path) -> str:
    """Open the store as a run does (MLflow's client) and create one experiment; returns its id."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{db}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri).create_experiment("cohort")


def test_a_copied_store_is_the_store_mlflow_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    built, copied = tmp_path / "built" / "mlflow.db", tmp_path / "copied" / "mlflow.db"
    built.parent.mkdir()
    assert _open(built) == "1"  # MLflow's own migrations

    assert tracking_store.new_local_store(f"sqlite:///{copied}") is True
    templates = list((tmp_path / "cache" / "senca-platform").glob("mlflow-*-empty.db"))
    assert len(templates) == 1 and not any(templates[0].parent.glob(".build-*")), "one template, no leftovers"
    assert _open(copied) == "1", "the first experiment a run creates gets the same id"
    assert _schema(copied) == _schema(built)
    name, location, stage, created = _default_experiment(copied)
    assert (name, location, stage) == _default_experiment(built)[:3]  # written by MLflow on opening the copy
    assert location == str(tmp_path / "mlruns" / "0"), "MLflow's default artifact root of this process"
    template_created = sqlite3.connect(templates[0]).execute("SELECT count(*) FROM experiments").fetchone()[0]
    assert template_created == 0, "the template itself has no experiment"
    assert created >= _default_experiment(built)[3], "the Default experiment's time is the copy's opening"


def test_the_template_is_built_once_and_an_existing_store_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    assert tracking_store.new_local_store(f"sqlite:///{first}") is True

    def no_second_build(target):
        raise AssertionError("the cached template was built again")

    monkeypatch.setattr(tracking_store, "_build_template", no_second_build)
    assert tracking_store.new_local_store(f"sqlite:///{second}") is True
    _open(second)
    before = second.read_bytes()
    assert tracking_store.new_local_store(f"sqlite:///{second}") is False, "an existing store is never replaced"
    assert second.read_bytes() == before


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite://", "sqlite:///:memory:", "file:///tmp/mlruns",
                                 "sqlite:////tmp/x.db?timeout=5"])
def test_only_a_new_sqlite_file_is_prepared(uri, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert tracking_store.new_local_store(uri) is False
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    db = tmp_path / "out" / "mlflow.db"
    assert tracking_store.new_local_store(f"sqlite:///{db}") is False
    assert not db.exists() and not [p for p in db.parent.glob("*") if p.name.endswith(".part")]
    assert _open(db) == "1", "MLflow builds the store as before"


def test_a_run_tracker_starts_on_a_copied_store(tmp_path, monkeypatch):
    from senca_platform.spec import validate_data
    from senca_platform.tracking import MlflowTracker

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = {"name": "copied", "output_dir": str(tmp_path / "out"),
            "patients": [{"id": "P", "slides": [{"id": "S", "reader": "h5ad", "path": str(tmp_path / "s.h5ad")}]}]}
    spec = validate_data(data, source="test", base_dir=tmp_path)
    tracker = MlflowTracker(spec)
    assert list((tmp_path / "cache" / "senca-platform").glob("mlflow-*-empty.db")), "the store came from the cache"
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "RUNNING" and run.info.experiment_id == tracker.experiment_id
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (tmp_path / "out" / "mlartifacts").resolve().as_uri()
    tracker.fail("test over")
    assert os.path.exists(tmp_path / "out" / "mlflow.db")
