"""A new local MLflow store (a ``sqlite:`` file) copied from an empty, migrated one instead of built by migrations.

MLflow builds a new sqlite store by creating its first schema and running every migration since: 2.2-2.4 s of CPU
on the 2-core machine (measured, MLflow 3.17), paid by every run into a new output directory at its start, beside
Ray's own start and the workers' imports. That work depends only on MLflow's version. So the first new store on a
machine is also kept, empty and without its Default experiment, in the user's cache folder
(``$XDG_CACHE_HOME/senca-platform``, else ``~/.cache/senca-platform``), and later new stores are copies of it
(milliseconds). MLflow opening a copy finds every table at its current schema revision (it checks the revision, as
on any store) and adds the Default experiment itself, with this process's artifact root and the current time: the
same store it would have built. A cache that cannot be written, or any other surprise, leaves the store to MLflow.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

#: the store MLflow makes for a new sqlite file has experiment 0 ("Default"); the cached copy has none
_DEFAULT_EXPERIMENT = "0"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "senca-platform"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute or relative path); None for anything else (a server,
    ``sqlite://`` in memory, a URI with query options)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri:
        return None
    path = uri[len(prefix):]
    return Path(path) if path and path != ":memory:" else None


def _template(mlflow_version: str) -> Path:
    return cache_dir() / f"mlflow-{mlflow_version}-empty.db"


def _build_template(target: Path) -> None:
    """An empty store at ``target`` made by MLflow itself, less its Default experiment (written atomically)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        db = Path(tmp) / "store.db"
        store = SqlAlchemyStore(f"sqlite:///{db}", str(Path(tmp) / "artifacts"))
        store.engine.dispose()
        with sqlite3.connect(db) as con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = ?", (_DEFAULT_EXPERIMENT,))
            con.execute("DELETE FROM experiments WHERE experiment_id = ?", (_DEFAULT_EXPERIMENT,))
        con.close()
        os.replace(db, target)


def new_local_store(uri: str) -> bool:
    """Before MLflow first opens ``uri``: when it names a sqlite file that does not exist yet, put a copy of the
    cached empty store there (building the cache first when this MLflow version has none). True when a copy was
    placed; False (nothing done) otherwise, and MLflow then builds the store as usual."""
    path = sqlite_path(uri)
    if path is None or path.exists():
        return False
    try:
        import mlflow

        template = _template(mlflow.__version__)
        if not template.exists():
            _build_template(template)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        shutil.copyfile(template, partial)
        if path.exists():  # created meanwhile by someone else: theirs stands
            partial.unlink()
            return False
        os.replace(partial, path)
        return True
    except Exception:  # noqa: BLE001 - a faster start is never worth a failed run: MLflow builds the store
        for leftover in path.parent.glob(f".{path.name}.{os.getpid()}.part"):
            leftover.unlink(missing_ok=True)
        return False
