"""
Upstream connects without Twisted's client machinery
(L{gateway.connection.directconnect}), on a private epoll reactor and its splice hub,
against real loopback sockets; every wait is bounded.

The failures must read exactly as Twisted's connector reports them, since
the session, the logs and C{next_upstream_tries} cannot tell the two apart:
each case is compared with what C{connectTCP} gives for the same address.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.error import (
    ConnectionRefusedError,
    TimeoutError,
    UserError,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from gateway.connection.directconnect import DirectConnect, literalAddress
from gateway.connection.upstream import adoptConnected
from gateway.fast import hub as fasthub
from tests.helpers import fastPathOnly

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux epoll only"),
    fastPathOnly,
    pytest.mark.timeout(60),
]

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor


def openFds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


class Attempt:
    """
    One L{DirectConnect} on a private reactor, and what it reported.
    """

    def __init__(self, reactor: EPollReactor) -> None:
        self.reactor = reactor
        self.connected: list[socket.socket] = []
        self.failed: list[Failure] = []
        self.connector = DirectConnect(
            fasthub.hubFor(reactor), reactor, self.connected.append, self.failed.append
        )

    def spin(self, what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.connected or self.failed):
            assert time.monotonic() < deadline, f"timed out: {what}"
            self.reactor.iterate(0.005)

    @property
    def outcomes(self) -> int:
        return len(self.connected) + len(self.failed)


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    made = EPollReactor()
    fasthub.hubFor(made)  # made first: not a descriptor the tests count
    yield made
    fasthub.hubFor(made).close()
    made.removeAll()
    made._poller.close()


@pytest.fixture
def attempt(reactor: EPollReactor) -> Callable[[], Attempt]:
    return lambda: Attempt(reactor)


def twistedFailure(reactor: EPollReactor, host: str, port: int) -> Failure:
    """
    What Twisted's own connector reports for C{host}:C{port}.
    """
    failures: list[Failure] = []

    class Factory(ClientFactory):
        protocol = Protocol

        def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
            failures.append(reason)

    reactor.connectTCP(host, port, Factory(), timeout=5)
    deadline = time.monotonic() + 5
    while not failures:
        assert time.monotonic() < deadline
        reactor.iterate(0.005)
    return failures[0]


def closedPort() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_literalAddressesOnlyNoLookup() -> None:
    assert literalAddress("127.0.0.1", 443) == (socket.AF_INET, ("127.0.0.1", 443))
    family, address = literalAddress("::1", 8443) or (0, ())
    assert family == socket.AF_INET6
    assert address[:2] == ("::1", 8443)
    assert literalAddress("localhost", 443) is None
    assert literalAddress("backend.example.test", 443) is None
    assert literalAddress("256.1.1.1", 443) is None


def test_connectsAndHandsOverTheSocket(attempt: Callable[[], Attempt]) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    before = openFds()
    made = attempt()
    made.connector.start(socket.AF_INET, server.getsockname(), 5)
    made.spin("connected")
    assert made.failed == []
    (sock,) = made.connected
    peer, _ = server.accept()
    sock.send(b"hello")
    assert peer.recv(10) == b"hello"
    assert sock.getblocking() is False
    # Stopping after the outcome does nothing: one outcome, ever.
    made.connector.stopConnecting()
    assert made.outcomes == 1
    for s in (sock, peer):
        s.close()
    assert openFds() - before == set()
    server.close()


def test_aConnectCompleteAtOnceWaitsForNoEventNorDeadline(
    reactor: EPollReactor, attempt: Callable[[], Attempt]
) -> None:
    """
    On loopback the handshake is over when C{connect()} returns: the
    socket is handed over on the reactor's next turn, never from inside
    C{start}, with no connect deadline armed (the only call pending is
    due now).
    """
    server = socket.create_server(("127.0.0.1", 0))
    made = attempt()
    made.connector.start(socket.AF_INET, server.getsockname(), 5)
    assert made.outcomes == 0
    now = reactor.seconds()
    assert [call.getTime() <= now for call in reactor.getDelayedCalls()] == [True]
    reactor.iterate(0)
    (sock,) = made.connected
    sock.close()
    server.close()


def test_refusedReadsAsTwistedSaysIt(
    reactor: EPollReactor, attempt: Callable[[], Attempt]
) -> None:
    port = closedPort()
    before = openFds()
    made = attempt()
    made.connector.start(socket.AF_INET, ("127.0.0.1", port), 5)
    # Never called back from inside start(), even for a refusal the kernel
    # gives at once.
    assert made.outcomes == 0
    made.spin("refused")
    (failure,) = made.failed
    assert failure.check(ConnectionRefusedError)
    assert (
        failure.getErrorMessage()
        == twistedFailure(reactor, "127.0.0.1", port).getErrorMessage()
    )
    assert made.connected == []
    reactor.iterate(0.01)
    assert openFds() - before == set(), "the socket is closed"


def test_timeoutReadsAsTwistedSaysIt(
    reactor: EPollReactor, attempt: Callable[[], Attempt]
) -> None:
    # A listener with a full accept queue and SYN cookies off keeps a
    # connect pending; a non-routable documentation address does too on
    # most hosts, but loopback only is allowed: fill a backlog of 0.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())
            fillers.append(filler)
        made = attempt()
        started = time.monotonic()
        made.connector.start(socket.AF_INET, server.getsockname(), 0.3)
        made.spin("timed out")
        if made.connected:
            pytest.skip("this kernel completed the connect despite the full backlog")
        (failure,) = made.failed
        assert failure.check(TimeoutError)
        assert failure.getErrorMessage() == TimeoutError().__str__()
        assert time.monotonic() - started >= 0.3
    finally:
        for s in [server, *fillers]:
            s.close()


def test_stopConnectingReportsUserErrorOnceAndClosesTheSocket(
    reactor: EPollReactor, attempt: Callable[[], Attempt]
) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    before = openFds()
    made = attempt()
    made.connector.start(socket.AF_INET, server.getsockname(), 5)
    made.connector.stopConnecting()
    made.connector.stopConnecting()
    assert len(made.failed) == 1
    assert made.failed[0].check(UserError)
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        reactor.iterate(0.005)
    assert made.outcomes == 1, "nothing more once stopped"
    assert openFds() - before == set()
    server.close()


def test_anAdoptedSocketIsAnOrdinaryTwistedTransport(
    reactor: EPollReactor, attempt: Callable[[], Attempt]
) -> None:
    """
    A connection that is not spliced takes its directly connected socket
    to the reactor (L{adoptConnected}): the protocol is connected at once
    on a Twisted TCP transport, bytes go both ways, and the socket the
    connect made is closed (the transport holds its own descriptor).
    """
    server = socket.create_server(("127.0.0.1", 0))
    before = openFds()
    made = attempt()
    made.connector.start(socket.AF_INET, server.getsockname(), 5)
    made.spin("connected")
    (sock,) = made.connected

    class Recorder(Protocol):
        received = b""

        def dataReceived(self, data: bytes) -> None:
            self.received += data

    protocol = Recorder()
    adoptConnected(reactor, sock, protocol)
    assert sock.fileno() == -1
    transport = protocol.transport
    assert isinstance(transport, tcp.Connection)
    assert transport.getPeer().port == server.getsockname()[1]
    peer, _ = server.accept()
    transport.write(b"to the upstream")
    peer.settimeout(5)
    deadline = time.monotonic() + 5
    got = b""
    while len(got) < len(b"to the upstream"):
        assert time.monotonic() < deadline
        reactor.iterate(0.005)
        with contextlib.suppress(BlockingIOError, TimeoutError):
            peer.setblocking(False)
            got += peer.recv(100)
    assert got == b"to the upstream"
    peer.sendall(b"from the upstream")
    while protocol.received != b"from the upstream":
        assert time.monotonic() < deadline
        reactor.iterate(0.005)
    transport.abortConnection()
    reactor.iterate(0)
    peer.close()
    assert openFds() - before == set()
    server.close()
