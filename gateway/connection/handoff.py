"""
The seam between a connection's owner and what it hands the connection to.

L{gateway.connection.preread.PrereadProtocol} owns each client connection;
L{Handoff} is what it asks (its listener) what to do with one, and
L{IStage} what it hands the connection to, passing it every later event of
the client's transport.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol
from typing import TypeVar

from twisted.python.failure import Failure
from zope.interface import Interface

from gateway.connection.strategy import IProtocolStrategy
from gateway.rules.decision import Reject
from gateway.wire.clienthello import ClientHello
from gateway.wire.proxyprotocol import ProxyHeader

Owner = TypeVar("Owner", contravariant=True)
"""
The connection's owner as the listener sees it
(L{gateway.connection.preread.PrereadProtocol}): a parameter, so that
this module, which the owner imports, does not import it back.
"""


class IStage(Interface):
    """
    What the pre-read hands the connection to: it receives the client
    transport's events from then on.
    """

    def dataReceived(data: bytes) -> None:
        """
        The client's next bytes.
        """

    def readConnectionLost() -> None:
        """
        The client closed its side (half-close).
        """

    def connectionLost(reason: Failure) -> None:
        """
        The client connection is gone.
        """

    def shutdown() -> None:
        """
        The gateway stops: end the connection now.
        """


class Handoff(TypingProtocol[Owner]):
    """
    The listener side of the pre-read: decide what happens to a connection.
    Each hook answers: L{None} to go on, a L{Reject} to refuse, or the
    L{IStage} the connection is handed to; none calls back into the
    protocol.
    """

    def accepted(self, protocol: Owner) -> Reject | None:
        """
        A connection was just accepted: refuse it at once (address
        filtering, limits), or not.
        """

    def proxied(self, protocol: Owner, header: ProxyHeader) -> Reject | None:
        """
        The connection's PROXY header was read (C{protocol.proxyHeader}):
        refuse the client it names, or not.
        """

    def handoff(
        self, protocol: Owner, hello: ClientHello, buffered: bytes
    ) -> IStage | Reject: ...

    def handoffPlaintext(self, protocol: Owner, start: object) -> IStage | Reject:
        """
        The preamble said the client starts without TLS (C{start}: what
        L{gateway.connection.strategy.IPreamble.feed} returned).
        """

    def handoffAtAccept(self, protocol: Owner, buffered: bytes) -> IStage | Reject:
        """
        A connection that reads no ClientHello is ready to be served: at
        accept, or once its PROXY header was read (C{buffered}: what
        followed it).
        """

    def ended(self, protocol: Owner) -> None:
        """
        The connection is over: log it (and call the owner's C{logged}).
        """

    @property
    def strategy(self) -> IProtocolStrategy:
        """
        The listener's protocol: a connection's, unless it is given its own.
        """
