"""
The gateway's modules import one another one way only: no cycle.

A cycle (config -> contexts -> tlspolicy -> config was one) means neither
module can be understood, tested or imported without the other, and it
hides in function-level imports, so the graph is built from the source of
every module: every C{import} and C{from ... import} anywhere in it, in
functions and C{TYPE_CHECKING} blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent


def _moduleName(path: Path, folder: Path) -> str:
    parts = ["gateway", *path.relative_to(folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def importGraph(folder: Path = PACKAGE) -> dict[str, set[str]]:
    """
    The modules of the package in C{folder}, each with the modules of the
    package it imports anywhere in its source.
    """
    modules = {_moduleName(path, folder): path for path in folder.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")
                    if path.stem != "__init__":
                        package.pop()
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                imported.add(base)
                # from gateway import config: the submodule config
                imported.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def findCycle(graph: dict[str, set[str]]) -> list[str] | None:
    """
    One cycle of C{graph}, as the modules along it with the first repeated
    at the end, or L{None} if it has none.
    """
    done: set[str] = set()
    path: list[str] = []
    onPath: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        onPath.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor in onPath:
                return [*path[path.index(successor) :], successor]
            if successor not in done:
                found = visit(successor)
                if found is not None:
                    return found
        path.pop()
        onPath.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node)
            if found is not None:
                return found
    return None


def test_theGatewaysModulesImportOneAnotherWithoutACycle() -> None:
    cycle = findCycle(importGraph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_theGraphSeesFunctionLevelImports() -> None:
    """
    The graph is the one the check above needs: it has the function-level
    imports (L{gateway.cli.main} imports L{gateway.run.loading} inside C{_load}).
    """
    graph = importGraph()
    assert "gateway.run.loading" in graph["gateway.cli.main"]
    assert "gateway.config" in graph["gateway.run.loading"]
    assert "gateway.tls.contexts" not in graph["gateway.config"]


def test_aCycleIsFoundAndNamed(tmp_path: Path) -> None:
    """
    The check fails on the cycle this project once had, however deep in a
    function the import that closes it sits.
    """
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "__init__.py").write_text("")
    (tmp_path / "config.py").write_text(
        "def load():\n    from gateway.tls.contexts import build\n"
    )
    (tmp_path / "tls" / "contexts.py").write_text("from . import policy\n")
    (tmp_path / "tls" / "policy.py").write_text("from gateway.config import Problem\n")
    (tmp_path / "units.py").write_text("import os\n")
    assert findCycle(importGraph(tmp_path)) == [
        "gateway.config",
        "gateway.tls.contexts",
        "gateway.tls.policy",
        "gateway.config",
    ]


def test_noCycleIsFoundWhereThereIsNone() -> None:
    assert findCycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_everyPackageIsInstalled() -> None:
    """
    C{setup.cfg} lists its packages by name (C{twisted.plugins} must be
    named, so C{find:} is not used): a package missing there is missing
    from every installed gateway, whose imports then fail.
    """
    import configparser

    setup = configparser.ConfigParser()
    setup.read(PACKAGE.parent / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = {
        ".".join(("gateway", *init.parent.relative_to(PACKAGE).parts))
        for init in PACKAGE.rglob("__init__.py")
    }
    assert found - listed == set()
