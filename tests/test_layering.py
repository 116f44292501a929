"""
The layers, checked: the pure core imports neither Twisted nor OpenSSL.

Each module here is imported in a fresh interpreter (this one has long
imported both), so what it pulls in is what any user of it would get.  A
module that grows a Twisted or OpenSSL import has crossed from the pure
core (configuration, parsers, decisions, balancers) into the protocols: it
belongs there, or the import belongs behind a function.
"""

from __future__ import annotations

import pytest

from tests.helpers import frameworksImportedBy

#: Configuration, parsers, decisions and balancers: sans-I/O, testable
#: without an event loop or a TLS library.
PURE = [
    "gateway.accesslog",
    "gateway.alerts",
    "gateway.balancers",
    "gateway.clienthello",
    "gateway.config",
    "gateway.lifecycle",
    "gateway.decision",
    "gateway.ja4",
    "gateway.portable",
    "gateway.postgres",
    "gateway.proxyprotocol",
    "gateway.ratelimit",
    "gateway.routing",
    "gateway.transports",
    "gateway.strategy",
    "gateway.tlsstrategy",
    "gateway.units",
    "gateway.vocabulary",
]


@pytest.mark.parametrize("module", PURE)
def test_pureModuleImportsNeitherTwistedNorOpenSSL(module: str) -> None:
    assert frameworksImportedBy(module) == []


def test_thePackageImportsLazily() -> None:
    """
    C{import gateway} (for C{load_config}, say) loads no framework either:
    L{gateway.GatewayService} is imported when it is first used.
    """
    assert frameworksImportedBy("gateway") == []
