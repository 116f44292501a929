"""
Tests for L{gateway.protocols.mysql.connection} and its server legs
(L{gateway.protocols.mysql.leg}), in memory: the greeting from the upstream
(with failover), the C{SSLRequest} answered, plaintext refused or relayed,
the login renumbered for the server, a re-routed login re-authenticated,
and every way the connection can end.

The TLS handshake itself is L{gateway.connection.terminate.TerminationStage}'s (tested
with it and end to end in C{tests/integration/test_mysql.py}); here the
client side is mostly a plaintext client (C{allow_plaintext}), whose
packets are the same ones a TLS client sends inside TLS, one sequence
number earlier.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import trustme
from OpenSSL import SSL
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ServerConfig
from gateway.connection.session import Timeouts, UpstreamRuntime
from gateway.core.vocabulary import Status
from gateway.protocols.mysql import SWITCH_PLUGIN, MySQLConnection, Wiring
from gateway.protocols.mysql.states import ConnectionState
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.decision import Reject
from gateway.wire.clienthello import ClientHello
from gateway.wire.mysql import (
    CLIENT_CONNECT_WITH_DB,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    AuthSwitchRequest,
    ErrPacket,
    Packet,
    PacketReader,
    SSLRequest,
    encodePacket,
    parseClientStart,
    parseGreeting,
    parseHandshakeResponse,
)
from tests.helpers import FixedServers
from tests.transports import NO_CONNECTOR, HalfCloseableTransport, TableOwner

CA = trustme.CA()
SERVER_CERTIFICATE = CA.issue_cert("db.example.test")

SCRAMBLE_A = bytes(range(0x41, 0x55))
SCRAMBLE_B = bytes(range(0x61, 0x75))


def greeting(scramble: bytes, capabilities: int = 0xF7FE | 0x81BF << 16) -> bytes:
    return (
        b"\x0a5.5.5-10.11.6-MariaDB\x00"
        + struct.pack("<I", 7)
        + scramble[:8]
        + b"\x00"
        + struct.pack("<H", capabilities & 0xFFFF)
        + b"\x2d\x02\x00"
        + struct.pack("<H", capabilities >> 16)
        + b"\x15"
        + b"\x00" * 10
        + scramble[8:]
        + b"\x00mysql_native_password\x00"
    )


FLAGS = (
    CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_WITH_DB
)
LOGIN = (
    struct.pack("<II", FLAGS, 1 << 24)
    + b"\x21"
    + b"\x00" * 23
    + b"alice\x00\x14"
    + b"H" * 20
    + b"shop\x00mysql_native_password\x00"
)
OK = b"\x00\x00\x00\x02\x00\x00\x00"
DB1 = ServerConfig("192.0.2.1", 3306)
DB2 = ServerConfig("192.0.2.2", 3306)
DB3 = ServerConfig("192.0.2.3", 3306)


class Forward(Protocol):
    """The client transport's protocol: its loss goes to the stage."""

    def __init__(self, stage: MySQLConnection) -> None:
        self.stage = stage

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.stage.connectionLost(reason)


def packets(data: bytes) -> list[Packet]:
    reader = PacketReader()
    reader.feed(data)
    out = []
    while isinstance(packet := reader.next(), Packet):
        out.append(packet)
    return out


