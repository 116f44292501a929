"""
The portable relay, driven through in-memory transports and a fake clock.
"""

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway import fastpath
from gateway.accesslog import ConnectionRecord
from gateway.fastpath import halfClose, send
from gateway.lifecycle import Event, State
from gateway.relay import IRelay, PortableRelay
from tests.helpers import fastPathOnly
from tests.transports import HalfCloseableTransport, TableOwner


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = HalfCloseableTransport()
        self.upstream = HalfCloseableTransport()
        for transport in (self.client, self.upstream):
            transport.protocol = Protocol()
        self.record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0)
        self.done: list[bool] = []
        self.relay = PortableRelay(
            self.client,
            self.upstream,
            self.record,
            self.clock,
            60.0,
            lambda: self.done.append(True),
            owner=TableOwner(self.record, State.RELAYING),
        )

    def test_providesIRelay(self) -> None:
        """
        The portable relay is one of the relays a session may be given: it
        provides the whole interface (the splice relay's test checks it).
        """
        self.assertTrue(verifyObject(IRelay, self.relay))

    def test_bytesAreForwardedAndCountedBothWays(self) -> None:
        self.relay.clientData(b"hello")
        self.relay.upstreamData(b"world!")
        self.assertEqual(self.upstream.value(), b"hello")
        self.assertEqual(self.client.value(), b"world!")
        self.assertEqual((self.record.bytesIn, self.record.bytesOut), (5, 6))

    def test_eachSideIsTheOthersProducer(self) -> None:
        """
        A full write buffer on one side pauses reading on the other: that is
        what bounds memory for a slow reader.
        """
        self.assertIs(self.client.producer, self.upstream)
        self.assertIs(self.upstream.producer, self.client)
        self.assertTrue(self.client.streaming)

    def test_clientFinHalfClosesUpstream(self) -> None:
        self.relay.clientReadClosed()
        self.assertTrue(self.upstream.writeClosed)
        self.assertIsNone(self.upstream.producer)
        self.assertTrue(self.client.connected)
        self.relay.upstreamData(b"still flowing")
        self.assertEqual(self.client.value(), b"still flowing")

    def test_upstreamFinHalfClosesClient(self) -> None:
        self.relay.upstreamReadClosed()
        self.assertTrue(self.client.writeClosed)
        self.assertFalse(self.upstream.writeClosed)
        self.relay.clientData(b"more")
        self.assertEqual(self.upstream.value(), b"more")

    def test_finBothWaysClosesBoth(self) -> None:
        self.relay.clientReadClosed()
        self.relay.upstreamReadClosed()
        self.assertFalse(self.client.connected)
        self.assertFalse(self.upstream.connected)
        self.assertFalse(self.client.aborted or self.upstream.aborted)
        self.relay.clientLost(Failure(ConnectionDone()))
        self.assertEqual(self.done, [])
        self.relay.upstreamLost(Failure(ConnectionDone()))
        self.assertEqual(self.done, [True])
        self.assertIsNone(self.record.status)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resetIsPropagated(self) -> None:
        self.relay.upstreamLost(Failure(ConnectionLost()))
        self.assertTrue(self.client.aborted)
        self.assertEqual(self.record.extra["closed_by"], "upstream_reset")
        self.relay.clientLost(Failure(ConnectionLost()))
        self.assertEqual(self.done, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleConnectionIsClosedAtTimeout(self) -> None:
        self.clock.advance(59)
        self.assertTrue(self.client.connected)
        self.clock.advance(1)
        self.assertTrue(self.client.aborted and self.upstream.aborted)
        self.assertEqual(self.record.status, "idle_timeout")

    def test_trafficPostponesIdleTimeout(self) -> None:
        self.clock.advance(50)
        self.relay.clientData(b"x")
        self.clock.advance(50)
        self.assertTrue(self.client.connected)
        self.relay.upstreamData(b"y")
        self.clock.advance(59.5)
        self.assertTrue(self.client.connected)
        self.clock.advance(0.5)
        self.assertEqual(self.record.status, "idle_timeout")

    def test_abortRecordsFirstCauseOnly(self) -> None:
        self.relay.abort(Event.SHUT_DOWN, "gateway stopped")
        self.relay.abort(Event.IDLE, "late")
        self.assertEqual(self.record.status, "shutdown")
        self.assertTrue(self.client.aborted and self.upstream.aborted)


# -- writing and half-closing a real TCP transport ----------------------------------


@implementer(IHalfCloseableProtocol)
class _HalfCloseable(Protocol):
    writeLost = False

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        self.writeLost = True


@pytest.fixture
def wire() -> Iterator[tuple[tcp.Connection, socket.socket, EPollReactor]]:
    """
    A Twisted TCP transport (not run by its reactor: what is sent at once
    is sent by the call under test) and the socket at its other end.
    """
    reactor = EPollReactor()
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    near.setblocking(False)
    far.settimeout(5)
    transport = tcp.Connection(near, _HalfCloseable(), reactor)
    transport.protocol.makeConnection(transport)
    transport.connected = True
    yield transport, far, reactor
    near.close()
    far.close()
    reactor._poller.close()  # type: ignore[attr-defined]


@fastPathOnly
def test_sendGoesOutAtOnceWhenNothingIsQueued(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    No buffering and no registration for writability: the bytes are in
    the kernel when C{send} returns.
    """
    transport, far, reactor = wire
    send(transport, b"hello")
    assert far.recv(100) == b"hello"
    assert transport._tempDataLen == 0
    assert transport not in reactor.getWriters()


def test_sendQueuesBehindQueuedBytes(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    Bytes already in Twisted's buffer go first: C{send} queues behind them.
    """
    transport, far, _reactor = wire
    transport.write(b"first ")
    send(transport, b"second")
    assert transport._tempDataBuffer == [b"first ", b"second"]
    transport.doWrite()
    assert far.recv(100) == b"first second"


@fastPathOnly
def test_whatTheKernelDoesNotTakeIsQueued(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    transport, far, reactor = wire
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 16384  # 4 MiB: more than any socket buffer
    send(transport, data)
    queued = transport._tempDataLen
    assert 0 < queued < len(data)
    assert transport in reactor.getWriters()
    received = b""
    while len(received) < len(data) - queued:
        received += far.recv(1 << 20)
    assert received == data[: len(data) - queued]


def test_sendAfterAbortSendsNothing(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    transport, far, _reactor = wire
    transport.abortConnection()
    send(transport, b"late")
    far.settimeout(0.2)
    with pytest.raises(TimeoutError):
        far.recv(100)


@fastPathOnly
def test_halfCloseSendsFinAtOnce(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    transport, far, _reactor = wire
    send(transport, b"last words")
    halfClose(transport)
    assert far.recv(100) == b"last words"
    assert far.recv(100) == b""
    assert transport._writeDisconnected
    assert transport.protocol.writeLost
    far.sendall(b"the other way still works")
    assert transport.socket.recv(100) == b"the other way still works"


def test_halfCloseWaitsForQueuedBytes(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    With bytes queued, the FIN is Twisted's: after them.
    """
    transport, far, _reactor = wire
    transport.write(b"queued")
    halfClose(transport)
    assert not transport._writeDisconnected
    transport.doWrite()
    assert far.recv(100) == b"queued"
    assert far.recv(100) == b""


def test_sendWithTheFastPathsOffIsTwistedsWrite(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The fallback (C{TLSGATEWAY_PORTABLE=1}, or a Twisted without the
    internals): Twisted's own C{write}, sent on the writable event.
    """
    monkeypatch.setattr(fastpath, "DIRECT_TCP", False)
    transport, far, reactor = wire
    send(transport, b"hello")
    assert transport in reactor.getWriters()
    transport.doWrite()
    assert far.recv(100) == b"hello"


def test_halfCloseWithTheFastPathsOffIsTwistedsLoseWriteConnection(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastpath, "DIRECT_TCP", False)
    transport, far, _reactor = wire
    send(transport, b"last words")
    halfClose(transport)
    assert not transport._writeDisconnected
    transport.doWrite()
    assert far.recv(100) == b"last words"
    assert far.recv(100) == b""
    assert transport.protocol.writeLost
    far.sendall(b"the other way still works")
    assert transport.socket.recv(100) == b"the other way still works"


def test_theDirectPathNeedsTwistedsInternals() -> None:
    """
    A Twisted release without what the direct path uses turns it off at
    import: L{fastpath.hasInternals} is what decides.
    """
    assert fastpath.hasInternals(tcp.Connection, ("_aborting", "_tempDataLen"))

    class Renamed:
        _aborting = False

        def __init__(self) -> None:
            self._pendingLength = 0

    assert not fastpath.hasInternals(Renamed, ("_aborting", "_tempDataLen"))
    assert fastpath.hasInternals(Renamed, ("_aborting", "_pendingLength"))
