"""
The shape of L{gateway.config}: a face that re-exports every name the
rest of the code imports from it, modules that each do one thing, and
Twisted read by one of them only, while a file is loaded.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import gateway
import gateway.config
from tests.helpers import frameworksImportedBy
from tests.test_layering import _frameworkImports

PACKAGE = Path(gateway.config.__file__).parent
ROOT = Path(gateway.__file__).parent.parent

#: The modules of the package, the face included.
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py"))


def _importsFromTheFace(path: Path) -> set[str]:
    """
    The names C{path} imports with C{from gateway.config import ...}.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "gateway.config"
        for alias in node.names
    }


def test_everyNameImportedFromTheFaceIsThere() -> None:
    """
    Each name that C{gateway}, the tests, the examples and the benchmarks
    import from C{gateway.config} is an attribute of it: the split kept
    every one of those imports working.
    """
    wanted: dict[str, set[str]] = {}
    for folder in ("gateway", "tests", "benchmarks", "docs/examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in _importsFromTheFace(path):
                if name not in MODULES:  # from gateway.config import overlay
                    wanted.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert "ListenerConfig" in wanted  # the scan saw the code base
    missing = {
        n: sorted(p) for n, p in wanted.items() if not hasattr(gateway.config, n)
    }
    assert missing == {}


def test_thePublicNamesAreListed() -> None:
    """
    C{__all__} names what the face exports, and each is there.
    """
    assert sorted(gateway.config.__all__) == sorted(
        name
        for name in vars(gateway.config)
        if not name.startswith("_") and name not in ("annotations", *MODULES)
    )


def test_noPrivateNameIsImportedFromTheFace() -> None:
    """
    Private helpers are imported from the module that defines them, so
    that the face lists only the public names.
    """
    found = {
        str(path.relative_to(ROOT)): sorted(
            n for n in _importsFromTheFace(path) if n.startswith("_")
        )
        for folder in ("gateway", "tests", "benchmarks", "docs/examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_onlyTheEndpointModuleReadsTwisted() -> None:
    """
    Endpoint strings are the one part of a configuration that Twisted has
    to read; no module of the package imports OpenSSL.
    """
    found = {
        path.stem: sorted(set(_frameworkImports(path)))
        for path in sorted(PACKAGE.glob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {
        "endpoints": [
            "twisted.internet.endpoints",
            "twisted.internet.interfaces",
            "twisted.internet.protocol",
            "twisted.internet.testing",
        ]
    }


@pytest.mark.parametrize("module", MODULES)
def test_importingAModuleLoadsNoFramework(module: str) -> None:
    """
    Each module imports without Twisted or OpenSSL: the endpoint module
    imports Twisted inside the functions that run when a file is loaded.
    """
    name = "gateway.config" if module == "__init__" else f"gateway.config.{module}"
    importlib.import_module(name)
    assert frameworksImportedBy(name) == []


def test_loadingAFileReadsEndpointsWithTwisted() -> None:
    """
    The other half of the rule above: a bad endpoint string is found by
    Twisted's own parser when a file is loaded, so the lazy import does
    run.
    """
    text = (
        "[listener:web]\nlisten = tcp:8443:backlog=many\nupstream = app\n"
        "[upstream:app]\nservers = 127.0.0.1:9000\n"
    )
    with pytest.raises(gateway.config.ConfigError) as caught:
        gateway.config.parseConfigText(text, "gw.ini")
    [problem] = caught.value.problems
    assert (problem.line, problem.key) == (2, "listen")
    assert "is not a Twisted server endpoint" in problem.message