class StageTestCase(SynchronousTestCase):
    """
    A L{MySQLConnection} with a greeting upstream of two servers and a
    routed upstream of one, all in memory.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.greetingServers = FixedServers(DB1, DB2)
        self.otherServers = FixedServers(DB3)
        self.greetingUpstream = UpstreamRuntime("alpha", self.greetingServers, 2)
        self.otherUpstream = UpstreamRuntime("beta", self.otherServers, 1)
        self.route: UpstreamRuntime | Reject = self.greetingUpstream
        self.greetings: tuple[UpstreamRuntime, ...] = (self.greetingUpstream,)
        self.record = ConnectionRecord(
            listener="mysql", client="198.51.100.7:5000", accepted=0, started=0
        )
        self.servedNames: list[str | None] = []

    def start(self) -> None:
        wiring = Wiring(
            reactor=self.reactor,
            clock=self.reactor,
            timeouts=Timeouts(connect=3, idle=600),
            prereadTimeout=5,
            maxHello=65536,
            clientKey="198.51.100.7",
            greetings=self.greetings,
            choose=self.choose,
            contextFor=self.contextFor,
            describe=lambda connection: {},
            handshakeTimed=lambda seconds: None,
            proxyHeader=lambda name, connection: None,
        )
        self.client = HalfCloseableTransport()
        self.owner = TableOwner(self.record)
        self.owner.clientBytes.socket = self.client
        self.addCleanup(lambda: self.assertEqual(self.owner.refused, []))
        self.stage = MySQLConnection(
            wiring,
            self.client,
            self.record,
            self.owner,
        )
        self.client.protocol = Forward(self.stage)
        self.stage.start(b"")

    def choose(self, hello: ClientHello | None) -> UpstreamRuntime | Reject:
        return self.route

    def contextFor(self, name: str | None) -> SSL.Context:
        self.servedNames.append(name)
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        SERVER_CERTIFICATE.configure_cert(context)
        return context

    def connectLeg(self, index: int = -1) -> tuple[Any, HalfCloseableTransport]:
        _host, _port, factory, _timeout, _ = self.reactor.tcpClients[index]
        leg: Any = factory.buildProtocol(None)
        transport = HalfCloseableTransport()
        transport.protocol = leg
        leg.makeConnection(transport)
        return leg, transport

    def greet(self, scramble: bytes = SCRAMBLE_A) -> HalfCloseableTransport:
        leg, transport = self.connectLeg()
        leg.dataReceived(encodePacket(0, greeting(scramble)))
        return transport

    def clientSent(self) -> list[Packet]:
        data = self.client.value()
        self.client.clear()
        return packets(data)

    def serverGot(self, transport: HalfCloseableTransport) -> list[Packet]:
        data = transport.value()
        transport.clear()
        return packets(data)


class MySQLConnectionTests(StageTestCase):
    # -- greeting ------------------------------------------------------------

    def test_clientGetsTheServersGreetingWithSSLOffered(self) -> None:
        self.start()
        self.assertEqual(self.client.value(), b"")
        self.greet()
        [packet] = self.clientSent()
        self.assertEqual(packet.sequence, 0)
        sent = parseGreeting(packet.payload)
        self.assertEqual(sent.scramble, SCRAMBLE_A)
        self.assertTrue(sent.capabilities & CLIENT_SSL)
        self.assertEqual(self.record.upstream, DB1.address)
        self.assertEqual(self.greetingServers.events, [("succeeded", DB1)])

    def test_theNextUpstreamGreetsWhenTheFirstsServersAreDown(self) -> None:
        """
        Every server of the default route's upstream is down: a server of
        the listener's next upstream greets, so its routes still work.
        """
        self.greetings = (self.greetingUpstream, self.otherUpstream)
        self.start()
        for _ in range(2):
            _, _, factory, _, _ = self.reactor.tcpClients[-1]
            factory.clientConnectionFailed(
                NO_CONNECTOR, Failure(ConnectionRefusedError())
            )
        self.assertEqual(len(self.reactor.tcpClients), 3)
        host, port, *_ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), (DB3.host, DB3.port))
        self.greet(SCRAMBLE_B)
        [packet] = self.clientSent()
        self.assertEqual(parseGreeting(packet.payload).scramble, SCRAMBLE_B)
        self.assertEqual(self.record.upstream, DB3.address)
        self.assertEqual(self.otherServers.events, [("succeeded", DB3)])

    def test_noServerOfAnyUpstreamGreetsNamesThemAll(self) -> None:
        self.greetings = (self.greetingUpstream, self.otherUpstream)
        self.start()
        for _ in range(3):
            _, _, factory, _, _ = self.reactor.tcpClients[-1]
            factory.clientConnectionFailed(
                NO_CONNECTOR, Failure(ConnectionRefusedError())
            )
        [packet] = self.clientSent()
        error = ErrPacket.parse(packet.payload)
        self.assertIn("'alpha', 'beta'", error.message)
        self.assertEqual(self.record.status, "upstream_unavailable")
        reason = self.record.reason or ""
        self.assertIn(f"upstream alpha: {DB2.address}", reason)
        self.assertIn(f"upstream beta: {DB3.address}", reason)

    def test_serverSendingBytesAfterItsGreetingIsAFailedConnect(self) -> None:
        self.start()
        leg, transport = self.connectLeg()
        leg.dataReceived(encodePacket(0, greeting(SCRAMBLE_A)) + b"\x16\x03\x01")
        self.assertTrue(transport.aborted)
        self.assertEqual(self.client.value(), b"")
        self.assertEqual(self.greetingServers.events, [("failed", DB1)])
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.greet(SCRAMBLE_B)
        [packet] = self.clientSent()
        self.assertEqual(parseGreeting(packet.payload).scramble, SCRAMBLE_B)
        self.assertEqual(self.record.upstream, DB2.address)

    def test_silentServerIsAFailedConnectAtConnectTimeout(self) -> None:
        self.start()
        _leg, transport = self.connectLeg()
        self.reactor.advance(3)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.greetingServers.events, [("failed", DB1)])

    def test_noServerGreetsTheClientGetsAnError(self) -> None:
        self.start()
        for _ in range(2):
            leg, _transport = self.connectLeg()
            leg.dataReceived(encodePacket(0, b"\x09junk"))
        [packet] = self.clientSent()
        error = ErrPacket.parse(packet.payload)
        self.assertEqual((packet.sequence, error.code), (0, 1105))
        self.assertIn("no MySQL server of upstream 'alpha'", error.message)
        self.assertEqual(self.record.status, "upstream_unavailable")
        self.assertIn("not a MySQL greeting", self.record.reason or "")
        self.assertEqual(self.owner.ends, 1)

    def test_clientLeavingDuringTheGreetingEndsOnce(self) -> None:
        self.start()
        _leg, transport = self.connectLeg()
        self.client.loseConnection()
        self.assertTrue(transport.aborted)
        self.assertEqual(self.owner.ends, 1)
        # It had sent nothing to route on: not a bad hello.
        self.assertEqual(self.record.status, "client_closed")

    def test_sslRequestTimesOut(self) -> None:
        self.start()
        transport = self.greet()
        self.reactor.advance(5)
        self.assertEqual(self.record.status, "preread_timeout")
        self.assertTrue(transport.aborted)
        self.assertEqual(self.owner.ends, 1)

    # -- plaintext logins ------------------------------------------------------

    def test_plaintextLoginIsRefused(self) -> None:
        self.route = Reject(
            Status.PLAINTEXT_REFUSED,
            "client sent a login without TLS (allow_plaintext is off)",
        )
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        [packet] = self.clientSent()
        error = ErrPacket.parse(packet.payload)
        self.assertEqual((packet.sequence, error.code), (2, 3159))
        self.assertIn("over TLS only", error.message)
        self.assertEqual(self.record.status, "plaintext_refused")
        self.assertEqual(self.record.extra["db_user"], "alice")
        self.assertIsNone(self.record.action)
        self.assertIs(self.stage.state, ConnectionState.OVER)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.aborted)
        self.assertEqual(self.owner.ends, 1)

    def test_plaintextLoginGoesToTheGreetingServerAsIs(self) -> None:
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        [login] = self.serverGot(transport)
        self.assertEqual(login, Packet(1, LOGIN))
        leg = transport.protocol
        leg.dataReceived(encodePacket(2, OK) + b"after")
        self.assertEqual(self.client.value(), encodePacket(2, OK) + b"after")
        self.assertEqual(self.record.action, "tcp")
        self.assertIs(self.stage.state, ConnectionState.RELAY)
        # The relay has it now: bytes go through unread.
        self.stage.dataReceived(b"\x05\x00\x00\x00\x03query")
        self.assertEqual(transport.value(), b"\x05\x00\x00\x00\x03query")

    def test_authExchangePacketsAreRelayedUntilOK(self) -> None:
        # caching_sha2_password's fast path: AuthMoreData, then OK.
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        self.serverGot(transport)
        leg = transport.protocol
        switch = AuthSwitchRequest("caching_sha2_password", SCRAMBLE_A).encode()
        leg.dataReceived(encodePacket(2, switch))
        self.assertEqual(self.clientSent(), [Packet(2, switch)])
        self.stage.dataReceived(encodePacket(3, b"R" * 32))
        self.assertEqual(self.serverGot(transport), [Packet(3, b"R" * 32)])
        leg.dataReceived(encodePacket(4, b"\x01\x03") + encodePacket(5, OK))
        self.assertEqual(self.clientSent(), [Packet(4, b"\x01\x03"), Packet(5, OK)])

    def test_silentServerDuringTheAuthenticationTimesOutAtIdleTimeout(self) -> None:
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        self.reactor.advance(599)
        self.assertIsNone(self.record.status)
        self.reactor.advance(1)
        [packet] = self.clientSent()
        self.assertEqual(packet.sequence, 2)
        self.assertEqual(self.record.status, "idle_timeout")
        self.assertTrue(transport.aborted)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_wrongPasswordIsTheServersError(self) -> None:
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        leg = transport.protocol
        denied = ErrPacket(1045, "28000", "Access denied for user 'alice'").encode()
        leg.dataReceived(encodePacket(2, denied))
        self.assertEqual(self.clientSent(), [Packet(2, denied)])
        transport.loseConnection()
        self.assertIn("Access denied", self.record.reason or "")
        self.assertIsNone(self.record.status)

    # -- re-routed logins ----------------------------------------------------------

    def test_reroutedLoginIsReauthenticatedByTheRoutedServer(self) -> None:
        self.route = self.otherUpstream
        self.start()
        first = self.greet(SCRAMBLE_A)
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        self.assertTrue(first.aborted)
        self.assertEqual(first.value(), b"")
        second = self.greet(SCRAMBLE_B)
        self.assertEqual(self.record.upstream, DB3.address)
        [packet] = self.serverGot(second)
        self.assertEqual(packet.sequence, 1)
        login = parseHandshakeResponse(packet.payload)
        self.assertEqual((login.user, login.database), ("alice", "shop"))
        self.assertEqual((login.authResponse, login.authPlugin), (b"", SWITCH_PLUGIN))
        self.assertFalse(login.capabilities & CLIENT_SSL)
        # The server asks for its own scramble; the client answers it.
        switch = AuthSwitchRequest("mysql_native_password", SCRAMBLE_B).encode()
        second.protocol.dataReceived(encodePacket(2, switch))
        self.assertEqual(self.clientSent(), [Packet(2, switch)])
        self.stage.dataReceived(encodePacket(3, b"N" * 20))
        self.assertEqual(self.serverGot(second), [Packet(3, b"N" * 20)])
        second.protocol.dataReceived(encodePacket(4, OK))
        self.assertEqual(self.clientSent(), [Packet(4, OK)])
        self.assertEqual(
            self.otherServers.events, [("succeeded", DB3)], "one connect to beta"
        )

    def test_routedServerUnavailableIsAnErrorAfterTheLogin(self) -> None:
        self.route = self.otherUpstream
        self.start()
        self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        _leg, transport = self.connectLeg()
        transport.loseConnection()
        [packet] = self.clientSent()
        self.assertEqual(packet.sequence, 2)
        self.assertEqual(ErrPacket.parse(packet.payload).code, 1105)
        self.assertEqual(self.record.status, "upstream_unavailable")
        self.assertEqual(self.owner.ends, 1)

    def test_noRouteForAPlaintextClient(self) -> None:
        self.route = Reject(Status.NO_ROUTE, "plaintext login: no default route")
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        [packet] = self.clientSent()
        self.assertEqual(packet.sequence, 2)
        self.assertEqual(
            ErrPacket.parse(packet.payload).message,
            "tlsgateway: plaintext login: no default route",
        )
        self.assertEqual(self.record.status, "no_route")
        self.assertEqual(self.record.reason, "plaintext login: no default route")
        self.assertTrue(transport.aborted)

    def test_shutdownDuringTheLoginEndsEverything(self) -> None:
        self.start()
        transport = self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        self.stage.shutdown()
        self.assertEqual(self.record.status, "shutdown")
        self.assertTrue(transport.aborted)
        self.assertTrue(self.client.aborted)
        self.assertEqual(self.owner.ends, 1)

    def test_eventsAfterARefusalMoveNoState(self) -> None:
        """
        Once refused (C{over}), a shutdown, a half-close, more bytes and the
        loss of the connection are all allowed by the state table: none
        raises, the status stays the refusal's and the end comes once.
        """
        self.route = Reject(Status.NO_ROUTE, "plaintext login: no default route")
        self.start()
        self.greet()
        self.clientSent()
        self.stage.dataReceived(encodePacket(1, LOGIN))
        self.assertIs(self.stage.state, ConnectionState.OVER)
        self.stage.shutdown()
        self.stage.dataReceived(b"more")
        self.stage.readConnectionLost()
        self.client.loseConnection()
        self.assertIs(self.stage.state, ConnectionState.OVER)
        self.assertEqual(self.record.status, "no_route")
        self.assertEqual(self.owner.ends, 1)

    def test_notMySQLFromTheClientIsRefused(self) -> None:
        self.start()
        self.greet()
        self.clientSent()
        self.stage.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertIn("mysql", self.record.reason or "")

    def test_everyCutOfTheClientStreamGivesTheSameLogin(self) -> None:
        # The login and a first auth response, cut in two anywhere: TCP may.
        stream = encodePacket(1, LOGIN)
        for cut in range(1, len(stream)):
            self.setUp()
            self.start()
            transport = self.greet()
            self.stage.dataReceived(stream[:cut])
            self.assertEqual(transport.value(), b"", cut)
            self.stage.dataReceived(stream[cut:])
            self.assertEqual(self.serverGot(transport), [Packet(1, LOGIN)], cut)

    def test_everyCutOfTheGreetingGivesTheSameGreeting(self) -> None:
        stream = encodePacket(0, greeting(SCRAMBLE_A))
        for cut in range(1, len(stream)):
            self.setUp()
            self.start()
            leg, _transport = self.connectLeg()
            leg.dataReceived(stream[:cut])
            self.assertEqual(self.client.value(), b"", cut)
            leg.dataReceived(stream[cut:])
            [packet] = self.clientSent()
            self.assertEqual(parseGreeting(packet.payload).scramble, SCRAMBLE_A, cut)


class TLSClientTests(StageTestCase):
    """
    A client that asks for TLS, in memory: the gateway's handshake, then its
    login one sequence number later than a plaintext client's.
    """

    def handshake(self) -> tuple[HalfCloseableTransport, SSL.Connection]:
        self.start()
        transport = self.greet()
        self.clientSent()
        request = LOGIN[:32]
        request = struct.pack("<I", FLAGS | CLIENT_SSL) + request[4:]
        self.assertIsInstance(parseClientStart(request), SSLRequest)
        self.stage.dataReceived(encodePacket(1, request))
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        CA.configure_trust(context)
        context.set_verify(SSL.VERIFY_PEER)
        client = SSL.Connection(context, None)
        client.set_tlsext_host_name(b"db.example.test")
        client.set_connect_state()
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        self.pump(client)
        client.do_handshake()
        return transport, client

    def pump(self, client: SSL.Connection) -> bytes:
        """Move bytes both ways; the plaintext the client received."""
        received = b""
        for _ in range(10):
            moved = False
            with contextlib.suppress(SSL.WantReadError):
                self.stage.dataReceived(client.bio_read(2**20))
                moved = True
            if sent := self.client.value():
                self.client.clear()
                client.bio_write(sent)
                moved = True
                with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
                    received += client.recv(2**20)
            if not moved:
                break
        return received

    def test_loginInsideTLSIsRenumberedForAPlaintextServer(self) -> None:
        transport, client = self.handshake()
        self.assertEqual(self.servedNames, ["db.example.test"])
        self.assertEqual(
            (self.record.action, self.record.sni), ("terminate", "db.example.test")
        )
        login = struct.pack("<I", FLAGS | CLIENT_SSL) + LOGIN[4:]
        client.sendall(encodePacket(2, login))
        self.pump(client)
        [packet] = self.serverGot(transport)
        self.assertEqual(packet.sequence, 1)
        self.assertEqual(packet.payload, LOGIN)  # CLIENT_SSL cleared, as sent
        transport.protocol.dataReceived(encodePacket(2, OK))
        self.assertEqual(packets(self.pump(client)), [Packet(3, OK)])
        self.assertEqual(self.record.extra["db_user"], "alice")

    def test_silentClientAfterTheHandshakeTimesOut(self) -> None:
        transport, _ = self.handshake()
        self.reactor.advance(5)
        self.assertEqual(self.record.status, "preread_timeout")
        self.assertTrue(transport.aborted)
