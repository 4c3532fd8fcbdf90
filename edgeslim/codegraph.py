"""The edgeslim import graph, read from the source (every import, lazy ones inside functions too).

Two users: the stage cache, whose key for a stage hashes exactly the edgeslim modules the stage's
module imports, transitively (editing ``compress/lowrank.py`` reruns the export that loads low-rank
models; editing the report does not throw away a fine-tune), and the check that the package has no
import cycle (``tests/test_codegraph.py``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "edgeslim"
PACKAGE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def modules(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package at ``root``: dotted name -> source file (a package is its
    ``__init__.py``)."""
    found = {}
    for path in sorted(Path(root).rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(module: str, root: Path = PACKAGE_DIR) -> frozenset[str]:
    """The edgeslim modules ``module`` imports directly, anywhere in its source but under ``if
    TYPE_CHECKING``. ``from a.b import c`` imports the package ``a.b`` and, when ``c`` is a module,
    ``a.b.c``. Read afresh each call: a test or a long-lived process may edit the source."""
    known = modules(root)
    path = known[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base in known:
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    found.discard(module)
    return frozenset(found)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for type hints only,
    which never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def closure(module: str, root: Path = PACKAGE_DIR) -> list[str]:
    """``module`` and every edgeslim module it imports, transitively, sorted."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imports_of(current, root))
    return sorted(seen)


def cycles(root: Path = PACKAGE_DIR) -> list[list[str]]:
    """Groups of modules that import each other (strongly connected components of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    graph = {name: imports_of(name, root) for name in modules(root)}
    for name in graph:
        if name not in index:
            visit(name)
    return groups
