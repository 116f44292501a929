"""
The one connect path (L{gateway.connection.dialers}): which dialer a
session gets, and that each reports its outcomes to the session as the
others do.  The direct connects themselves are tested on real sockets in
C{tests/connection/test_directconnect.py}, and end to end by every
integration test, once with the fast paths on and once off.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from gateway.config import ServerConfig
from gateway.connection.dialers import (
    AdoptingDialer,
    SplicedAttempt,
    SpliceDialer,
    TwistedDialer,
    chooseDialer,
)
from gateway.fast import hub as fasthub
from tests.helpers import fastPathOnly
from tests.transports import HalfCloseableTransport

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor


class Attempt(Protocol):
    def __init__(self, server: ServerConfig) -> None:
        self.server = server


class Dialing:
    """
    What a dialer reports to: records it.
    """

    def __init__(self) -> None:
        self.attempts: list[object] = []
        self.failed: list[tuple[object, Failure]] = []
        self.spliced: list[tuple[SplicedAttempt, socket.socket]] = []
        self.connectorsDone = 0

    def newAttempt(self, server: ServerConfig) -> Attempt:
        attempt = Attempt(server)
        self.attempts.append(attempt)
        return attempt

    def connectFailed(self, attempt: object, reason: Failure) -> None:
        self.failed.append((attempt, reason))

    def splicedConnected(self, attempt: SplicedAttempt, sock: socket.socket) -> None:
        self.spliced.append((attempt, sock))

    def connectorDone(self) -> None:
        self.connectorsDone += 1


def test_memoryReactorGetsTheTwistedDialer() -> None:
    """
    A reactor without a hub (no descriptors to register, as here, or the
    first connection of a process) connects through Twisted.
    """
    dialer = chooseDialer(
        MemoryReactor(),
        Clock(),
        HalfCloseableTransport(),
        relay="auto",
        raw=False,
        timeout=5.0,
    )
    assert isinstance(dialer, TwistedDialer)


def test_twistedDialerReportsAFailedConnectForItsAttempt() -> None:
    reactor = MemoryReactor()
    session = Dialing()
    server = ServerConfig("192.0.2.1", 443)
    attempt, connector = TwistedDialer(reactor, 5.0).dial(session, server)  # type: ignore[arg-type]
    assert session.attempts == [attempt]
    ((host, port, factory, timeout, _),) = reactor.tcpClients
    assert (host, port, timeout) == ("192.0.2.1", 443, 5.0)
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
    ((failedAttempt, reason),) = session.failed
    assert failedAttempt is attempt
    assert reason.check(ConnectionRefusedError)


@pytest.fixture
def hubReactor() -> Iterator[tuple[EPollReactor, tcp.Connection]]:
    """
    An epoll reactor with its splice hub, and a connected client transport.
    """
    reactor = EPollReactor()
    fasthub.hubFor(reactor)
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    client = tcp.Connection(far, Protocol(), reactor)
    client.connected = True
    yield reactor, client
    hub = fasthub.HUBS.pop(reactor, None)
    if hub is not None:
        hub.close()
    near.close()
    far.close()
    reactor._poller.close()


@fastPathOnly
@pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux splice only")
def test_aSplicedConnectionGetsTheSpliceDialerOthersAreAdopted(
    hubReactor: tuple[EPollReactor, tcp.Connection],
) -> None:
    reactor, client = hubReactor
    clock = Clock()
    spliced = chooseDialer(reactor, clock, client, relay="auto", raw=False, timeout=5)
    assert isinstance(spliced, SpliceDialer)
    # TLS or an opening towards the upstream: a transport is needed.
    raw = chooseDialer(reactor, clock, client, relay="auto", raw=True, timeout=5)
    assert isinstance(raw, AdoptingDialer)
    # Not spliced, asked for: adopted.
    portable = chooseDialer(
        reactor, clock, client, relay="portable", raw=False, timeout=5
    )
    assert isinstance(portable, AdoptingDialer)


@fastPathOnly
@pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux splice only")
def test_theSpliceDialerHandsTheConnectedSocketToTheSession(
    hubReactor: tuple[EPollReactor, tcp.Connection],
) -> None:
    reactor, _ = hubReactor
    hub = fasthub.hubFor(reactor)
    session = Dialing()
    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        dialer = SpliceDialer(hub, reactor, reactor, 5.0)
        attempt, _ = dialer.dial(session, ServerConfig(host, port))  # type: ignore[arg-type]
        assert isinstance(attempt, SplicedAttempt)
        for _ in range(100):
            if session.spliced:
                break
            reactor.iterate(0.05)
        ((got, sock),) = session.spliced
        assert got is attempt
        assert sock.getpeername() == (host, port)
        sock.close()
    assert session.attempts == []
    assert session.failed == []


@fastPathOnly
@pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux splice only")
def test_aServerGivenByNameFallsBackToTwisted(
    hubReactor: tuple[EPollReactor, tcp.Connection],
) -> None:
    reactor, _ = hubReactor
    memory = MemoryReactor()
    session = Dialing()
    for dialer in (
        SpliceDialer(fasthub.hubFor(reactor), memory, Clock(), 5.0),
        AdoptingDialer(fasthub.hubFor(reactor), memory, Clock(), 5.0),
    ):
        attempt, _ = dialer.dial(session, ServerConfig("localhost", 443))  # type: ignore[arg-type]
        assert attempt is session.attempts[-1]
    assert [client[:2] for client in memory.tcpClients] == [("localhost", 443)] * 2
