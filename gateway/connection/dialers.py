"""
How a session reaches an upstream server: the one connect path, with its
providers chosen in one place.

A L{Session} asks its dialer to connect to each server it tries
(L{IUpstreamDialer.dial}); which dialer it has is chosen once, when the
session starts, by L{chooseDialer}:

  - L{SpliceDialer}: the connection will be spliced whatever its upstream
    (L{gateway.connection.relays.spliceHub}), so the upstream socket is
    connected in the splice hub (L{gateway.connection.directconnect}) and
    given to the splice relay as it is: no Twisted transport at all;
  - L{AdoptingDialer}: connected in the hub the same way, then adopted
    by the reactor (C{adoptStreamConnection}) as an ordinary transport of
    the session's L{AttemptProtocol}: for a relay that is not spliced;
  - L{TwistedDialer}: Twisted's C{connectTCP}/C{connectUNIX}: always with
    the fast paths off, and what the other two fall back to for a server
    given by name (Twisted resolves it) or a C{unix:} path.

Every provider reports the same outcomes, with Twisted's own errors, so
the session cannot tell them apart: a failed connect is
L{DialingSession.connectFailed}; a connected one is the protocol's
C{connectionMade} or, spliced, L{DialingSession.splicedConnected}.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable
from typing import Protocol as Structural

import attrs
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.config import ServerConfig
from gateway.connection.directconnect import DirectConnect, adoptionHub, literalAddress
from gateway.connection.relays import spliceHub
from gateway.connection.upstream import adoptConnected, connectServer
from gateway.core.transports import RelayTransport
from gateway.fast.hub import Hub


class AttemptProtocol(Protocol):
    """
    The protocol of an upstream attempt that Twisted carries (the
    session's L{gateway.connection.session.UpstreamProtocol}): it knows
    the server it is for.
    """

    server: ServerConfig


@attrs.define(slots=True)
class SplicedAttempt:
    """
    An upstream attempt of the L{SpliceDialer}: what the session knows of
    an attempt, without a protocol (there is no transport until the relay
    owns the socket).
    """

    server: ServerConfig
    transport: None = None


class Stoppable(Structural):
    """
    A connect in progress: Twisted's C{IConnector} or a L{DirectConnect}.
    """

    def stopConnecting(self) -> None: ...


class DialingSession(Structural):
    """
    What a dialer reports to the session it connects for.
    """

    def newAttempt(self, server: ServerConfig) -> AttemptProtocol: ...

    def connectFailed(
        self, attempt: AttemptProtocol | SplicedAttempt, reason: Failure
    ) -> None: ...

    def splicedConnected(
        self, attempt: SplicedAttempt, sock: socket.socket
    ) -> None: ...

    def connectorDone(self) -> None: ...


class IUpstreamDialer(Interface):
    """
    Connects a session to one server after another (named so as not to be
    taken for Twisted's C{IConnector}, which some providers return).
    """

    def dial(
        session: DialingSession, server: ServerConfig
    ) -> tuple[AttemptProtocol | SplicedAttempt, Stoppable]:
        """
        Start connecting to C{server}.  The outcome is reported later,
        never from inside this call (as Twisted's connectors do), so the
        session records the attempt from what this returns before any
        report about it can come.

        @return: the attempt (what the session's reports name) and the
            connect in progress, which a client that leaves stops.
        """


@implementer(IUpstreamDialer)
class TwistedDialer:
    """
    Connects through Twisted's connector: any server, any reactor.
    """

    __slots__ = ("_reactor", "_timeout")

    def __init__(self, reactor: IReactorTCP, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def dial(
        self, session: DialingSession, server: ServerConfig
    ) -> tuple[AttemptProtocol | SplicedAttempt, Stoppable]:
        attempt = session.newAttempt(server)
        connector = connectServer(
            self._reactor,
            server,
            attempt,
            self._timeout,
            lambda reason: session.connectFailed(attempt, reason),
        )
        return attempt, connector


class _HubDialer(abc.ABC):
    """
    What the two dialers that connect in the splice hub share: the hub,
    and Twisted's connector for a server given by name or path.
    """

    __slots__ = ("_clock", "_fallback", "_hub", "_reactor", "_timeout")

    #: The connected socket stays the hub's (the splice relay's), with its
    #: registration (L{DirectConnect}'s C{handOver}).
    _handsOver = False

    def __init__(
        self, hub: Hub, reactor: IReactorTCP, clock: IReactorTime, timeout: float
    ) -> None:
        self._hub = hub
        self._reactor = reactor
        self._clock = clock
        self._timeout = timeout
        self._fallback = TwistedDialer(reactor, timeout)

    def dial(
        self, session: DialingSession, server: ServerConfig
    ) -> tuple[AttemptProtocol | SplicedAttempt, Stoppable]:
        if server.host is not None:
            address = literalAddress(server.host, server.port or 0)
            if address is not None:
                return self._dialAddress(session, server, address)
        return self._fallback.dial(session, server)

    @abc.abstractmethod
    def _dialAddress(
        self,
        session: DialingSession,
        server: ServerConfig,
        address: tuple[int, tuple[object, ...]],
    ) -> tuple[AttemptProtocol | SplicedAttempt, Stoppable]:
        """
        Connect to C{server} at C{address}, an IP address and port.
        """

    def _connect(
        self,
        address: tuple[int, tuple[object, ...]],
        connected: Callable[[socket.socket], None],
        failed: Callable[[Failure], None],
    ) -> DirectConnect:
        connector = DirectConnect(
            self._hub, self._clock, connected, failed, handOver=self._handsOver
        )
        connector.start(*address, self._timeout)
        return connector


@implementer(IUpstreamDialer)
class AdoptingDialer(_HubDialer):
    """
    Connects a server given by IP address in the hub, then has the reactor
    adopt the socket (L{adoptConnected}): from there on it is an ordinary
    Twisted transport of the attempt's protocol, as C{connectTCP} would
    have made, without the connector's resolution, extra reactor turn and
    second C{connect}.
    """

    __slots__ = ()

    def _dialAddress(
        self,
        session: DialingSession,
        server: ServerConfig,
        address: tuple[int, tuple[object, ...]],
    ) -> tuple[AttemptProtocol | SplicedAttempt, Stoppable]:
        attempt = session.newAttempt(server)

        def adopt(sock: socket.socket) -> None:
            # A client that left stopped the connect (clientLost), which
            # then failed: a connected socket means it is still there.
            session.connectorDone()
            try:
                adoptConnected(self._reactor, sock, attempt)  # type: ignore[arg-type]
            except OSError:
                session.connectFailed(attempt, Failure())

        connector = self._connect(
            address, adopt, lambda reason: session.connectFailed(attempt, reason)
        )
        return attempt, connector


@implementer(IUpstreamDialer)
class SpliceDialer(_HubDialer):
    """
    Connects a server given by IP address in the hub and gives the
    connected socket to the session, for the splice relay to own.
    """

    __slots__ = ()
    _handsOver = True

    def _dialAddress(
        self,
        session: DialingSession,
        server: ServerConfig,
        address: tuple[int, tuple[object, ...]],
    ) -> tuple[AttemptProtocol | SplicedAttempt, Stoppable]:
        attempt = SplicedAttempt(server)
        connector = self._connect(
            address,
            lambda sock: session.splicedConnected(attempt, sock),
            lambda reason: session.connectFailed(attempt, reason),
        )
        return attempt, connector


def chooseDialer(
    reactor: IReactorTCP,
    clock: IReactorTime,
    client: RelayTransport,
    *,
    relay: str,
    raw: bool,
    timeout: float,
) -> IUpstreamDialer:
    """
    The dialer of one session: the only place that chooses.

    @param relay: the listener's C{relay} key.
    @param raw: the gateway writes to the upstream connection before
        relaying (TLS, or a protocol's opening), so it needs a Twisted
        transport and cannot be spliced from its first byte.
    """
    if not raw:
        hub = spliceHub(relay, reactor, client)
        if hub is not None:
            return SpliceDialer(hub, reactor, clock, timeout)
    hub = adoptionHub(reactor)
    if hub is not None:
        return AdoptingDialer(hub, reactor, clock, timeout)
    return TwistedDialer(reactor, timeout)
