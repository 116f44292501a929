"""
The strategies that need no protocol module of their own: C{protocol =
tls} (the client's first bytes are its ClientHello) and C{mode = tcp}
(nothing is read).  Light on imports: L{gateway.connection.preread} uses L{TLS} as
its default.
"""

from __future__ import annotations

from typing import Any, Final

from zope.interface import implementer

from gateway.protocols.strategy import IProtocolStrategy
from gateway.wire.postgres import looksLikePostgres


def misdirectedPostgres(buffered: bytes) -> str | None:
    """
    The hint for a PostgreSQL client on a listener that expected TLS.
    """
    if looksLikePostgres(buffered):
        return "looks like PostgreSQL: set protocol = postgres"
    return None


@implementer(IProtocolStrategy)
class TLSStrategy:
    """
    C{protocol = tls}: the client's first bytes are its ClientHello; the
    upstream connection opens with nothing before TLS.
    """

    name = "tls"
    readsHello = True
    speaksTLSFirst = True

    def preamble(self) -> None:
        return None

    def misdirected(self, buffered: bytes) -> str | None:
        return misdirectedPostgres(buffered)

    def opening(self, encrypted: bool) -> None:
        return None

    def terminated(
        self, listener: Any, protocol: Any, tls: Any, upstream: Any, hello: Any
    ) -> Any:
        return listener.session(
            protocol, tls, upstream, hello.serverName, tls.connection
        )

    def openPlaintext(self, listener: Any, protocol: Any, start: object) -> Any:
        raise NotImplementedError("a tls listener has no preamble")

    def listenerState(self) -> None:
        return None

    def openAtAccept(self, listener: Any, protocol: Any, buffered: bytes) -> Any:
        raise NotImplementedError("a tls listener reads a ClientHello")


@implementer(IProtocolStrategy)
class TCPStrategy:
    """
    C{mode = tcp}: nothing is read; the connection is relayed to its one
    C{upstream} from its first byte, at accept or once its PROXY header
    is read.
    """

    name = "tcp"
    readsHello = False
    speaksTLSFirst = False

    def preamble(self) -> None:
        return None

    def misdirected(self, buffered: bytes) -> str | None:
        return None

    def opening(self, encrypted: bool) -> None:
        return None

    def terminated(
        self, listener: Any, protocol: Any, tls: Any, upstream: Any, hello: Any
    ) -> Any:
        raise NotImplementedError("mode = tcp terminates nothing")

    def openPlaintext(self, listener: Any, protocol: Any, start: object) -> Any:
        raise NotImplementedError("mode = tcp has no preamble")

    def listenerState(self) -> None:
        return None

    def openAtAccept(self, listener: Any, protocol: Any, buffered: bytes) -> Any:
        upstreamName = listener.config.upstream
        assert upstreamName is not None
        return listener.relayTCP(
            protocol, listener.passthroughUpstreams[upstreamName], buffered, self
        )


TLS: Final = TLSStrategy()
TCP: Final = TCPStrategy()
