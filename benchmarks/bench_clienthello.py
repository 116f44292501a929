"""
The ClientHello reader: what every connection pays before it is routed.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import capturedHellos

from gateway.wire.clienthello import NEED_MORE
from gateway.wire.helloreader import ClientHelloReader

HELLOS = capturedHellos()


@pytest.mark.parametrize("name", sorted(HELLOS))
def test_wholeHelloInOneRead(benchmark: Any, name: str) -> None:
    """
    The usual case: the whole hello arrives in the first read.
    """
    data = HELLOS[name]

    def read() -> object:
        return ClientHelloReader(16384).feed(data)

    hello = benchmark(read)
    assert hello is not NEED_MORE


@pytest.mark.parametrize("name", sorted(HELLOS))
def test_helloSplitAtEthernetMTU(benchmark: Any, name: str) -> None:
    """
    A hello cut where a 1500-byte MTU cuts it (1448 bytes of TCP payload):
    what a post-quantum hello of about 1,570 bytes looks like on the wire.
    """
    data = HELLOS[name]
    first, second = data[:1448], data[1448:]

    def read() -> object:
        reader = ClientHelloReader(16384)
        result = reader.feed(first)
        if second:
            result = reader.feed(second)
        return result

    assert benchmark(read) is not NEED_MORE
