"""
The gateway's reactor (L{gateway.fast.hubreactor}): the hub's events
handed to it directly, under Twisted's rules for a reader that raises,
and every other descriptor dispatched as Twisted does; installed where
the fast paths are on and no reactor is installed yet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from gateway.fast import hub as fasthub
from gateway.fast.portable import PORTABLE
from tests.hubreactor import KINDS, privateReactor, socketPair, spinUntil

pytestmark = pytest.mark.timeout(60)

fastOnly = pytest.mark.skipif(
    not hasattr(os, "splice") or PORTABLE,
    reason="the hub needs Linux epoll and the fast paths on",
)


class End:
    """
    One socket read from the hub, counting its reads and its loss.
    """

    side = "test"
    writing = False

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.fd = sock.fileno()
        self.reading = True
        self.reads = 0
        self.lost: list[Failure] = []

    def doRead(self) -> None:
        self.reads += 1
        self.socket.recv(65536)

    def doWrite(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@pytest.fixture(params=KINDS)
def reactor(request: pytest.FixtureRequest) -> Iterator[EPollReactor]:
    yield from privateReactor(request.param)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    yield from socketPair()


@fastOnly
def test_theHubsEndsAreCalledForTheirEvents(
    reactor: EPollReactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    """
    Bytes on a socket the hub reads reach its end, once per readiness,
    on either reactor.
    """
    left, right = pair
    end = End(left)
    fasthub.hubFor(reactor).update(end)
    for count in (1, 2, 3):
        right.send(b"x")
        spinUntil(reactor, lambda count=count: end.reads == count, "a read")  # type: ignore[misc]
    assert end.lost == []


@fastOnly
def test_aHubThatRaisesIsLoggedAndDisconnectedAsTwistedDoes(
    reactor: EPollReactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    """
    An exception out of the hub's own turn (not one end's, which the hub
    handles itself) is logged, and the hub is taken off the reactor
    with every end it holds lost: what Twisted's dispatch does with any
    reader that raises, so both reactors behave alike.
    """
    left, right = pair
    end = End(left)
    hub = fasthub.hubFor(reactor)
    hub.update(end)

    def broken(events: object) -> None:
        raise RuntimeError("the hub is broken")

    # Both reactors reach it through the hub's turn (its own set's events
    # or the reactor's).
    hub.turn = broken  # type: ignore[method-assign]
    failures: list[object] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        # Twisted logs it the legacy way (log.err), the gateway's reactor
        # the new one.
        failure = event.get("log_failure", event.get("failure"))
        if isinstance(failure, Failure) and failure.check(RuntimeError):
            failures.append(failure)

    globalLogPublisher.addObserver(observe)
    try:
        right.send(b"x")
        spinUntil(reactor, lambda: bool(end.lost), "the hub dropped")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures, "the exception was not logged"
    assert hub not in IReactorFDSet(reactor).getReaders()
    assert end.lost[0].check(RuntimeError)


@fastOnly
def test_otherDescriptorsAreDispatchedAsTwistedDoes(reactor: EPollReactor) -> None:
    """
    A Twisted TCP server and client on the same reactor as a hub exchange
    bytes, both ways, and see the connection close.
    """
    received: list[bytes] = []
    closed: list[bool] = []

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[union-attr]

    class Client(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"ping")  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            received.append(data)
            self.transport.loseConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            closed.append(True)

    fasthub.hubFor(reactor)
    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    try:
        client: ClientFactory = ClientFactory.forProtocol(Client)  # type: ignore[assignment]
        reactor.connectTCP("127.0.0.1", port.getHost().port, client)
        spinUntil(reactor, lambda: bool(closed), "the echo and the close")
        assert b"".join(received) == b"ping"
    finally:
        port.stopListening()


@pytest.mark.parametrize(
    ("portable", "expected"),
    [("", "gateway.fast.hubreactor.HubReactor"), ("1", "EPollReactor")],
)
def test_installedWhereTheFastPathsAreOn(portable: str, expected: str) -> None:
    """
    In a fresh process, L{gateway.fast.hubreactor.install} installs the
    gateway's reactor, unless the fast paths are off; once a reactor is
    installed it leaves it be.
    """
    script = (
        "from gateway.fast import hubreactor\n"
        "first = hubreactor.install()\n"
        "from twisted.internet import reactor\n"
        "kind = type(reactor)\n"
        "print(first, hubreactor.install(), f'{kind.__module__}.{kind.__qualname__}')\n"
    )
    env = dict(os.environ, TLSGATEWAY_PORTABLE=portable)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    first, second, kind = done.stdout.split()
    assert (first, second) == (str(not portable), "False"), done.stdout
    assert kind.endswith(expected), done.stdout
