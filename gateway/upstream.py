"""
Choosing an upstream server and connecting to it.

L{IServerChooser} is the seam where load balancing, passive failure
tracking and health state live; L{FirstServer} is the single-server chooser
that the core gateway needs.  L{connectServer} opens the connection with the
listener's C{connect_timeout}, directly through the reactor: no endpoint
objects, no DNS for addresses that are already literal.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IConnector, IReactorTCP, IReactorUNIX
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.config import ServerConfig, UpstreamConfig


class IServerChooser(Interface):
    """
    Picks the server of one C{[upstream:NAME]} for the next connection.

    One provider per upstream per configuration generation, called only from
    the reactor thread, so it may keep state without locks.
    """

    def pick(clientKey: str, exclude: frozenset[ServerConfig]) -> ServerConfig | None:
        """
        @param clientKey: the client address, for policies that keep one
            client on one server.
        @param exclude: servers that already failed for this connection.
        @return: the server to try, or L{None} when none is left.
        """

    def connectFailed(server: ServerConfig) -> None:
        """
        A connect to C{server} was refused or timed out.
        """

    def connectSucceeded(server: ServerConfig) -> None:
        """
        A connect to C{server} succeeded.
        """


@implementer(IServerChooser)
class FirstServer:
    """
    Always the first configured server: an upstream with one server.
    """

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._servers = upstream.servers

    def pick(
        self, clientKey: str, exclude: frozenset[ServerConfig]
    ) -> ServerConfig | None:
        for server in self._servers:
            if server not in exclude:
                return server
        return None

    def connectFailed(self, server: ServerConfig) -> None:
        pass

    def connectSucceeded(self, server: ServerConfig) -> None:
        pass


class _OneShotFactory(ClientFactory):
    """
    Builds exactly one protocol and reports a failed connect.

    The upstream protocol object is created by the caller, so it can be
    bound to its client connection before any event arrives.
    """

    noisy = False

    def __init__(self, protocol: Protocol, failed: Callable[[Failure], None]) -> None:
        self._protocol = protocol
        self._failed = failed

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._failed(reason)


def connectServer(
    reactor: IReactorTCP,
    server: ServerConfig,
    protocol: Protocol,
    timeout: float,
    failed: Callable[[Failure], None],
) -> IConnector:
    """
    Start connecting C{protocol} to C{server}.

    @param failed: called with the reason if the connect is refused or
        times out; on success, C{protocol.connectionMade} runs instead.
    @return: the connector, so that a client that leaves while we connect
        can cancel the attempt with C{stopConnecting}.
    """
    factory = _OneShotFactory(protocol, failed)
    if server.path is not None:
        unixReactor: IReactorUNIX = reactor  # type: ignore[assignment]
        return unixReactor.connectUNIX(server.path, factory, timeout=timeout)
    assert server.host is not None
    assert server.port is not None
    return reactor.connectTCP(server.host, server.port, factory, timeout=timeout)
