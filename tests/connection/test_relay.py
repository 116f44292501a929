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

from gateway.connection.relay import IRelay, PortableRelay
from gateway.fast import internals as fastpath
from gateway.fast.internals import halfClose, send
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.lifecycle import Event, State
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
            clientBytes=ClientBytes(self.record),
        )

    def test_providesIRelay(self) -> None:
        """
        The portable relay is one of the relays a session may be given: it
        provides the whole interface (the splice relay's test checks it).
        """
        self.assertTrue(verifyObject(IRelay, self.relay))

    def test_bytesAreForwardedAndWhatTheClientIsSentCounted(self) -> None:
        """
        The relay counts what it writes to the client's socket; what the
        client sends was counted by the connection's owner, which received
        it (L{gateway.rules.clientbytes}).
        """
        self.relay.clientData(b"hello")
        self.relay.upstreamData(b"world!")
        self.assertEqual(self.upstream.value(), b"hello")
        self.assertEqual(self.client.value(), b"world!")
        self.assertEqual((self.record.bytesIn, self.record.bytesOut), (0, 6))

    def test_writesToATLSLayerAreNotCountedHere(self) -> None:
        """
        Given no count (the client is a TLS layer, which counts the
        ciphertext it writes), the relay counts nothing.
        """
        client, upstream = HalfCloseableTransport(), HalfCloseableTransport()
        relay = PortableRelay(
            client,
            upstream,
            self.record,
            self.clock,
            60.0,
            lambda: None,
            owner=TableOwner(self.record, State.RELAYING),
            clientBytes=None,
        )
        relay.upstreamData(b"world!")
        self.assertEqual(client.value(), b"world!")
        self.assertEqual((self.record.bytesIn, self.record.bytesOut), (0, 0))

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
    reactor._poller.close()


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
    assert transport.protocol.writeLost  # type: ignore[attr-defined]
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
    assert transport.protocol.writeLost  # type: ignore[attr-defined]
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


# -- a reset reaches the other peer after what it was sent --------------------------


def _relayTo(
    transport: tcp.Connection, clock: Clock, idleTimeout: float = 60.0
) -> tuple[PortableRelay, HalfCloseableTransport, ConnectionRecord, list[bool]]:
    """
    A portable relay whose client is the real TCP C{transport} and whose
    upstream is in memory.
    """
    upstream = HalfCloseableTransport()
    upstream.protocol = Protocol()
    record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0)
    done: list[bool] = []
    relay = PortableRelay(
        transport,
        upstream,
        record,
        clock,
        idleTimeout,
        lambda: done.append(True),
        owner=TableOwner(record, State.RELAYING),
        clientBytes=ClientBytes(record),
    )
    return relay, upstream, record, done


def _lostBy(relay: PortableRelay, reactor: EPollReactor) -> None:
    """
    Let the client transport's abort run (Twisted closes the socket on the
    next reactor turn), then tell the relay it is lost.
    """
    reactor.runUntilCurrent()
    relay.clientLost(Failure(ConnectionLost()))


def _receiveUntilReset(far: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = far.recv(1 << 16)
        except ConnectionResetError:
            return received
        assert chunk, f"FIN after {len(received)} bytes, not a reset"
        received += chunk


def test_anUpstreamResetWaitsForWhatTheClientWasSent(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    The upstream sent its last bytes and reset: the bytes still in
    Twisted's buffer for the client go out first, then the reset.
    """
    transport, far, reactor = wire
    clock = Clock()
    relay, _upstream, record, done = _relayTo(transport, clock)
    transport.write(b"the last words")
    relay.upstreamLost(Failure(ConnectionLost()))
    assert not transport._aborting
    assert record.extra["closed_by"] == "upstream_reset"
    transport.doWrite()
    _lostBy(relay, reactor)
    assert _receiveUntilReset(far) == b"the last words"
    assert done == [True]
    assert clock.getDelayedCalls() == []


def test_withNothingQueuedTheResetComesOnTheNextWriteTurn(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    transport, far, reactor = wire
    clock = Clock()
    relay, _upstream, _record, done = _relayTo(transport, clock)
    relay.upstreamLost(Failure(ConnectionLost()))
    assert transport in reactor.getWriters()
    transport.doWrite()
    _lostBy(relay, reactor)
    assert _receiveUntilReset(far) == b""
    assert done == [True]
    assert clock.getDelayedCalls() == []


def test_aClientThatNeverReadsIsResetAtTheIdleTimeout(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    Waiting for the buffer to drain is bounded: a reader that never takes
    the bytes is reset after C{idle_timeout}, as an idle peer would be.
    """
    transport, far, reactor = wire
    clock = Clock()
    relay, _upstream, _record, done = _relayTo(transport, clock, idleTimeout=30.0)
    transport.write(b"never written")
    relay.upstreamLost(Failure(ConnectionLost()))
    clock.advance(29.9)
    assert not transport._aborting
    clock.advance(0.1)
    assert transport._aborting
    _lostBy(relay, reactor)
    assert _receiveUntilReset(far) == b""
    assert done == [True]


def test_anAbortCutsTheWaitForTheBuffer(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    A shutdown that will not wait (the drain timeout, a second signal)
    resets at once what is still flushing.
    """
    transport, far, reactor = wire
    clock = Clock()
    relay, _upstream, _record, done = _relayTo(transport, clock)
    transport.write(b"dropped")
    relay.upstreamLost(Failure(ConnectionLost()))
    relay.abort(Event.SHUT_DOWN, "gateway stopped")
    assert transport._aborting
    _lostBy(relay, reactor)
    assert _receiveUntilReset(far) == b""
    assert done == [True]
    assert clock.getDelayedCalls() == []


def test_aClientResetWaitsForWhatTheUpstreamWasSent(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    The same the other way: the real transport is the upstream's.
    """
    transport, far, reactor = wire
    clock = Clock()
    client = HalfCloseableTransport()
    client.protocol = Protocol()
    record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0)
    done: list[bool] = []
    relay = PortableRelay(
        client,
        transport,
        record,
        clock,
        60.0,
        lambda: done.append(True),
        owner=TableOwner(record, State.RELAYING),
        clientBytes=ClientBytes(record),
    )
    transport.write(b"request tail")
    relay.clientLost(Failure(ConnectionLost()))
    assert record.extra["closed_by"] == "client_reset"
    transport.doWrite()
    reactor.runUntilCurrent()
    relay.upstreamLost(Failure(ConnectionLost()))
    assert _receiveUntilReset(far) == b"request tail"
    assert done == [True]


def test_aPeerThatHalfClosedIsResetAtOnce(
    wire: tuple[tcp.Connection, socket.socket, EPollReactor],
) -> None:
    """
    After the upstream's FIN the client was half-closed, so all it was
    sent is written: the upstream's later reset reaches it at once.
    """
    transport, far, reactor = wire
    clock = Clock()
    relay, _upstream, _record, done = _relayTo(transport, clock)
    relay.upstreamData(b"response")
    relay.upstreamReadClosed()
    transport.doWrite()
    relay.upstreamLost(Failure(ConnectionLost()))
    assert transport._aborting
    _lostBy(relay, reactor)
    assert far.recv(100) == b"response"
    assert far.recv(100) == b""
    assert done == [True]
