"""
The pre-read protocol, driven through an in-memory transport and clock.
"""

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.connection.preread import (
    ON_DATA,
    ON_DEADLINE,
    ON_FIN,
    REFUSAL_LINGER,
    IStage,
    PrereadProtocol,
)
from gateway.connection.strategy import IProtocolStrategy
from gateway.core.strictness import ForbiddenEvent
from gateway.core.vocabulary import Status
from gateway.protocols.postgres import POSTGRES
from gateway.protocols.tls import TCP, TLS
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.decision import Reject
from gateway.rules.lifecycle import DISCARDING, READING, Input, State, allowedStates
from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord
from gateway.wire.clienthello import ClientHello
from gateway.wire.proxyprotocol import (
    Command,
    ProxyAddress,
    ProxyHeader,
    authorityTLV,
    encode,
)
from tests.transports import HalfCloseableTransport, PromptClientTransport

HELLO = makeClientHello("db.example.com", [b"h2"])


@implementer(IStage)
class RecordingStage:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.eof = False
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.eof = True

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True

    def shutdown(self) -> None:
        pass


class RecordingListener:
    def __init__(self, strategy: IProtocolStrategy = TLS) -> None:
        self.strategy = strategy
        self.atAccept: list[bytes] = []
        self.handoffs: list[tuple[ClientHello, bytes]] = []
        self.endings: list[ConnectionRecord] = []
        self.accepts: list[PrereadProtocol] = []
        self.headers: list[ProxyHeader] = []
        self.refuseAtAccept: str | None = None
        self.refuseProxied: str | None = None
        self.stage = RecordingStage()

    def accepted(self, protocol: PrereadProtocol) -> Reject | None:
        self.accepts.append(protocol)
        if self.refuseAtAccept is not None:
            return Reject(Status(self.refuseAtAccept), "refused at accept")
        return None

    def proxied(self, protocol: PrereadProtocol, header: ProxyHeader) -> Reject | None:
        self.headers.append(header)
        if self.refuseProxied is not None:
            return Reject(Status(self.refuseProxied), "refused for its address")
        return None

    def handoff(
        self, protocol: PrereadProtocol, hello: ClientHello, buffered: bytes
    ) -> IStage | Reject:
        self.handoffs.append((hello, buffered))
        return self.stage

    def handoffPlaintext(
        self, protocol: PrereadProtocol, start: object
    ) -> IStage | Reject:
        raise AssertionError("these connections all start with TLS")

    def handoffAtAccept(
        self, protocol: PrereadProtocol, buffered: bytes
    ) -> IStage | Reject:
        self.atAccept.append(buffered)
        return self.stage

    def ended(self, protocol: PrereadProtocol) -> None:
        self.endings.append(protocol.record)


def connected(
    listener: RecordingListener,
    transport: HalfCloseableTransport,
    clock: MemoryReactorClock | None = None,
) -> PrereadProtocol:
    """
    A pre-read protocol of C{listener} (a 64-byte hello bound, a 10 s
    timeout), connected to C{transport}.
    """
    protocol = PrereadProtocol(
        listener,
        ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0),
        clock or MemoryReactorClock(),
        10,
        64,
    )
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol


class PrereadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.listener = RecordingListener()
        self.record = ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)
        self.protocol = PrereadProtocol(
            self.listener, self.record, self.clock, 10, 16384
        )
        self.transport = PromptClientTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def test_helloSplitInTwoIsHandedOffWhole(self) -> None:
        self.protocol.dataReceived(HELLO[:7])
        self.assertEqual(self.listener.handoffs, [])
        self.protocol.dataReceived(HELLO[7:])
        [(hello, buffered)] = self.listener.handoffs
        self.assertEqual((hello.serverName, hello.alpn), ("db.example.com", ("h2",)))
        self.assertEqual(buffered, HELLO)
        self.assertEqual(self.record.sni, "db.example.com")
        self.assertEqual(self.record.bytesIn, len(HELLO))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_helloOneByteAtATime(self) -> None:
        for i in range(len(HELLO)):
            self.protocol.dataReceived(HELLO[i : i + 1])
        self.assertEqual(len(self.listener.handoffs), 1)

    def test_laterEventsGoToTheStage(self) -> None:
        self.protocol.dataReceived(HELLO)
        self.protocol.dataReceived(b"after")
        self.protocol.readConnectionLost()
        self.protocol.connectionLost()
        stage = self.listener.stage
        self.assertEqual(
            (stage.received, stage.eof, stage.lost), ([b"after"], True, True)
        )
        self.assertEqual(self.listener.endings, [])

    def test_theOwnerCountsWhatItHandsTheStage(self) -> None:
        """
        Every byte the client sends is counted by the owner as it arrives,
        before the stage sees it: no stage counts what it is given.
        """
        self.protocol.dataReceived(HELLO)
        self.protocol.dataReceived(b"after")
        self.assertEqual(self.record.bytesIn, len(HELLO) + 5)
        self.assertIs(
            self.protocol.clientBytes.forWritesTo(self.transport),
            self.protocol.clientBytes,
        )

    def test_theOwnerStampsTheEndTheStageReports(self) -> None:
        """
        The stage says when it is over; the owner stamps the end with its
        own clock and hands the record to the listener, once.
        """
        self.protocol.dataReceived(HELLO)
        self.clock.advance(3)
        self.protocol.connectionLost()
        self.assertIsNone(self.record.ended)
        self.assertEqual(self.listener.endings, [])
        self.protocol.stageEnded()
        self.assertEqual(self.record.ended, 3)
        self.assertEqual(self.listener.endings, [self.record])

    def test_aStageThatEndsTwiceIsABug(self) -> None:
        """
        A second end raises under tests (L{gateway.core.strictness}): the
        connection is not logged twice.
        """
        self.protocol.dataReceived(HELLO)
        self.protocol.stageEnded()
        self.clock.advance(1)
        with self.assertRaises(ForbiddenEvent):
            self.protocol.stageEnded()
        self.assertEqual(self.record.ended, 0)
        self.assertEqual(len(self.listener.endings), 1)

    def test_silentClientIsDroppedAtTimeout(self) -> None:
        self.clock.advance(9.9)
        self.assertTrue(self.transport.connected)
        self.clock.advance(0.1)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "preread_timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbageIsRefusedAndNeverHandedOff(self) -> None:
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "bad_client_hello")
        self.protocol.dataReceived(HELLO)
        self.assertEqual(self.listener.handoffs, [])
        self.assertEqual(self.listener.endings, [self.record])

    def test_tooLargeHelloIsRefused(self) -> None:
        protocol = PrereadProtocol(self.listener, self.record, self.clock, 10, 100)
        transport = PromptClientTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(HELLO)
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertEqual(self.listener.handoffs, [])

    def test_clientFinWithoutAByteIsClientClosed(self) -> None:
        self.protocol.readConnectionLost()
        self.assertEqual(self.record.status, "client_closed")
        self.assertEqual(self.record.reason, "client closed before sending anything")
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.transport.value(), b"")

    def test_resetWithoutAByteIsClientClosed(self) -> None:
        self.protocol.connectionLost()
        self.assertEqual(self.record.status, "client_closed")
        self.assertEqual(self.listener.endings, [self.record])

    def test_resetInsideTheHelloIsBadClientHello(self) -> None:
        self.protocol.dataReceived(HELLO[:20])
        self.protocol.connectionLost()
        self.assertEqual(self.record.status, "bad_client_hello")

    def test_clientFinBeforeHelloIsBadClientHello(self) -> None:
        self.protocol.dataReceived(HELLO[:20])
        self.protocol.readConnectionLost()
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertIn("20 bytes", self.record.reason)
        self.assertFalse(self.transport.connected)

    def test_shutdownDuringPrereadIsLoggedShutdown(self) -> None:
        self.protocol.shutdown()
        self.assertTrue(self.transport.aborted)
        self.assertEqual(self.record.status, "shutdown")


