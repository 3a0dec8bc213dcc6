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


#: source files still over :data:`MAX_LINES` (issue 15: shrink this set; a file that is back under the limit must
#: leave it, so the set only ever shrinks)
OVER_LIMIT: set[str] = set()
MAX_LINES = 400


def _sources():
    for folder in ("senca_core", "jobs", "platform/senca_platform"):
        yield from sorted((REPO / folder).rglob("*.py"))


def test_no_source_file_is_over_the_line_limit():
    lines = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _sources()}
    over = {name: n for name, n in lines.items() if n > MAX_LINES and name not in OVER_LIMIT}
    assert over == {}, f"split these files (at most {MAX_LINES} lines): {over}"
    stale = {name: lines.get(name) for name in OVER_LIMIT if lines.get(name, 0) <= MAX_LINES}
    assert stale == {}, f"remove these from OVER_LIMIT (they are within the limit or gone): {stale}"


def _module_name(path):
    rel = path.relative_to(REPO / "platform" if path.is_relative_to(REPO / "platform") else REPO)
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts), parts[-1] == "__init__"


def test_no_import_circle_at_module_level():
    """The imports a module runs when it is imported (its top-level ``import`` statements, not those inside
    functions) form no circle inside ``senca_core``, ``jobs`` and ``senca_platform``."""
    modules = {}
    for path in _sources():
        name, is_pkg = _module_name(path)
        modules[name] = (path, is_pkg)
    graph = {}
    for name, (path, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)  # a package's own __init__ is imported first anyway: not an edge back
        graph[name] = deps
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], f"import circles: {cycles}"
