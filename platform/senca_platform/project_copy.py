"""The project copy a submitted job runs (``--code upload``): the source tree without ``.venv``, ``runs``,
``data``, ``.git``, caches and what ``.gitignore`` lists (:data:`PROJECT_EXCLUDES` and a small .gitignore
matcher), and the size of a packaged input."""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path, PurePosixPath

#: excluded from the uploaded project copy (besides what .gitignore lists)
PROJECT_EXCLUDES = [".venv/", "venv/", "runs/", "data/", ".git/", "__pycache__/", "*.pyc", "*.egg-info/",
                    ".pytest_cache/", ".hypothesis/", "build/", "dist/", "mlruns/", "mlartifacts/", "mlflow.db",
                    "/demo_out/", "*.h5ad", ".senca_cohort/", "node_modules/", ".ipynb_checkpoints/"]


def project_root() -> Path | None:
    """The source tree this package runs from (``pyproject.toml`` two levels above ``senca_platform``)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "jobs").is_dir() else None


def _ignore_patterns(root: Path) -> list[str]:
    pats = list(PROJECT_EXCLUDES)
    gi = root / ".gitignore"
    if gi.exists():
        for line in gi.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and not line.startswith("!"):
                pats.append(line)
    return pats


def _ignored(rel: PurePosixPath, is_dir: bool, patterns: list[str]) -> bool:
    """A small .gitignore matcher: ``name``, ``dir/``, ``/anchored``, globs on any path component."""
    s = str(rel)
    for pat in patterns:
        dir_only = pat.endswith("/")
        p = pat.rstrip("/")
        if dir_only and not is_dir:
            continue
        if p.startswith("/"):
            if fnmatch.fnmatch(s, p.lstrip("/")):
                return True
        elif "/" in p:
            if fnmatch.fnmatch(s, p) or fnmatch.fnmatch(s, f"*/{p}"):
                return True
        elif fnmatch.fnmatch(rel.name, p):
            return True
    return False


def copy_project(root: Path, dest: Path) -> int:
    """Copy the project source tree into ``dest`` without the excluded paths; returns the bytes copied."""
    patterns = _ignore_patterns(root)
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        rel_dir = PurePosixPath(d.relative_to(root).as_posix()) if d != root else PurePosixPath("")
        dirnames[:] = sorted(n for n in dirnames
                             if not _ignored(rel_dir / n, True, patterns) and not (d / n).is_symlink())
        for name in sorted(filenames):
            rel = rel_dir / name
            if _ignored(rel, False, patterns) or name in (".gitignore", ".rayignore"):
                continue  # our own filter replaces them (Ray would apply them to the bundle too)
            src = d / name
            if src.is_symlink() or not src.is_file():
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            total += src.stat().st_size
    return total


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
