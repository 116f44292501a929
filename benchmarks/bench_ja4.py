"""
JA4 fingerprints: computed for every connection after the pre-read.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import capturedHellos

from gateway.wire import ja4 as ja4module
from gateway.wire.clienthello import ClientHello
from gateway.wire.helloreader import ClientHelloReader

HELLOS = {
    name: hello
    for name, data in capturedHellos().items()
    if isinstance(hello := ClientHelloReader(16384).feed(data), ClientHello)
}


@pytest.mark.parametrize("name", sorted(HELLOS))
def test_repeatClient(benchmark: Any, name: str) -> None:
    """
    A client stack seen before: the cached answer (the usual case).
    """
    hello = HELLOS[name]
    ja4module.ja4(hello)
    benchmark(ja4module.ja4, hello)


@pytest.mark.parametrize("name", sorted(HELLOS))
def test_newClient(benchmark: Any, name: str) -> None:
    """
    A client stack never seen: the full computation (sorts, two SHA-256).
    """
    hello = HELLOS[name]

    def fresh() -> str:
        ja4module._cachedByWire.cache_clear()
        ja4module._fingerprint.cache_clear()
        return ja4module.ja4(hello)

    benchmark(fresh)
