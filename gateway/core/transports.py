"""
The transports the gateway relays between, as its code types them.

A module of its own, below both the relay and the fast paths
(L{gateway.fast.internals}) that type their arguments with it, so neither has to
import the other for a type.
"""

from __future__ import annotations

from typing import Any, Protocol, cast


class RelayTransport(Protocol):
    """
    What a relay needs of a transport: Twisted's C{ITCPTransport} plus the
    C{IConsumer} and C{IPushProducer} halves that every TCP and TLS
    transport also provides but that interface does not declare.
    """

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def loseWriteConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def getPeer(self) -> Any: ...

    def getHost(self) -> Any: ...


def relayTransport(transport: object) -> RelayTransport:
    """
    C{transport} as the relay sees it.  Twisted types C{Protocol.transport}
    as C{ITransport}, which has no C{abortConnection} nor the producer
    methods; every transport the gateway's protocols are connected to is a
    TCP (or TLS over TCP) one, which has them all.
    """
    assert transport is not None
    return cast(RelayTransport, transport)
