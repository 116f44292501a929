"""
A client socket accepted in the hub as its connection's transport
(L{gateway.connection.hubclient}): what the pre-read writes and closes,
what it reads, and the two ways the socket is handed on; on a private
epoll reactor against real loopback sockets, every wait bounded.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import cast

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.hubclient import HubClient, ipAddress
from gateway.fast import hub as fasthub
from tests.helpers import fastPathOnly
from tests.hubreactor import KINDS, privateReactor, spinUntil

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux epoll only"),
    fastPathOnly,
    pytest.mark.timeout(60),
]

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor


@implementer(IHalfCloseableProtocol)
class Owner(Protocol):
    """
    What a connection's owner sees, and, as the gateway's owner does, a
    second C{makeConnection} only changes its transport.
    """

    def __init__(self) -> None:
        self.made = 0
        self.received: list[bytes] = []
        self.readClosed = 0
        self.lost: list[Failure] = []

    def makeConnection(self, transport: ITransport) -> None:
        if self.transport is not None:
            self.transport = transport
            return
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.readClosed += 1

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost.append(reason)


@pytest.fixture(params=KINDS)
def reactor(request: pytest.FixtureRequest) -> Iterator[EPollReactor]:
    yield from privateReactor(request.param)


def accepted(
    reactor: EPollReactor, owner: Owner, sent: bytes = b"", *, shut: bool = False
) -> tuple[socket.socket, HubClient]:
    """
    A connection whose client sent C{sent} (and its FIN, if C{shut})
    before the hub made it C{owner}'s.
    """
    with socket.create_server(("127.0.0.1", 0)) as listening:
        peer = socket.create_connection(listening.getsockname())
        if sent:
            peer.sendall(sent)
        if shut:
            peer.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        sock, address = listening.accept()
    sock.setblocking(False)
    client = HubClient(
        fasthub.hubFor(reactor),
        sock,
        socket.AF_INET,
        ipAddress(socket.AF_INET, address),
    )
    client.connect(owner)
    return peer, client


@pytest.fixture
def pair(reactor: EPollReactor) -> Iterator[tuple[socket.socket, HubClient, Owner]]:
    """
    A connected pair: the peer's socket, and the accepted side as a
    L{HubClient} of an L{Owner}.
    """
    owner = Owner()
    peer, client = accepted(reactor, owner)
    yield peer, client, owner
    peer.close()
    if client.open:
        client.abortConnection()


def receiveAll(peer: socket.socket, reactor: EPollReactor, size: int) -> bytes:
    peer.setblocking(False)
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < size:
        assert time.monotonic() < deadline, f"timed out after {len(got)} bytes"
        reactor.iterate(0.001)
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_theOwnerReadsWhatThePeerSends(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    peer, client, owner = pair
    assert owner.made == 1
    assert cast(object, owner.transport) is client
    peer.sendall(b"hello")
    spinUntil(reactor, lambda: owner.received == [b"hello"], "the bytes")


def test_thePeersFinIsAHalfCloseForAHalfCloseableOwner(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    peer, client, owner = pair
    peer.shutdown(socket.SHUT_WR)
    spinUntil(reactor, lambda: owner.readClosed == 1, "the half-close")
    assert owner.lost == []
    client.write(b"still open")
    assert peer.recv(100) == b"still open"


def test_aWriteTheKernelCannotTakeIsSentWhenItCanThenClosed(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    """
    More than the socket buffers hold, then C{loseConnection}: every byte
    arrives, in order, before the close, and the owner hears of it once.
    """
    peer, client, owner = pair
    payload = os.urandom(8 << 20)
    client.write(payload)
    assert client.writing, "the kernel cannot take 8 MiB at once"
    client.loseConnection()
    assert owner.lost == []
    assert receiveAll(peer, reactor, len(payload) + 1) == payload
    spinUntil(reactor, lambda: len(owner.lost) == 1, "the close")
    assert owner.lost[0].check(ConnectionDone)


def test_aHalfCloseSendsFinAfterWhatIsQueuedAndReadsOn(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    """
    A refusal's alert, then FIN, and reading until the client closes
    (L{gateway.connection.preread}'s linger).
    """
    peer, client, owner = pair
    client.write(b"\x15\x03\x03\x00\x02\x02\x70")
    client.loseWriteConnection()
    assert receiveAll(peer, reactor, 100) == b"\x15\x03\x03\x00\x02\x02\x70"
    peer.sendall(b"late")
    spinUntil(reactor, lambda: owner.received == [b"late"], "a read after the FIN")
    assert owner.lost == []


def test_anAbortClosesAtOnceAndSaysSo(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    peer, client, owner = pair
    client.abortConnection()
    assert len(owner.lost) == 1
    assert owner.lost[0].check(ConnectionAborted)
    assert not client.open
    peer.settimeout(5)
    assert peer.recv(10) == b""


def test_pausedItReadsNothingUntilResumed(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    peer, client, owner = pair
    client.pauseProducing()
    peer.sendall(b"wait")
    for _ in range(20):
        reactor.iterate(0.005)
    assert owner.received == []
    client.resumeProducing()
    spinUntil(reactor, lambda: owner.received == [b"wait"], "the resumed read")


def test_detachedTheSocketIsTheCallersAndTheOwnerHearsNothing(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    """
    The splice relay takes the socket: the hub no longer reads it, and
    its end is the relay's business.
    """
    peer, client, owner = pair
    sock = client.detach()
    peer.sendall(b"for the relay")
    for _ in range(20):
        reactor.iterate(0.005)
    assert owner.received == []
    assert sock.recv(100) == b"for the relay"
    sock.close()
    assert owner.lost == []


def test_adoptedByTheReactorTheOwnerGoesOnWithTwistedsTransport(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    """
    A verdict the hub does not serve: the reactor adopts the socket for
    the same owner, which is not started again; what the peer sends next,
    and the end, reach it through Twisted's transport.
    """
    peer, client, owner = pair
    peer.sendall(b"hello")
    spinUntil(reactor, lambda: owner.received == [b"hello"], "the pre-read")
    transport = client.toReactor(reactor)
    assert isinstance(transport, tcp.Server)
    assert owner.transport is transport
    assert owner.made == 1
    assert not client.open
    peer.sendall(b"more")
    spinUntil(reactor, lambda: owner.received[-1:] == [b"more"], "the adopted read")
    transport.write(b"answer")
    assert receiveAll(peer, reactor, len(b"answer")) == b"answer"
    peer.shutdown(socket.SHUT_WR)
    spinUntil(reactor, lambda: owner.readClosed == 1, "the adopted half-close")
    transport.loseConnection()
    spinUntil(reactor, lambda: len(owner.lost) == 1, "the adopted end")
    assert owner.lost[0].check(ConnectionDone)


def test_adoptedWhilePausedItStaysPaused(
    reactor: EPollReactor, pair: tuple[socket.socket, HubClient, Owner]
) -> None:
    peer, client, owner = pair
    client.pauseProducing()
    transport = client.toReactor(reactor)
    peer.sendall(b"wait")
    for _ in range(20):
        reactor.iterate(0.005)
    assert owner.received == []
    transport.resumeProducing()
    spinUntil(reactor, lambda: owner.received == [b"wait"], "the resumed read")
    transport.abortConnection()
    spinUntil(reactor, lambda: len(owner.lost) == 1, "the end")


class Pausing(Owner):
    """
    An owner that, as a session does while it connects upstream, pauses
    its client once it has what it needs.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        cast(HubClient, self.transport).pauseProducing()


def test_whatTheClientSentBeforeTheAcceptIsReadAtOnce(reactor: EPollReactor) -> None:
    """
    The ClientHello is there when the connection is accepted: it is read
    in the same call, and an owner that then pauses leaves the socket
    unregistered, for the relay to take.
    """
    owner = Pausing()
    peer, client = accepted(reactor, owner, b"hello")
    try:
        assert owner.received == [b"hello"]
        assert not client.reading
        sock = client.detach()
        peer.sendall(b"next")
        sock.setblocking(True)
        sock.settimeout(5)
        assert sock.recv(10) == b"next"
        sock.close()
    finally:
        peer.close()


def test_aClientThatLeftBeforeTheAcceptIsToldOnce(reactor: EPollReactor) -> None:
    owner = Owner()
    peer, client = accepted(reactor, owner, b"", shut=True)
    try:
        assert owner.readClosed == 1
        assert not client.reading
        for _ in range(10):
            reactor.iterate(0.005)
        assert owner.readClosed == 1
    finally:
        peer.close()
        client.abortConnection()


def test_nothingSentYetTheSocketWaitsInTheHub(reactor: EPollReactor) -> None:
    owner = Owner()
    peer, client = accepted(reactor, owner)
    try:
        assert owner.received == []
        assert client.reading
        peer.sendall(b"late hello")
        spinUntil(reactor, lambda: owner.received == [b"late hello"], "the read")
    finally:
        peer.close()
        client.abortConnection()