class AcceptTests(SynchronousTestCase):
    def test_theListenerHearsOfEveryConnectionBeforeItsBytes(self) -> None:
        listener = RecordingListener()
        listener.refuseAtAccept = "limited"
        clock = MemoryReactorClock()
        record = ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)
        protocol = PrereadProtocol(listener, record, clock, 10, 16384)
        transport = PromptClientTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertEqual(listener.accepts, [protocol])
        self.assertFalse(transport.connected)
        self.assertEqual(clock.getDelayedCalls(), [])
        protocol.dataReceived(HELLO)
        self.assertEqual((record.status, record.bytesIn), ("limited", 0))
        self.assertEqual(listener.handoffs, [])


HEADER = ProxyHeader(
    2,
    Command.PROXY,
    ProxyAddress("203.0.113.7", 50123),
    ProxyAddress("192.0.2.10", 443),
    (authorityTLV("db.example.com"),),
)
WIRE = encode(HEADER)


class ProxyHeaderTests(SynchronousTestCase):
    """
    A listener with C{accept_proxy_protocol}: the header first, then the
    ClientHello, with one deadline for both.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.listener = RecordingListener()
        self.record = ConnectionRecord("l", "10.0.0.1:9", 0.0, 0.0)
        self.protocol = PrereadProtocol(
            self.listener, self.record, self.clock, 10, 16384, acceptProxy=True
        )
        self.transport = PromptClientTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def test_headerAndHelloInOneSegment(self) -> None:
        self.protocol.dataReceived(WIRE + HELLO)
        self.assertEqual(self.listener.headers, [HEADER])
        self.assertEqual(self.protocol.proxyHeader, HEADER)
        [(hello, buffered)] = self.listener.handoffs
        self.assertEqual(buffered, HELLO)
        self.assertEqual(hello.serverName, "db.example.com")
        self.assertEqual(self.record.bytesIn, len(WIRE) + len(HELLO))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_byteByByte(self) -> None:
        data = (
            encode(ProxyHeader(1, Command.PROXY, HEADER.source, HEADER.destination))
            + HELLO
        )
        for i in range(len(data)):
            self.protocol.dataReceived(data[i : i + 1])
        self.assertEqual(len(self.listener.headers), 1)
        [(_, buffered)] = self.listener.handoffs
        self.assertEqual(buffered, HELLO)
        self.assertEqual(self.record.bytesIn, len(data))

    def test_helloWithoutHeaderIsBadProxyHeader(self) -> None:
        self.protocol.dataReceived(HELLO)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "bad_proxy_header")
        self.assertIn("missing", self.record.reason)
        self.assertEqual(self.listener.handoffs, [])

    def test_garbageHeaderIsBadProxyHeaderWithItsReason(self) -> None:
        self.protocol.dataReceived(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n")
        self.assertEqual(self.record.status, "bad_proxy_header")
        self.assertTrue(str(self.record.reason).startswith("bad_address: "))

    def test_slowHeaderTimesOutAsBadProxyHeader(self) -> None:
        self.protocol.dataReceived(WIRE[:10])
        self.clock.advance(10)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "bad_proxy_header")
        self.assertEqual(
            self.record.reason,
            "timeout: no complete PROXY header after 10s (10 bytes)",
        )

    def test_slowHelloAfterTheHeaderIsPrereadTimeout(self) -> None:
        self.protocol.dataReceived(WIRE + HELLO[:5])
        self.clock.advance(10)
        self.assertEqual(self.record.status, "preread_timeout")

    def test_closeInsideTheHeaderIsTruncated(self) -> None:
        self.protocol.dataReceived(WIRE[:20])
        self.protocol.readConnectionLost()
        self.assertEqual(self.record.status, "bad_proxy_header")
        self.assertIn("truncated", self.record.reason)
        self.assertFalse(self.transport.connected)

    def test_closeBeforeAnythingIsClientClosed(self) -> None:
        """
        A balancer's TCP check (connect, close) sent no header to be bad:
        the client closed.
        """
        self.protocol.readConnectionLost()
        self.assertEqual(self.record.status, "client_closed")
        self.assertEqual(self.record.reason, "client closed before sending anything")

    def test_lostDuringTheHeader(self) -> None:
        self.protocol.dataReceived(WIRE[:3])
        self.protocol.connectionLost()
        self.assertEqual(self.record.status, "bad_proxy_header")
        self.assertEqual(self.listener.endings, [self.record])

    def test_refusedForTheProxiedAddressReadsNoFurther(self) -> None:
        self.listener.refuseProxied = "denied"
        self.protocol.dataReceived(WIRE + HELLO)
        self.assertEqual(self.record.status, "denied")
        self.assertEqual(self.listener.handoffs, [])
        self.assertIsNone(self.record.sni)
        self.assertFalse(self.transport.connected)


class RefusalAlertTests(SynchronousTestCase):
    """
    A refused TLS client gets the alert a TLS server would send, then a
    FIN; the connection is closed when the client closes too, or after
    L{REFUSAL_LINGER}.
    """

    def connect(
        self, refuseAtAccept: str | None = None, **keys: Any
    ) -> tuple[PrereadProtocol, HalfCloseableTransport]:
        self.clock = MemoryReactorClock()
        self.listener = RecordingListener()
        self.listener.refuseAtAccept = refuseAtAccept
        self.record = ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)
        protocol = PrereadProtocol(
            self.listener, self.record, self.clock, 10, 16384, **keys
        )
        transport = HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_refusalAtAcceptSendsTheAlertAtOnceAndWaitsForTheClient(self) -> None:
        protocol, transport = self.connect("limited")
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.ACCESS_DENIED, 0x0301)
        )
        self.assertEqual(self.record.bytesOut, 7)
        # Half-closed, still reading: the hello that comes is discarded.
        self.assertTrue(transport.writeClosed)
        self.assertTrue(transport.connected)
        protocol.dataReceived(HELLO)
        self.assertEqual((self.listener.handoffs, self.record.bytesIn), ([], 0))
        protocol.readConnectionLost()
        self.assertFalse(transport.connected)
        self.assertEqual(self.listener.endings, [self.record])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aClientThatNeverClosesIsClosedAfterTheLinger(self) -> None:
        _, transport = self.connect("denied")
        self.clock.advance(REFUSAL_LINGER - 0.1)
        self.assertTrue(transport.connected)
        self.clock.advance(0.1)
        self.assertFalse(transport.connected)
        self.assertEqual(self.record.status, "denied")

    def test_malformedHelloGetsDecodeErrorInItsRecordVersion(self) -> None:
        protocol, transport = self.connect()
        broken = bytearray(HELLO)
        broken[9:11] = b"\x04\x09"  # legacy_version: not TLS
        protocol.dataReceived(bytes(broken))
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.DECODE_ERROR, 0x0301)
        )
        self.assertTrue(transport.writeClosed)

    def test_plaintextGetsNoTLSAlert(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.connected)

    def test_aClientThatStoppedShortGetsNoAlert(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(HELLO[:30])
        protocol.readConnectionLost()
        self.assertEqual(
            (self.record.status, transport.value()), ("bad_client_hello", b"")
        )
        self.assertFalse(transport.connected)

    def test_timeoutsAndProxyHeadersGetNoAlert(self) -> None:
        _, transport = self.connect()
        self.clock.advance(10)
        self.assertEqual(
            (self.record.status, transport.value()), ("preread_timeout", b"")
        )
        protocol, transport = self.connect(acceptProxy=True)
        protocol.dataReceived(HELLO)
        self.assertEqual(
            (self.record.status, transport.value()), ("bad_proxy_header", b"")
        )

    def test_anExplicitAlertOverridesTheStatusOne(self) -> None:
        protocol, transport = self.connect()
        protocol.refuse(
            Status.DENIED, "too old", alert=AlertDescription.PROTOCOL_VERSION
        )
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.PROTOCOL_VERSION, 0x0301)
        )

    def test_postgresRefusalBeforeTLSGetsNoTLSAlert(self) -> None:
        _, transport = self.connect("denied", strategy=POSTGRES)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.connected)

    def test_theStrategyIsTheListenersUnlessGiven(self) -> None:
        """
        A connection speaks its listener's protocol: one built without a
        strategy of its own reads no hello on a C{mode = tcp} listener,
        and is served at accept.
        """
        listener = RecordingListener(TCP)
        protocol = connected(listener, PromptClientTransport())
        self.assertEqual(listener.atAccept, [b""])
        protocol.dataReceived(b"not a hello")
        self.assertEqual(listener.handoffs, [])
        self.assertEqual(listener.stage.received, [b"not a hello"])

    def test_tcpModeGetsNoTLSAlert(self) -> None:
        _, transport = self.connect("limited", strategy=TCP)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.connected)


_TABLES: list[tuple[Input, Mapping[State, Callable[..., None]]]] = [
    (Input.DATA, ON_DATA),
    (Input.FIN, ON_FIN),
    (Input.DEADLINE, ON_DEADLINE),
]


@pytest.mark.parametrize(("input", "handlers"), _TABLES)
def test_everyReadingStateHandlesEveryInput(
    input: Input, handlers: Mapping[State, Callable[..., None]]
) -> None:
    assert set(READING) <= set(handlers)


@pytest.mark.parametrize(("input", "handlers"), _TABLES)
def test_noHandlerWhereTheTableAllowsNoneOfItsEvents(
    input: Input, handlers: Mapping[State, Callable[..., None]]
) -> None:
    """
    A state has a handler for an input only if the lifecycle table lets
    that input lead somewhere from it (data aside, which a closing
    connection discards).
    """
    discarded = DISCARDING if input is Input.DATA else frozenset()
    assert set(handlers) - discarded <= allowedStates(input)
    assert {s for s, h in ON_DATA.items() if h is PrereadProtocol._discard} == (
        DISCARDING
    )


def _fire(protocol: PrereadProtocol, input: Input) -> None:
    if input is Input.DATA:
        protocol.dataReceived(b"x")
    elif input is Input.FIN:
        protocol.readConnectionLost()
    else:
        protocol._deadline()


@given(state=st.sampled_from(State), input=st.sampled_from(Input))
def test_anInputInAStateWithNoHandlerIsABug(state: State, input: Input) -> None:
    """
    Before a stage, every client event goes to the current state's
    handler; in a state without one it is a forbidden event (it raises
    under tests), and the state stays.
    """
    handlers = dict(_TABLES)[input]
    assume(state not in handlers)
    protocol = connected(RecordingListener(), PromptClientTransport())
    protocol.state = state
    with pytest.raises(ForbiddenEvent):
        _fire(protocol, input)
    assert protocol.state is state


def test_theRefusalsLingerEndsThroughTheDeadlineTable() -> None:
    """
    One timer callback serves both deadlines: in C{closing} it is the
    refusal's linger that ends.
    """
    clock = MemoryReactorClock()
    listener = RecordingListener()
    listener.refuseAtAccept = "denied"
    transport = HalfCloseableTransport()
    protocol = connected(listener, transport, clock)
    assert protocol.state is State.CLOSING
    assert transport.writeClosed
    clock.advance(REFUSAL_LINGER)
    assert not transport.connected
    assert clock.getDelayedCalls() == []
