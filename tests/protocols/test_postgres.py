"""
L{gateway.protocols.postgres} and the C{protocol = postgres} and C{mode = tcp} paths
of the pre-read, the listener and the session, in memory: the preamble
answered byte by byte, plaintext refused or relayed, the C{SSLRequest} the
gateway sends a server before TLS, termination reading the startup message
inside TLS, cancel keys learnt from the server and cancels sent where the
key came from.  No sockets: L{MemoryReactorClock} connections, string
transports, a pyOpenSSL client on memory BIOs.
"""

from __future__ import annotations

import contextlib
from itertools import pairwise
from typing import Any

import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ListenerConfig, RouteConfig, ServerConfig
from gateway.connection.listener import ListenerFactory
from gateway.connection.preread import PrereadProtocol
from gateway.connection.session import UpstreamRuntime
from gateway.protocols.postgres import (
    CANCEL_REASON,
    POSTGRES,
    CancelOwner,
    CancelRegistry,
    ClientPreamble,
    KeyWatcher,
    OneServer,
    PlaintextStart,
    plaintextRefused,
)
from gateway.protocols.table import strategyFor
from gateway.protocols.tls import TCP
from gateway.rules.accesslog import ConnectionRecord, ExtraFields
from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord
from gateway.wire.pgbackend import decodeErrorResponse
from gateway.wire.postgres import (
    GSS_REFUSED,
    NEED_MORE,
    SSL_ACCEPTED,
    SSL_REQUEST,
    CancelKey,
    CancelRequest,
    NotPostgres,
    StartupMessage,
    UnsupportedRequest,
    cancelRequest,
)
from gateway.wire.proxyprotocol import Command, ProxyAddress, ProxyHeader, encode
from tests.transports import NO_CONNECTOR, HalfCloseableTransport

HELLO = makeClientHello("db1.example.test", [b"postgresql"])
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
KEY = CancelKey(4242, b"\xde\xad\xbe\xef")
AUTHENTICATION_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
BACKEND_KEY_DATA = b"K\x00\x00\x00\x0c\x00\x00\x10\x92\xde\xad\xbe\xef"
READY_FOR_QUERY = b"Z\x00\x00\x00\x05I"
DB1 = ServerConfig("192.0.2.1", 5432)
DB2 = ServerConfig("192.0.2.2", 5432)
PEER = IPv4Address("TCP", "198.51.100.7", 40000)
HOST = IPv4Address("TCP", "192.0.2.100", 5432)

CA = trustme.CA()
GATEWAY_LEAF = CA.issue_cert("db1.example.test", "db2.example.test")


def startup(user: bytes = b"alice", database: bytes = b"shop") -> bytes:
    body = (3 << 16).to_bytes(4, "big")
    body += b"user\0" + user + b"\0database\0" + database + b"\0\0"
    return (4 + len(body)).to_bytes(4, "big") + body


STARTUP = startup()


def chunks(data: bytes, size: int = 1) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- ClientPreamble ------------------------------------------------------------


def feedAll(preamble: ClientPreamble, data: bytes) -> tuple[object, bytes]:
    """Feed byte by byte; the first answer that is not NEED_MORE, and what
    was written back."""
    written = bytearray()
    result: object = NEED_MORE
    for piece in chunks(data):
        result = preamble.feed(piece, written.extend)
        if result is not NEED_MORE:
            break
    return result, bytes(written)


def test_sslRequestIsAnsweredS() -> None:
    assert feedAll(ClientPreamble(), SSL_REQUEST) == (b"", SSL_ACCEPTED)


def test_gssencRequestIsAnsweredNThenSSLRequestS() -> None:
    result, written = feedAll(ClientPreamble(), GSSENC_REQUEST + SSL_REQUEST)
    assert (result, written) == (b"", GSS_REFUSED + SSL_ACCEPTED)


def test_gssencAndSSLRequestInOneChunk() -> None:
    written = bytearray()
    result = ClientPreamble().feed(
        GSSENC_REQUEST + SSL_REQUEST + HELLO[:10], written.extend
    )
    assert (result, bytes(written)) == (HELLO[:10], b"NS")


def test_directTLSIsAnsweredNothing() -> None:
    written = bytearray()
    assert ClientPreamble().feed(HELLO[:3], written.extend) == HELLO[:3]
    assert written == b""


