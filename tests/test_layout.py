"""The package's shape: no module-level import cycle inside vlm_swap, no source file over 400 lines, and a model
format that stands alone (what a remote-code export ships)."""

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


def _outside_try(tree: ast.AST):
    """The import statements of ``tree`` that are not inside a ``try`` block (at any depth)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Try):
            todo += node.handlers + node.orelse + node.finalbody  # the guarded body itself is skipped
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        todo += list(ast.iter_child_nodes(node))


def test_the_format_imports_only_its_own_flat_siblings():
    """Every import of ``vlm_swap/format`` is of a sibling file (``from .x import y``) or of a library, so the files
    work as they are in an exported model; an installed vlm-swap is reached only inside ``try`` (plug-in kinds)."""
    bad = []
    for path in sorted((PACKAGE / "format").glob("*.py")):
        for node in _outside_try(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level > 1 or not node.module or "." in node.module:
                    bad.append(f"{path.name}:{node.lineno}")
            else:
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                bad += [f"{path.name}:{node.lineno}" for n in names if n and n.split(".")[0] == "vlm_swap"]
    assert bad == []
    assert len(list((PACKAGE / "format").glob("*.py"))) > 5  # the scan sees the format
