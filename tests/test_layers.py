"""The package diagram, read from the sources: each package imports only those below it, and no two
modules import each other, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# what each package may import of ours (README, "How the data flows")
ALLOWED = {
    "contract": set(),
    "dashboard": {"contract"},
    "device": {"contract", "dashboard"},
    "monitor": {"contract", "dashboard"},
    "build_model": {"contract", "firmware_export"},  # each variant is checked in TFLM (firmware_export.tflm)
    "firmware_export": {"contract"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of ours that the file imports, anywhere in it, as absolute dotted names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import app` names a module
    return {m for m in found if m.split(".")[0] in ALLOWED}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_each_package_imports_only_those_below_it():
    wrong = sorted(f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
                   if dep.split(".")[0] != mod.split(".")[0] and dep.split(".")[0] not in ALLOWED[mod.split(".")[0]])
    assert not wrong, wrong


def test_no_module_imports_itself_back():
    graph = _graph()
    cycles = []

    def visit(node, path, on_path, done):
        on_path.add(node)
        for dep in sorted(graph[node]):
            if dep in on_path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep], on_path, done)
        on_path.discard(node)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], set(), done)
    assert not cycles, cycles
