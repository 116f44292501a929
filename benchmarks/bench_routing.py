"""
The router over a table of 1,000 routes: one lookup per connection.

The table mixes the tiers as a large deployment might: 700 exact names,
200 wildcards (C{*.} and C{.}), 90 regexes and a default, plus ten ALPN
routes on a second table.  Each case asks for a name that lands in one
tier, so the figure is that tier's cost with all the others present.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from gateway.core.routing import Router


@attrs.frozen
class Route:
    pattern: str
    upstream: str


def _table() -> list[Route]:
    routes = [Route(f"host{i}.example.com", f"exact{i}") for i in range(700)]
    routes += [Route(f"*.zone{i}.example.net", f"wild{i}") for i in range(100)]
    routes += [Route(f".apex{i}.example.org", f"apex{i}") for i in range(100)]
    routes += [
        Route(f"~^api-[0-9]+\\.region{i}\\.internal$", f"re{i}") for i in range(90)
    ]
    routes.append(Route("default", "fallback"))
    return routes


ROUTER = Router(_table())
ALPN_ROUTER = Router(
    [Route(f"ALPN:proto{i}", f"alpn{i}") for i in range(10)] + _table()
)

CASES = {
    "exact": ("host699.example.com", "exact699"),
    "wildcard": ("a.b.c.zone57.example.net", "wild57"),
    "apex": ("apex3.example.org", "apex3"),
    "regex_last": ("api-42.region89.internal", "re89"),
    "default": ("nothing.matches.example", "fallback"),
    "no_sni": (None, "fallback"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_match(benchmark: Any, case: str) -> None:
    name, expected = CASES[case]
    route = benchmark(ROUTER.match, name, ("h2", "http/1.1"))
    assert route is not None
    assert route.upstream == expected


def test_alpnRoute(benchmark: Any) -> None:
    route = benchmark(ALPN_ROUTER.match, "host1.example.com", ("h2", "proto7"))
    assert route is not None
    assert route.upstream == "alpn7"


def test_compileTable(benchmark: Any) -> None:
    """
    Building the router: paid at start and at every reload.
    """
    table = _table()
    benchmark(Router, table)
