"""
The layers, checked: packages import one another one way, and the pure
packages import neither Twisted nor OpenSSL.

The packages of C{gateway} are layers, listed in L{LAYERS} from the bottom
up: a module may import from its own package and from the packages below
it.  A new import that points up fails here, naming both modules: it
belongs in the lower package, or the code belongs in the higher one.
L{KNOWN_UPWARD} lists the imports that still point up, each with why; it
may only shrink (a listed import that is gone fails too, so the list stays
true).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway
from tests.helpers import frameworksImportedBy
from tests.test_imports import importGraph

PACKAGE = Path(gateway.__file__).parent

#: The packages, from the bottom layer up.
LAYERS = [
    "wire",
    "core",
    "config",
    "rules",
    "fast",
    "tls",
    "connection",
    "protocols",
    "acme",
    "cluster",
    "run",
    "cli",
]

#: Sans-IO packages: no event loop, no TLS library, anywhere in their source.
PURE = ["wire", "core", "rules"]

#: Imports that still point up a layer, each with why.  Empty: the
#: connection core is given its protocol strategy (by the service, from
#: L{gateway.protocols.table}) through the interfaces of
#: L{gateway.connection.strategy} and L{gateway.connection.hooks}.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def upwardImports() -> set[tuple[str, str]]:
    """
    Every import, anywhere in a module's source, of a module in a higher
    layer.
    """
    found = set()
    for module, imported in importGraph().items():
        low = _layer(module)
        for target in imported:
            high = _layer(target)
            if low is not None and high is not None and high > low:
                found.add((module, target))
    return found


def test_everyPackageIsALayer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_importsPointDown() -> None:
    new = upwardImports() - KNOWN_UPWARD
    assert not new, "imports that point up a layer: " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(new)
    )


def test_theKnownUpwardImportsAreStillThere() -> None:
    gone = KNOWN_UPWARD - upwardImports()
    assert not gone, "remove from KNOWN_UPWARD: " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(gone)
    )


def _frameworkImports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return [n for n in names if n.partition(".")[0] in ("twisted", "OpenSSL")]


@pytest.mark.parametrize("package", PURE)
def test_purePackageSourceImportsNeitherTwistedNorOpenSSL(package: str) -> None:
    """
    Checked in the source, function-level imports included: an import
    hidden in a function still ties the package to the framework.
    """
    found = {
        str(path.relative_to(PACKAGE)): _frameworkImports(path)
        for path in sorted((PACKAGE / package).rglob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_theSourceCheckSeesFunctionLevelImports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from twisted.internet import task\n")
    assert _frameworkImports(module) == ["twisted.internet"]


#: Modules whose import must load no framework, checked in a fresh
#: interpreter: the pure packages, and the pure modules of others.
PURE_IMPORTS = [
    *(f"gateway.{package}" for package in PURE),
    *(
        f"gateway.{package}.{path.stem}"
        for package in PURE
        for path in sorted((PACKAGE / package).glob("*.py"))
        if path.stem != "__init__"
    ),
    "gateway.config",
    "gateway.fast.portable",
    "gateway.connection.strategy",
    "gateway.connection.hooks",
    "gateway.protocols.tls",
]


@pytest.mark.parametrize("module", PURE_IMPORTS)
def test_pureModuleImportsNeitherTwistedNorOpenSSL(module: str) -> None:
    assert frameworksImportedBy(module) == []


def test_thePackageImportsLazily() -> None:
    """
    C{import gateway} (for C{load_config}, say) loads no framework either:
    L{gateway.GatewayService} is imported when it is first used.
    """
    assert frameworksImportedBy("gateway") == []
