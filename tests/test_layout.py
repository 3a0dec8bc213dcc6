"""The layout rules of the design card, checked on the source tree itself."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


def _imported_roots(package_dir):
    roots = {}
    for path in package_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                roots.setdefault(name.split(".")[0], []).append(str(path.relative_to(REPO)))
    return roots


def test_imports_point_one_way():
    core = _imported_roots(REPO / "senca_core")
    for banned in ("ray", "mlflow", "jobs", "senca_platform"):
        assert banned not in core, f"senca_core imports {banned} in {core.get(banned)}"
    jobs = _imported_roots(REPO / "jobs")
    assert "senca_platform" not in jobs, f"jobs imports the control plane in {jobs.get('senca_platform')}"


def test_jobs_and_platform_use_only_the_public_senca_core_api():
    """``senca_core`` is a library: its private modules (``senca_core.tl._cluster``) may change; the data and
    control planes import the namespaces (``senca_core.tl``) only."""
    private = []
    for folder in (REPO / "jobs", REPO / "platform" / "senca_platform"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                private += [f"{path.relative_to(REPO)}: {n}" for n in names
                            if n.startswith("senca_core") and any(p.startswith("_") for p in n.split(".")[1:])]
    assert private == []
