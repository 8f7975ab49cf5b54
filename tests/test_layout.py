"""The package's shape: no module-level import cycle inside vlm_swap, and no source file over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import vlm_swap

PACKAGE = Path(vlm_swap.__file__).parent
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The vlm_swap modules that ``path`` imports when it is imported (top level, TYPE_CHECKING blocks aside)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for stmt in node.body if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(stmt, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (stmt.level - 1)] if stmt.level else []
                target = ".".join(base + ([stmt.module] if stmt.module else []))
                for alias in stmt.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            elif isinstance(stmt, ast.Import):
                found.update(a.name for a in stmt.names)
    return (found & modules) - {name}


def test_no_module_level_import_cycle():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [name, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    assert graph["vlm_swap.cli.app"] or graph["vlm_swap"]  # the scan sees imports at all


def test_no_source_file_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
