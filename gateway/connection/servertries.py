"""
The one rule for reaching an upstream: which server a connection tries
next, and what a failure means.

L{ServerTries} keeps, for one connection and one upstream, the servers
already tried and the C{next_upstream_tries} left, tells the chooser how
each attempt went (its passive failure counts and active-connection
counts depend on it), and words the last error for the access log.
L{gateway.connection.session.Session} uses it for every connect path it
has; L{Dialer} runs the loop for a leg that connects through the reactor
and speaks first itself once connected (a MySQL server's greeting): pick,
connect, and on failure the next server, until one is ready or none is
left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IConnector, IReactorTCP, ITransport
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure

from gateway.config import ServerConfig
from gateway.connection.upstream import IServerChooser, connectServer, localError
from gateway.core.transports import relayTransport

__all__ = ["Dialer", "ServerTries"]

NO_SERVER = "no server available"


class ServerTries:
    """
    The servers one connection tries on one upstream.

    @ivar lastError: why the last attempt failed (C{host:port: reason}),
        for the access log when no server is left.
    """

    def __init__(self, chooser: IServerChooser, tries: int, clientKey: str) -> None:
        self._chooser = chooser
        self._left = tries
        self._clientKey = clientKey
        self._tried: frozenset[ServerConfig] = frozenset()
        self.lastError = NO_SERVER

    def next(self) -> ServerConfig | None:
        """
        The next server to try, or L{None} when the tries are spent or
        every usable server was tried.
        """
        if self._left <= 0:
            return None
        server = self._chooser.pick(self._clientKey, self._tried)
        if server is None:
            return None
        self._left -= 1
        self._tried |= {server}
        return server

    def failed(self, server: ServerConfig, reason: str) -> None:
        """
        C{server} could not take the connection: it counts against it.
        """
        self._chooser.connectFailed(server)
        self.lastError = f"{server.address}: {reason}"

    def failedLocally(self, server: ServerConfig, reason: str) -> None:
        """
        The gateway's own resources ran out while connecting to C{server}
        (L{gateway.connection.upstream.LOCAL_ERRORS}): not the server's
        fault, so it does not count against it, and no other server is
        worth trying.
        """
        self._left = 0
        self.lastError = f"{server.address}: {reason}"

    def succeeded(self, server: ServerConfig) -> None:
        self._chooser.connectSucceeded(server)

    def released(self, server: ServerConfig) -> None:
        self._chooser.released(server)


class Attempt(Protocol):
    """
    What L{Dialer} needs of a leg: its server, and its transport once
    connected (to abort it).
    """

    @property
    def server(self) -> ServerConfig: ...

    @property
    def transport(self) -> ITransport | None: ...


A = TypeVar("A", bound=Attempt)


class Dialer(Generic[A]):
    """
    Connect one leg to a server of one upstream, with retries and failover.

    The leg (built by C{attempt} for each server) reports back: L{failed}
    when its server cannot take the connection (refused, timed out,
    closed, said something unusable) and L{succeeded} once it is ready.
    When no server is left, C{exhausted} is called with the last error.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        tries: ServerTries,
        timeout: float,
        attempt: Callable[[ServerConfig], A],
        exhausted: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self.tries = tries
        self._timeout = timeout
        self._makeAttempt = attempt
        self._exhausted = exhausted
        self._attempt: A | None = None
        self._connector: IConnector | None = None
        self._cancelled = False

    def start(self) -> None:
        server = self.tries.next()
        if server is None:
            self._exhausted(self.tries.lastError)
            return
        attempt = self._attempt = self._makeAttempt(server)
        assert isinstance(attempt, TwistedProtocol)
        self._connector = connectServer(
            self._reactor,
            server,
            attempt,
            self._timeout,
            lambda reason: self._connectFailed(attempt, reason),
        )

    def _connectFailed(self, attempt: A, reason: Failure) -> None:
        local = localError(reason)
        if local is None or attempt is not self._attempt:
            self.failed(attempt, reason.getErrorMessage())
            return
        self._attempt = self._connector = None
        if self._cancelled:
            return
        self.tries.failedLocally(attempt.server, local)
        self._exhausted(self.tries.lastError)

    def failed(self, attempt: A, reason: str) -> None:
        """
        C{attempt}'s server cannot take the connection: try the next.
        Reports of an attempt given up on are ignored.
        """
        if attempt is not self._attempt:
            return
        self._attempt = self._connector = None
        if self._cancelled:
            return
        self.tries.failed(attempt.server, reason)
        self.start()

    def succeeded(self, attempt: A) -> bool:
        """
        C{attempt} is ready: the dialing is over.

        @return: whether C{attempt} is the one being dialed; a late report
            of one given up on is ignored (its server is not counted as
            connected), and its leg should close.
        """
        if attempt is not self._attempt:
            return False
        self._attempt = self._connector = None
        self.tries.succeeded(attempt.server)
        return True

    def cancel(self) -> None:
        """
        Stop: the connection no longer needs a server (its client left).
        """
        self._cancelled = True
        attempt, self._attempt = self._attempt, None
        connector, self._connector = self._connector, None
        if attempt is None:
            return
        if attempt.transport is None:
            if connector is not None:
                connector.stopConnecting()
        else:
            relayTransport(attempt.transport).abortConnection()
