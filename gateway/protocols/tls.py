"""
The strategies that need no protocol module of their own: C{protocol =
tls} (the client's first bytes are its ClientHello) and C{mode = tcp}
(nothing is read).  Light on imports: nothing of Twisted or OpenSSL is
loaded by importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from zope.interface import implementer

from gateway.connection.hooks import IServesAtAccept, ListenerContext
from gateway.connection.strategy import IProtocolStrategy, ReadsNothing
from gateway.wire.postgres import looksLikePostgres

if TYPE_CHECKING:
    from gateway.connection.preread import IStage, PrereadProtocol


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
    upstream connection opens with nothing before TLS, and a terminated
    connection is a plain session from its handshake on.
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

    def listenerState(self) -> None:
        return None


@implementer(IProtocolStrategy, IServesAtAccept)
class TCPStrategy(ReadsNothing):
    """
    C{mode = tcp}: nothing is read; the connection is relayed to its one
    C{upstream} from its first byte, at accept or once its PROXY header
    is read.
    """

    name = "tcp"

    def openAtAccept(
        self, listener: ListenerContext, protocol: PrereadProtocol, buffered: bytes
    ) -> IStage:
        upstreamName = listener.config.upstream
        assert upstreamName is not None
        return listener.relayTCP(
            protocol, listener.passthroughUpstreams[upstreamName], buffered, self
        )


TLS: Final = TLSStrategy()
TCP: Final = TCPStrategy()