def test_plaintextStartsAreHandedBack() -> None:
    result, written = feedAll(ClientPreamble(), STARTUP)
    assert isinstance(result, StartupMessage)
    assert (result.user, result.database, written) == ("alice", "shop", b"")
    result, _ = feedAll(ClientPreamble(), cancelRequest(KEY))
    assert result == CancelRequest(KEY)


def test_refusals() -> None:
    preamble = ClientPreamble()
    answer = preamble.refusal(UnsupportedRequest("unsupported frontend protocol 2.0"))
    error = decodeErrorResponse(answer)
    assert (error.severity, error.code) == ("FATAL", "08P01")
    assert "unsupported frontend protocol 2.0" in error.message
    assert preamble.refusal(NotPostgres("HTTP?")) == b""


def test_plaintextRefusedIsWhatPostgresSaysForPgHba() -> None:
    error = decodeErrorResponse(plaintextRefused())
    assert (error.severity, error.code) == ("FATAL", "28000")
    assert "sslmode=require" in error.message


def test_describeEnd() -> None:
    preamble = ClientPreamble()
    assert preamble.describeEnd() == "client closed before sending anything"
    preamble.feed(STARTUP[:5], lambda data: None)
    assert "after 5 bytes" in preamble.describeEnd()


# -- registry and watcher ------------------------------------------------------


class FakeSession:
    def __init__(self, server: ServerConfig | None) -> None:
        self.server = server
        self.upstreamWatcher: Any = None


def test_watcherRegistersTheKeyUntilTheSessionEnds() -> None:
    registry = CancelRegistry()
    upstream = UpstreamRuntime("one", OneServer(DB1), 1)
    watcher = KeyWatcher(registry, upstream)
    session = FakeSession(DB1)
    watcher.watch(session)  # type: ignore[arg-type]
    assert session.upstreamWatcher is watcher
    stream = AUTHENTICATION_OK + BACKEND_KEY_DATA + READY_FOR_QUERY + b"T..."
    for piece in chunks(stream, 3):
        if session.upstreamWatcher is not None:
            session.upstreamWatcher(piece)
    assert session.upstreamWatcher is None  # unhooked at ReadyForQuery
    owner = registry.get(KEY)
    assert owner is not None
    assert owner.server == DB1
    assert owner.runtime().chooser.pick("x", frozenset()) == DB1
    assert owner.runtime().chooser.pick("x", frozenset({DB1})) is None
    watcher.release()
    assert registry.get(KEY) is None
    assert len(registry) == 0


def test_watcherStopsOnGarbage() -> None:
    registry = CancelRegistry()
    watcher = KeyWatcher(registry, UpstreamRuntime("one", OneServer(DB1), 1))
    session = FakeSession(DB1)
    watcher.watch(session)  # type: ignore[arg-type]
    watcher(b"X\x00\x00\x00\x01")  # a length shorter than itself
    assert session.upstreamWatcher is None
    assert len(registry) == 0


def test_registryDiscardsOnlyItsOwnEntry() -> None:
    registry = CancelRegistry()
    upstream = UpstreamRuntime("one", OneServer(DB1), 1)
    first, second = CancelOwner(DB1, upstream), CancelOwner(DB2, upstream)
    registry.add(KEY, first)
    registry.add(KEY, second)  # the same key from another server, later
    registry.discard(KEY, first)
    assert registry.get(KEY) is second


# -- the pre-read --------------------------------------------------------------


class RecordingStage:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object) -> None:
        pass

    def shutdown(self) -> None:
        pass


class RecordingListener:
    def __init__(self) -> None:
        self.hellos: list[bytes] = []
        self.plaintext: list[PlaintextStart] = []
        self.tcp: list[bytes] = []
        self.endings: list[ConnectionRecord] = []
        self.stage = RecordingStage()

    def accepted(self, protocol: PrereadProtocol) -> None:
        pass

    def proxied(self, protocol: PrereadProtocol, header: ProxyHeader) -> None:
        pass

    def handoff(
        self, protocol: PrereadProtocol, hello: object, buffered: bytes
    ) -> RecordingStage:
        self.hellos.append(buffered)
        return self.stage

    def handoffPlaintext(
        self, protocol: PrereadProtocol, start: PlaintextStart
    ) -> RecordingStage:
        self.plaintext.append(start)
        return self.stage

    def handoffAtAccept(
        self, protocol: PrereadProtocol, buffered: bytes
    ) -> RecordingStage:
        self.tcp.append(buffered)
        return self.stage

    def ended(self, protocol: PrereadProtocol) -> None:
        self.endings.append(protocol.record)


class PrereadPostgresTests(SynchronousTestCase):
    def connect(self, **options: Any) -> None:
        self.clock = MemoryReactorClock()
        self.listener = RecordingListener()
        self.record = ConnectionRecord("pg", "198.51.100.7:40000", 0.0, 0.0)
        self.protocol = PrereadProtocol(
            self.listener,  # type: ignore[arg-type]
            self.record,
            self.clock,
            10,
            16384,
            **options,
        )
        self.transport = HalfCloseableTransport(hostAddress=HOST, peerAddress=PEER)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def feed(self, data: bytes, size: int = 1) -> None:
        for piece in chunks(data, size):
            self.protocol.dataReceived(piece)

    def test_sslRequestIsAnsweredAndTheHelloAloneIsHandedOff(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(SSL_REQUEST)
        self.assertEqual(self.transport.value(), b"S")
        self.assertEqual(self.listener.hellos, [])
        self.feed(HELLO, 100)
        self.assertEqual(self.listener.hellos, [HELLO])
        self.assertEqual(self.record.sni, "db1.example.test")
        self.assertEqual(self.record.alpn, ("postgresql",))
        self.assertEqual(
            (self.record.bytesIn, self.record.bytesOut), (len(SSL_REQUEST + HELLO), 1)
        )
        self.protocol.dataReceived(b"more")
        self.assertEqual(self.listener.stage.received, [b"more"])

    def test_gssencRequestThenSSLRequest(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(GSSENC_REQUEST)
        self.assertEqual(self.transport.value(), b"N")
        self.feed(SSL_REQUEST + HELLO, 7)
        self.assertEqual(self.transport.value(), b"NS")
        self.assertEqual(self.listener.hellos, [HELLO])

    def test_directTLS(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(HELLO, 3)
        self.assertEqual(self.listener.hellos, [HELLO])
        self.assertEqual(self.transport.value(), b"")

    def test_plaintextStartGoesToTheListener(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(STARTUP)
        [start] = self.listener.plaintext
        assert isinstance(start, StartupMessage)
        self.assertEqual(start.raw, STARTUP)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.feed(b"Q...")
        self.assertEqual(self.listener.stage.received, list(chunks(b"Q...")))

    def test_proxyHeaderThenSSLRequest(self) -> None:
        self.connect(strategy=POSTGRES, acceptProxy=True)
        header = encode(
            ProxyHeader(
                1,
                Command.PROXY,
                ProxyAddress("203.0.113.9", 5555),
                ProxyAddress("192.0.2.100", 5432),
            )
        )
        self.feed(header + SSL_REQUEST + HELLO, 5)
        self.assertEqual(self.transport.value(), b"S")
        self.assertEqual(self.listener.hellos, [HELLO])

    def test_notPostgresIsRefusedWithoutAnAnswer(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(b"GET / HTTP/1.1\r\n\r\n", 100)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.record.status, "bad_client_hello")
        assert self.record.reason is not None
        self.assertIn("postgres not_postgres", self.record.reason)

    def test_oldProtocolGetsAnErrorResponse(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(b"\x00\x00\x00\x08\x00\x02\x00\x00")
        self.assertFalse(self.transport.connected)
        error = decodeErrorResponse(self.transport.value())
        self.assertIn("unsupported frontend protocol", error.message)
        self.assertEqual(self.record.bytesOut, len(self.transport.value()))
        self.assertEqual(self.record.status, "bad_client_hello")

    def test_silentClientTimesOutInThePreamble(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(STARTUP[:5])
        self.clock.advance(10)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "preread_timeout")
        self.assertIn("startup packet", self.record.reason or "")

    def test_closeDuringThePreamble(self) -> None:
        self.connect(strategy=POSTGRES)
        self.feed(STARTUP[:5])
        self.protocol.readConnectionLost()
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertIn("after 5 bytes", self.record.reason or "")

    def test_tcpIsHandedOffAtAccept(self) -> None:
        self.connect(strategy=TCP)
        self.assertEqual(self.listener.tcp, [b""])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.feed(b"hi")
        self.assertEqual(self.listener.stage.received, [b"h", b"i"])
        self.assertEqual(self.record.bytesIn, 2)  # the owner counts

    def test_tcpWithAProxyHeaderWaitsForIt(self) -> None:
        self.connect(strategy=TCP, acceptProxy=True)
        self.assertEqual(self.listener.tcp, [])
        header = encode(ProxyHeader(2, Command.LOCAL))
        self.protocol.dataReceived(header + b"early")
        self.assertEqual(self.listener.tcp, [b"early"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


STREAM = GSSENC_REQUEST + SSL_REQUEST + HELLO


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(1, len(STREAM) - 1), unique=True, max_size=12))
def test_anySegmentationAnswersTheSameAndHandsOffTheHello(cuts: list[int]) -> None:
    listener = RecordingListener()
    protocol = PrereadProtocol(
        listener,  # type: ignore[arg-type]
        ConnectionRecord("pg", "198.51.100.7:40000", 0.0, 0.0),
        MemoryReactorClock(),
        10,
        16384,
        strategy=POSTGRES,
    )
    transport = HalfCloseableTransport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    edges = [0, *sorted(cuts), len(STREAM)]
    for start, end in pairwise(edges):
        protocol.dataReceived(STREAM[start:end])
    assert transport.value() == b"NS"
    assert listener.hellos == [HELLO]
    assert protocol.record.bytesIn == len(STREAM)


# -- the listener --------------------------------------------------------------


class StaticTLS:
    """The termination policy: one context, a few facts."""

    def __init__(self) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        GATEWAY_LEAF.configure_cert(self.context)

    def contextFor(self, serverName: str | None) -> SSL.Context:
        return self.context

    def describe(self, connection: SSL.Connection) -> ExtraFields:
        return {"tls_version": connection.get_protocol_version_name()}


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[ConnectionRecord] = []

    def accepted(self, listener: str) -> None:
        pass

    def handshake(self, seconds: float) -> None:
        pass

    def write(self, record: ConnectionRecord) -> None:
        self.records.append(record)


class ListenerTestCase(SynchronousTestCase):
    def makeFactory(self, **keys: Any) -> ListenerFactory:
        self.reactor = MemoryReactorClock()
        self.log = RecordingLog()
        keys.setdefault("protocol", "postgres")
        if "routes" not in keys:
            keys.setdefault("upstream", "one")
        config = ListenerConfig(name="pg", listen=("tcp:5432",), **keys)
        self.factory = ListenerFactory(
            config,
            {
                "one": UpstreamRuntime("one", OneServer(DB1), 1),
                "two": UpstreamRuntime("two", OneServer(DB2), 1),
            },
            self.reactor,
            self.reactor,
            self.log,  # type: ignore[arg-type]
            strategyFor(config),
            tls=StaticTLS(),
        )
        return self.factory

    def connect(self) -> tuple[PrereadProtocol, HalfCloseableTransport]:
        protocol = self.factory.buildProtocol(PEER)
        transport = HalfCloseableTransport(hostAddress=HOST, peerAddress=PEER)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def upstream(
        self, index: int = -1, server: ServerConfig = DB1
    ) -> tuple[Protocol, HalfCloseableTransport]:
        """Complete a pending upstream connect; its protocol and transport."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        self.assertEqual((host, port), (server.host, server.port))
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, Protocol)
        transport = HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport


class PlaintextTests(ListenerTestCase):
    def test_plaintextIsRefusedWithAnErrorResponse(self) -> None:
        self.makeFactory()
        protocol, transport = self.connect()
        protocol.dataReceived(STARTUP)
        self.assertFalse(transport.connected)
        error = decodeErrorResponse(transport.value())
        self.assertEqual(error.code, "28000")
        [record] = self.log.records
        self.assertEqual((record.status, record.action), ("plaintext_refused", None))
        self.assertEqual(record.extra, {"db_user": "alice", "db_name": "shop"})
        self.assertEqual(record.bytesOut, len(transport.value()))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_allowPlaintextRelaysTheStartupMessageAsIs(self) -> None:
        self.makeFactory(allow_plaintext=True)
        protocol, _ = self.connect()
        protocol.dataReceived(STARTUP)
        _, upstream = self.upstream()
        self.assertEqual(upstream.value(), STARTUP)  # no SSLRequest
        protocol.dataReceived(b"p-password")
        self.assertEqual(upstream.value(), STARTUP + b"p-password")
        record = protocol.record
        self.assertEqual((record.action, record.upstream), ("tcp", DB1.address))
        self.assertEqual(record.extra["db_user"], "alice")

    def test_plaintextGoesToTheDefaultRoute(self) -> None:
        routes = (RouteConfig("db1.example.test", "one"), RouteConfig("default", "two"))
        self.makeFactory(routes=routes, allow_plaintext=True)
        protocol, _ = self.connect()
        protocol.dataReceived(STARTUP)
        _, upstream = self.upstream(server=DB2)
        self.assertEqual(upstream.value(), STARTUP)

    def test_plaintextWithoutADefaultRouteIsTold(self) -> None:
        routes = (RouteConfig("db1.example.test", "one"),)
        self.makeFactory(routes=routes, allow_plaintext=True)
        protocol, transport = self.connect()
        protocol.dataReceived(STARTUP)
        self.assertIn(
            "no default route", decodeErrorResponse(transport.value()).message
        )
        [record] = self.log.records
        self.assertEqual(record.status, "no_route")

    def test_unknownCancelGoesToTheDefaultRoute(self) -> None:
        routes = (RouteConfig("db1.example.test", "one"), RouteConfig("default", "two"))
        self.makeFactory(routes=routes)
        protocol, transport = self.connect()
        protocol.dataReceived(cancelRequest(KEY))
        _, upstream = self.upstream(server=DB2)
        self.assertEqual(upstream.value(), cancelRequest(KEY))
        record = protocol.record
        self.assertEqual((record.action, record.reason), ("tcp", CANCEL_REASON))
        # The server closes; so does the relay, and the cancel is logged ok.
        upstream.protocol.readConnectionLost()  # type: ignore[attr-defined]
        self.assertTrue(transport.writeClosed)

    def test_cancelWithoutADefaultRouteIsClosed(self) -> None:
        self.makeFactory(routes=(RouteConfig("db1.example.test", "one"),))
        protocol, transport = self.connect()
        protocol.dataReceived(cancelRequest(KEY))
        self.assertFalse(transport.connected)
        self.assertEqual(transport.value(), b"")
        [record] = self.log.records
        self.assertEqual(record.status, "no_route")
        self.assertIn(CANCEL_REASON, record.reason or "")


class PassthroughTests(ListenerTestCase):
    def test_serverIsAskedForTLSBeforeTheHello(self) -> None:
        self.makeFactory()
        protocol, transport = self.connect()
        protocol.dataReceived(SSL_REQUEST)
        protocol.dataReceived(HELLO)
        upstream, upstreamTransport = self.upstream()
        self.assertEqual(upstreamTransport.value(), SSL_REQUEST)
        self.assertTrue(transport.producerState == "paused")
        upstream.dataReceived(b"S")
        self.assertEqual(upstreamTransport.value(), SSL_REQUEST + HELLO)
        upstream.dataReceived(b"\x16\x03\x03 server hello")
        self.assertEqual(transport.value(), b"S\x16\x03\x03 server hello")
        self.assertEqual(protocol.record.action, "passthrough")
        (idle,) = self.reactor.getDelayedCalls()
        self.assertEqual(idle.getTime(), 600.0)  # idle only

    def test_proxyHeaderGoesBeforeTheSSLRequest(self) -> None:
        self.makeFactory(proxy_protocol="v1")
        protocol, _ = self.connect()
        protocol.dataReceived(SSL_REQUEST + HELLO)
        _, upstreamTransport = self.upstream()
        self.assertEqual(
            upstreamTransport.value(),
            b"PROXY TCP4 198.51.100.7 192.0.2.100 40000 5432\r\n" + SSL_REQUEST,
        )

    def assertUnavailable(self, answer: bytes, reason: str) -> None:
        self.makeFactory()
        protocol, transport = self.connect()
        protocol.dataReceived(SSL_REQUEST + HELLO)
        upstream, upstreamTransport = self.upstream()
        upstream.dataReceived(answer)
        self.assertTrue(upstreamTransport.aborted)
        upstream.connectionLost(Failure(ConnectionError()))
        # The client is in TLS already: it gets a TLS alert, never plaintext.
        self.assertFalse(transport.connected)
        self.assertEqual(
            transport.value(),
            b"S" + alertRecord(AlertDescription.INTERNAL_ERROR, 0x0303),
        )
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")
        self.assertIn(reason, record.reason or "")

    def test_serverThatRefusesTLS(self) -> None:
        self.assertUnavailable(b"N", "refused the SSLRequest (N)")

    def test_serverThatAnswersAnError(self) -> None:
        self.assertUnavailable(
            b"E\x00\x00\x00\x16SFATAL\x00Mtoo many\x00\x00", "FATAL: too many"
        )

    def test_serverThatIsNotPostgres(self) -> None:
        self.assertUnavailable(b"HTTP/1.1 400", "not a PostgreSQL server")

    def test_bytesAfterTheSAreRefusedAndNeverReachTheClient(self) -> None:
        """
        The server (or whoever answers in its place) cannot have seen the
        ClientHello yet: bytes that come with its C{S} are injected
        (CVE-2021-23222), and the client gets none of them.
        """
        self.assertUnavailable(
            b"S\x16\x03\x03\x00\x05evil!", "sent 10 bytes after its S"
        )

    def test_silentServerTimesOut(self) -> None:
        self.makeFactory(connect_timeout=3.0)
        protocol, _ = self.connect()
        protocol.dataReceived(SSL_REQUEST + HELLO)
        upstream, upstreamTransport = self.upstream()
        self.reactor.advance(3)
        self.assertTrue(upstreamTransport.aborted)
        upstream.connectionLost(Failure(ConnectionError()))
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")
        self.assertIn("no answer to the SSLRequest within 3s", record.reason or "")

    def test_clientLeavingWhileTheServerAnswers(self) -> None:
        self.makeFactory()
        protocol, _ = self.connect()
        protocol.dataReceived(SSL_REQUEST + HELLO)
        upstream, upstreamTransport = self.upstream()
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertTrue(upstreamTransport.aborted)
        upstream.connectionLost(Failure(ConnectionError()))
        self.assertEqual(len(self.log.records), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class TCPModeTests(ListenerTestCase):
    def test_connectsAtAcceptAndRelaysTheServerFirst(self) -> None:
        self.makeFactory(mode="tcp", protocol="tls")
        protocol, transport = self.connect()
        self.assertEqual(protocol.record.action, "tcp")
        upstream, upstreamTransport = self.upstream()
        upstream.dataReceived(b"greeting")
        self.assertEqual(transport.value(), b"greeting")
        protocol.dataReceived(b"query")
        self.assertEqual(upstreamTransport.value(), b"query")
        record = protocol.record
        self.assertEqual((record.bytesIn, record.bytesOut), (5, 8))
        self.assertEqual(record.upstream, DB1.address)


# -- termination ---------------------------------------------------------------


class TerminationTests(ListenerTestCase):
    def setUp(self) -> None:
        routes = (
            RouteConfig("db1.example.test", "one"),
            RouteConfig("default", "two"),
        )
        self.makeFactory(routes=routes, mode="terminate")

    @property
    def registry(self) -> CancelRegistry:
        """The listener's cancel keys: what C{protocol = postgres} keeps."""
        registry = self.factory.strategyState
        assert isinstance(registry, CancelRegistry)
        return registry

    def handshake(
        self, serverName: bytes = b"db1.example.test"
    ) -> tuple[PrereadProtocol, HalfCloseableTransport, SSL.Connection]:
        protocol, transport = self.connect()
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        CA.configure_trust(context)
        context.set_verify(SSL.VERIFY_PEER)
        client = SSL.Connection(context, None)
        client.set_tlsext_host_name(serverName)
        client.set_connect_state()
        protocol.dataReceived(SSL_REQUEST)
        self.assertEqual(transport.value(), b"S")
        transport.clear()
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        self.pump(protocol, transport, client)
        client.do_handshake()
        return protocol, transport, client

    def pump(
        self,
        protocol: PrereadProtocol,
        transport: HalfCloseableTransport,
        client: SSL.Connection,
    ) -> bytes:
        """Move bytes both ways; the plaintext the client received."""
        received = b""
        for _ in range(10):
            moved = False
            with contextlib.suppress(SSL.WantReadError):
                protocol.dataReceived(client.bio_read(2**20))
                moved = True
            if sent := transport.value():
                transport.clear()
                client.bio_write(sent)
                moved = True
                with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
                    received += client.recv(2**20)
            if not moved:
                break
        return received

    def test_startupMessageIsReadThenTheKeyIsLearnt(self) -> None:
        protocol, transport, client = self.handshake()
        self.assertEqual(self.reactor.tcpClients, [])  # waits for the startup
        client.sendall(STARTUP)
        self.pump(protocol, transport, client)
        upstream, upstreamTransport = self.upstream(server=DB1)
        self.assertEqual(upstreamTransport.value(), STARTUP)  # plaintext upstream
        self.assertEqual(protocol.record.extra["db_user"], "alice")
        self.assertEqual(protocol.record.extra["db_name"], "shop")
        upstream.dataReceived(AUTHENTICATION_OK + BACKEND_KEY_DATA + READY_FOR_QUERY)
        received = self.pump(protocol, transport, client)
        self.assertEqual(
            received, AUTHENTICATION_OK + BACKEND_KEY_DATA + READY_FOR_QUERY
        )
        owner = self.registry.get(KEY)
        assert owner is not None
        self.assertEqual(owner.server, DB1)

        # A cancel on a new connection, in the clear: to DB1, not the
        # default route's DB2.
        cancel, _ = self.connect()
        cancel.dataReceived(cancelRequest(KEY))
        _, cancelTransport = self.upstream(server=DB1)
        self.assertEqual(cancelTransport.value(), cancelRequest(KEY))
        self.assertEqual(
            (cancel.record.action, cancel.record.upstream), ("tcp", DB1.address)
        )

        # The session ends: its key is forgotten.
        upstream.connectionLost(Failure(ConnectionError()))
        self.assertEqual(len(self.registry), 0)

    def test_cancelInsideTLSGoesToTheKeyOwner(self) -> None:
        owner = CancelOwner(DB1, UpstreamRuntime("one", OneServer(DB1), 1))
        self.registry.add(KEY, owner)
        protocol, transport, client = self.handshake(b"db2.example.test")
        client.sendall(cancelRequest(KEY))
        self.pump(protocol, transport, client)
        _, upstreamTransport = self.upstream(server=DB1)
        self.assertEqual(upstreamTransport.value(), cancelRequest(KEY))
        record = protocol.record
        self.assertEqual((record.action, record.reason), ("terminate", CANCEL_REASON))

    def test_malformedStartupGetsAnErrorInsideTLS(self) -> None:
        protocol, transport, client = self.handshake()
        client.sendall(b"\x00\x00\x00\x08\x00\x02\x00\x00")
        received = self.pump(protocol, transport, client)
        self.assertIn(
            "unsupported frontend protocol", decodeErrorResponse(received).message
        )
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(protocol.record.status, "bad_client_hello")

    def test_unreachableUpstreamIsToldInAnErrorResponse(self) -> None:
        """
        Every server of the route's upstream is down: the client reads a
        FATAL C{ErrorResponse} (08006) naming the upstream and the error,
        inside TLS, then the connection closes.
        """
        protocol, transport, client = self.handshake()
        client.sendall(STARTUP)
        self.pump(protocol, transport, client)
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(NO_CONNECTOR, Failure(ConnectionRefusedError()))
        received = self.pump(protocol, transport, client)
        error = decodeErrorResponse(received)
        self.assertEqual((error.code, error.severity), ("08006", "FATAL"))
        self.assertIn("upstream 'one'", error.message)
        self.assertIn(DB1.address, error.message)
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")

    def test_closeRightAfterTheHandshakeIsClientClosed(self) -> None:
        """
        libpq rejecting the certificate after the handshake
        (C{sslmode=verify-full}) closes before its startup packet: not a
        bad hello.
        """
        protocol, _, client = self.handshake()
        client.shutdown()
        protocol.dataReceived(client.bio_read(2**16))
        protocol.readConnectionLost()
        [record] = self.log.records
        self.assertEqual(record.status, "client_closed")
        self.assertIn("right after the TLS handshake", record.reason or "")

    def test_closeInsideTheStartupPacketIsBadClientHello(self) -> None:
        protocol, transport, client = self.handshake()
        client.sendall(STARTUP[:6])
        self.pump(protocol, transport, client)
        protocol.readConnectionLost()
        [record] = self.log.records
        self.assertEqual(record.status, "bad_client_hello")
        self.assertIn("6 bytes", record.reason or "")

    def test_silentClientAfterTheHandshakeTimesOut(self) -> None:
        _, transport, _ = self.handshake()
        self.reactor.advance(5)
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual(record.status, "preread_timeout")
        self.assertIn("after the TLS handshake", record.reason or "")
        self.assertEqual(self.reactor.getDelayedCalls(), [])
