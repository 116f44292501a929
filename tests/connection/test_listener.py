"""
L{gateway.connection.listener.ListenerFactory} at accept and at hand-off: address
filtering, connection limits, JA4 filtering, the client address a PROXY
header gives, the PROXY header sent upstream, and what it does with a
strategy that lacks a hook; in memory, no sockets.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.config import ListenerConfig, RouteConfig, ServerConfig
from gateway.connection.listener import ListenerFactory
from gateway.connection.preread import PrereadProtocol
from gateway.connection.session import UpstreamRuntime
from gateway.connection.strategy import IPreamble, IProtocolStrategy
from gateway.core.ratelimit import parseRate
from gateway.protocols.postgres import OneServer
from gateway.protocols.table import strategyFor
from gateway.rules.accesslog import ConnectionRecord
from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord
from gateway.wire.ja4 import ja4
from gateway.wire.proxyprotocol import (
    NEED_MORE,
    Command,
    ProxyAddress,
    ProxyHeader,
    encode,
)
from gateway.wire.proxyreader import ProxyHeaderReader
from tests.transports import NO_CONNECTOR, HalfCloseableTransport, PromptClientTransport

HELLO = makeClientHello("db.example.com")


# A TLS 1.0-only client's hello: no supported_versions.
TLS10_HELLO = makeClientHello(
    "db.example.com", minVersion=SSL.TLS1_VERSION, maxVersion=SSL.TLS1_VERSION
)
SERVER = ServerConfig("192.0.2.99", 5432)
LISTENER = IPv4Address("TCP", "192.0.2.1", 443)


class RecordingChooser(OneServer):
    """One server; remembers the client keys it was asked to pick for."""

    def __init__(self) -> None:
        super().__init__(SERVER)
        self.keys: list[str] = []

    def pick(
        self, clientKey: str, exclude: frozenset[ServerConfig]
    ) -> ServerConfig | None:
        self.keys.append(clientKey)
        return super().pick(clientKey, exclude)


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[ConnectionRecord] = []
        self.accepts: list[str] = []

    def accepted(self, listener: str) -> None:
        self.accepts.append(listener)

    def handshake(self, seconds: float) -> None:
        pass

    def write(self, record: ConnectionRecord) -> None:
        self.records.append(record)


def networks(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


class ListenerTestCase(SynchronousTestCase):
    def makeFactory(self, **keys: object) -> ListenerFactory:
        self.reactor = MemoryReactorClock()
        self.log = RecordingLog()
        self.chooser = RecordingChooser()
        config = ListenerConfig(name="web", listen=("tcp:443",), upstream="app", **keys)  # type: ignore[arg-type]
        self.factory = ListenerFactory(
            config,
            {"app": UpstreamRuntime("app", self.chooser, 1)},
            self.reactor,
            self.reactor,
            self.log,  # type: ignore[arg-type]
            strategyFor(config),
        )
        return self.factory

    def connect(
        self, host: str = "198.51.100.7", port: int = 40000
    ) -> tuple[PrereadProtocol, HalfCloseableTransport]:
        peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        protocol = self.factory.buildProtocol(peer)
        transport = PromptClientTransport(hostAddress=LISTENER, peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def upstreamBytes(self) -> bytes:
        """Complete the pending upstream connect; what it was sent."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("192.0.2.99", 5432))
        upstream = factory.buildProtocol(None)
        assert upstream is not None
        transport = StringTransport()
        upstream.makeConnection(transport)
        sent: bytes = transport.value()
        return sent


class AccessControlTests(ListenerTestCase):
    def assertDenied(self, host: str, **keys: object) -> None:
        self.makeFactory(**keys)
        protocol, transport = self.connect(host)
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual((record.status, record.action), ("denied", None))
        self.assertIn("allow/deny", record.reason)
        protocol.dataReceived(HELLO)
        self.assertEqual(record.bytesIn, 0)
        self.assertEqual(self.reactor.tcpClients, [])

    def assertAllowed(self, host: str, **keys: object) -> None:
        self.makeFactory(**keys)
        protocol, transport = self.connect(host)
        self.assertTrue(transport.connected)
        protocol.dataReceived(HELLO)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_noListsAllowsEveryone(self) -> None:
        self.assertAllowed("198.51.100.7")

    def test_deniedAddress(self) -> None:
        self.assertDenied("10.1.2.3", deny=networks("10.0.0.0/8"))
        self.assertAllowed("11.1.2.3", deny=networks("10.0.0.0/8"))

    def test_allowRefusesEverythingElse(self) -> None:
        self.assertAllowed("10.1.2.3", allow=networks("10.0.0.0/8"))
        self.assertDenied("11.1.2.3", allow=networks("10.0.0.0/8"))
        self.assertDenied("2001:db8::1", allow=networks("10.0.0.0/8"))

    def test_denyWinsOverAllow(self) -> None:
        keys = {"allow": networks("10.0.0.0/8"), "deny": networks("10.0.0.66/32")}
        self.assertDenied("10.0.0.66", **keys)
        self.assertAllowed("10.0.0.67", **keys)

    def test_ipv6Networks(self) -> None:
        keys = {"allow": networks("2001:db8::/32"), "deny": networks("2001:db8:1::/48")}
        self.assertAllowed("2001:db8::5", **keys)
        self.assertDenied("2001:db8:1::5", **keys)
        self.assertDenied("2001:db9::5", **keys)

    def test_ipv4ClientOnAnIPv6SocketMatchesIPv4Networks(self) -> None:
        self.assertDenied("::ffff:10.1.2.3", deny=networks("10.0.0.0/8"))
        self.assertAllowed("::ffff:10.1.2.3", allow=networks("10.0.0.0/8"))

    def test_deniedJA4IsRefusedAfterThePreread(self) -> None:
        self.makeFactory()
        probe, _ = self.connect()
        probe.dataReceived(HELLO)
        fingerprint = probe.record.ja4
        assert fingerprint is not None
        head, _, hashes = fingerprint.partition("_")
        self.makeFactory(deny_ja4=(f"{head}_{hashes.upper()}",))
        protocol, transport = self.connect()
        protocol.dataReceived(HELLO)
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual((record.status, record.action), ("denied", None))
        self.assertEqual(record.ja4, fingerprint)
        self.assertIn("deny_ja4", record.reason)
        self.assertEqual(record.bytesIn, len(HELLO))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_theJA4IsComputedOnlyWhenRead(self) -> None:
        """
        Without a C{deny_ja4}, routing a connection does not compute its
        fingerprint; the access log (or anything else) that reads it gets
        the one the ClientHello gives.
        """
        self.makeFactory()
        protocol, _ = self.connect()
        protocol.dataReceived(HELLO)
        record = protocol.record
        assert record.hello is not None
        self.assertIsNone(record._ja4)
        self.assertEqual(record.ja4, ja4(record.hello))
        self.assertEqual(record.fields()["ja4"], ja4(record.hello))

    def test_otherJA4Passes(self) -> None:
        self.assertAllowed(
            "198.51.100.7", deny_ja4=("t13d1516h2_8daaf6152771_02713d6af862",)
        )


class LimitTests(ListenerTestCase):
    def test_maxConnectionsRefusesTheExtraOneAtOnce(self) -> None:
        self.makeFactory(max_connections=2)
        first, _ = self.connect("198.51.100.1")
        self.connect("198.51.100.2")
        _, transport = self.connect("198.51.100.3")
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual((record.status, record.action), ("limited", None))
        self.assertIn("max_connections: 2", record.reason)
        # A slot frees when a connection ends.
        first.transport.loseConnection()  # type: ignore[union-attr]
        _, transport = self.connect("198.51.100.3")
        self.assertTrue(transport.connected)

    def test_perClientCountsEachAddress(self) -> None:
        self.makeFactory(max_connections_per_client=2)
        first, _ = self.connect("198.51.100.1", 1)
        self.connect("198.51.100.1", 2)
        _, transport = self.connect("198.51.100.1", 3)
        self.assertFalse(transport.connected)
        self.assertEqual(self.log.records[-1].status, "limited")
        self.assertIn("from 198.51.100.1", self.log.records[-1].reason)
        _, other = self.connect("198.51.100.2", 4)
        self.assertTrue(other.connected)
        first.transport.loseConnection()  # type: ignore[union-attr]
        _, again = self.connect("198.51.100.1", 5)
        self.assertTrue(again.connected)

    def test_refusedConnectionsTakeNoPlace(self) -> None:
        self.makeFactory(max_connections=1, deny=networks("10.0.0.0/8"))
        for port in range(3):
            _, transport = self.connect("10.0.0.1", port)
            self.assertFalse(transport.connected)
        self.assertEqual([r.status for r in self.log.records], ["denied"] * 3)
        _, transport = self.connect("198.51.100.1")
        self.assertTrue(transport.connected)

    def test_deniedBeforeLimited(self) -> None:
        self.makeFactory(max_connections=1, deny=networks("10.0.0.0/8"))
        self.connect("198.51.100.1")
        self.connect("10.0.0.1")
        self.assertEqual(self.log.records[-1].status, "denied")


HEADER = ProxyHeader(
    2,
    Command.PROXY,
    ProxyAddress("203.0.113.7", 50123),
    ProxyAddress("192.0.2.10", 443),
)


class AcceptProxyTests(ListenerTestCase):
    """
    Behind a balancer: the header's address is the client for the log, the
    filters, the per-client limit and the hash key; the balancer's is not.
    """

    def test_proxiedAddressIsTheClient(self) -> None:
        self.makeFactory(accept_proxy_protocol=True)
        protocol, transport = self.connect("10.0.0.2")
        self.assertEqual(protocol.record.client, "10.0.0.2:40000")
        protocol.dataReceived(encode(HEADER) + HELLO)
        self.assertEqual(protocol.record.client, "203.0.113.7:50123")
        self.assertEqual(self.chooser.keys, ["203.0.113.7"])
        self.assertTrue(transport.connected)

    def test_balancerAddressIsNotFiltered(self) -> None:
        self.makeFactory(
            accept_proxy_protocol=True,
            allow=networks("203.0.113.0/24"),
            deny=networks("10.0.0.0/8"),
        )
        protocol, transport = self.connect("10.0.0.2")
        self.assertTrue(transport.connected)
        protocol.dataReceived(encode(HEADER) + HELLO)
        self.assertTrue(transport.connected)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_proxiedAddressIsFiltered(self) -> None:
        self.makeFactory(accept_proxy_protocol=True, deny=networks("203.0.113.7/32"))
        protocol, transport = self.connect("10.0.0.2")
        protocol.dataReceived(encode(HEADER) + HELLO)
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual(
            (record.status, record.client, record.sni),
            ("denied", "203.0.113.7:50123", None),
        )
        self.assertIn("203.0.113.7", record.reason)

    def test_localHeaderKeepsTheBalancerAsClient(self) -> None:
        self.makeFactory(accept_proxy_protocol=True, deny=networks("10.0.0.0/8"))
        protocol, transport = self.connect("10.0.0.2")
        protocol.dataReceived(encode(ProxyHeader(2, Command.LOCAL)))
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual((record.status, record.client), ("denied", "10.0.0.2:40000"))

    def test_perClientLimitCountsProxiedAddresses(self) -> None:
        self.makeFactory(accept_proxy_protocol=True, max_connections_per_client=1)
        first, _ = self.connect("10.0.0.2", 1)
        first.dataReceived(encode(HEADER))
        second, transport = self.connect("10.0.0.2", 2)
        other = ProxyHeader(
            2, Command.PROXY, ProxyAddress("203.0.113.8", 1), HEADER.destination
        )
        second.dataReceived(encode(other))
        self.assertTrue(transport.connected)
        third, transport = self.connect("10.0.0.2", 3)
        third.dataReceived(encode(HEADER))
        self.assertFalse(transport.connected)
        self.assertEqual(self.log.records[-1].status, "limited")

    def test_maxConnectionsAppliesAtAccept(self) -> None:
        self.makeFactory(accept_proxy_protocol=True, max_connections=1)
        self.connect("10.0.0.2", 1)
        _, transport = self.connect("10.0.0.2", 2)
        self.assertFalse(transport.connected)
        self.assertEqual(self.log.records[-1].status, "limited")

    def test_badHeader(self) -> None:
        self.makeFactory(accept_proxy_protocol=True)
        protocol, transport = self.connect("10.0.0.2")
        protocol.dataReceived(HELLO)
        self.assertFalse(transport.connected)
        [record] = self.log.records
        self.assertEqual((record.status, record.action), ("bad_proxy_header", None))


class SendProxyTests(ListenerTestCase):
    def readHeader(self, data: bytes) -> tuple[ProxyHeader, bytes]:
        result = ProxyHeaderReader().feed(data)
        assert result is not NEED_MORE
        return result

    def test_v1BeforeTheClientHello(self) -> None:
        self.makeFactory(proxy_protocol="v1")
        protocol, _ = self.connect("198.51.100.7", 40000)
        protocol.dataReceived(HELLO)
        sent = self.upstreamBytes()
        self.assertEqual(
            sent, b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n" + HELLO
        )

    def test_v2CarriesTheServerName(self) -> None:
        self.makeFactory(proxy_protocol="v2")
        protocol, _ = self.connect("2001:db8::7", 40000)
        protocol.dataReceived(HELLO)
        header, rest = self.readHeader(self.upstreamBytes())
        self.assertEqual(rest, HELLO)
        self.assertEqual(header.source, ProxyAddress("2001:db8::7", 40000))
        # An IPv4 listener address beside an IPv6 client: mapped, as HAProxy does.
        self.assertEqual(header.destination, ProxyAddress("::ffff:192.0.2.1", 443))
        self.assertEqual(header.authority, "db.example.com")
        self.assertIsNone(header.ssl)

    def test_receivedAddressesArePassedOn(self) -> None:
        self.makeFactory(accept_proxy_protocol=True, proxy_protocol="v2")
        protocol, _ = self.connect("10.0.0.2")
        protocol.dataReceived(encode(HEADER) + HELLO)
        header, rest = self.readHeader(self.upstreamBytes())
        self.assertEqual(rest, HELLO)
        self.assertEqual(
            (header.source, header.destination), (HEADER.source, HEADER.destination)
        )

    def test_localHeaderSendsTheSocketsAddresses(self) -> None:
        self.makeFactory(accept_proxy_protocol=True, proxy_protocol="v1")
        protocol, _ = self.connect("10.0.0.2", 1234)
        protocol.dataReceived(encode(ProxyHeader(2, Command.LOCAL)) + HELLO)
        self.assertTrue(
            self.upstreamBytes().startswith(
                b"PROXY TCP4 10.0.0.2 192.0.2.1 1234 443\r\n"
            )
        )

    def test_offSendsNothing(self) -> None:
        self.makeFactory()
        protocol, _ = self.connect()
        protocol.dataReceived(HELLO)
        self.assertEqual(self.upstreamBytes(), HELLO)


class ProxyProtocolFromTests(ListenerTestCase):
    """
    C{proxy_protocol_from}: only the listed balancers may send a PROXY
    header; anyone else is refused at accept, before a byte is read.
    """

    def test_aPeerNotListedIsDeniedAtAccept(self) -> None:
        self.makeFactory(
            accept_proxy_protocol=True, proxy_protocol_from=networks("10.0.0.0/24")
        )
        protocol, transport = self.connect("198.51.100.7")
        [record] = self.log.records
        self.assertEqual((record.status, record.bytesIn), ("denied", 0))
        self.assertIn("198.51.100.7 is not in proxy_protocol_from", record.reason)
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.ACCESS_DENIED, 0x0301)
        )
        # The spoofed header that follows is never read.
        protocol.dataReceived(encode(HEADER) + HELLO)
        self.assertEqual((record.client, record.bytesIn), ("198.51.100.7:40000", 0))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_aListedBalancerIsServed(self) -> None:
        self.makeFactory(
            accept_proxy_protocol=True,
            proxy_protocol_from=networks("10.0.0.0/24", "2001:db8::/32"),
        )
        for balancer in ("10.0.0.2", "::ffff:10.0.0.3", "2001:db8::9"):
            protocol, transport = self.connect(balancer)
            protocol.dataReceived(encode(HEADER) + HELLO)
            self.assertTrue(transport.connected)
            self.assertEqual(protocol.record.client, "203.0.113.7:50123")
        self.assertEqual(len(self.reactor.tcpClients), 3)


class RateTests(ListenerTestCase):
    def test_aBurstOverTheRateIsLimitedAtAccept(self) -> None:
        self.makeFactory(max_connection_rate=parseRate("3/s"))
        results = []
        for port in range(5):
            _, transport = self.connect("198.51.100.7", port)
            results.append(transport.connected)
        self.assertEqual(results, [True, True, True, False, False])
        refused = self.log.records[-1]
        self.assertEqual((refused.status, refused.action), ("limited", None))
        self.assertEqual(
            refused.reason,
            "max_connection_rate: more than 3/s new connections from 198.51.100.7",
        )
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.ACCESS_DENIED, 0x0301)
        )
        # Others have buckets of their own; time refills this one.
        _, other = self.connect("198.51.100.8")
        self.assertTrue(other.connected)
        self.reactor.advance(0.34)
        _, again = self.connect("198.51.100.7", 99)
        self.assertTrue(again.connected)

    def test_theRateCountsTheProxiedClient(self) -> None:
        self.makeFactory(
            accept_proxy_protocol=True, max_connection_rate=parseRate("1/m")
        )
        first, transport = self.connect("10.0.0.2", 1)
        first.dataReceived(encode(HEADER))
        self.assertTrue(transport.connected)
        second, transport = self.connect("10.0.0.2", 2)
        other = ProxyHeader(
            2, Command.PROXY, ProxyAddress("203.0.113.8", 1), HEADER.destination
        )
        second.dataReceived(encode(other))
        self.assertTrue(transport.connected)
        third, transport = self.connect("10.0.0.2", 3)
        third.dataReceived(encode(HEADER))
        self.assertFalse(transport.connected)
        self.assertEqual(self.log.records[-1].status, "limited")

    def test_deniedClientsTakeNoToken(self) -> None:
        self.makeFactory(
            deny=networks("10.0.0.0/8"), max_connection_rate=parseRate("1/m")
        )
        self.connect("10.0.0.1", 1)
        self.assertEqual(self.log.records[-1].status, "denied")
        self.connect("10.0.0.1", 2)
        self.assertEqual(self.log.records[-1].status, "denied")


class PassthroughProtocolsTests(ListenerTestCase):
    def test_aHelloOfferingNoneOfThemIsRefusedWithProtocolVersion(self) -> None:
        self.makeFactory(passthrough_protocols=("TLSv1.2", "TLSv1.3"))
        protocol, transport = self.connect()
        protocol.dataReceived(TLS10_HELLO)
        [record] = self.log.records
        self.assertEqual((record.status, record.action), ("denied", "passthrough"))
        self.assertEqual(
            record.reason,
            "ClientHello offers TLSv1 (legacy_version, no supported_versions);"
            " passthrough_protocols allows TLSv1.2, TLSv1.3",
        )
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.PROTOCOL_VERSION, 0x0301)
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_supportedVersionsDecide(self) -> None:
        self.makeFactory(passthrough_protocols=("TLSv1.3",))
        protocol, transport = self.connect()
        protocol.dataReceived(
            makeClientHello("db.example.com", maxVersion=SSL.TLS1_2_VERSION)
        )
        self.assertIn("offers TLSv1.2 (legacy_version", self.log.records[-1].reason)
        protocol, transport = self.connect()
        protocol.dataReceived(HELLO)  # offers TLS 1.3 and 1.2
        self.assertTrue(transport.connected)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_aTLS13OnlyHelloNamesWhatItOffers(self) -> None:
        self.makeFactory(passthrough_protocols=("TLSv1", "TLSv1.1"))
        protocol, _ = self.connect()
        protocol.dataReceived(
            makeClientHello("db.example.com", minVersion=SSL.TLS1_3_VERSION)
        )
        self.assertIn(
            "offers TLSv1.3 (supported_versions); passthrough_protocols allows"
            " TLSv1, TLSv1.1",
            self.log.records[-1].reason,
        )

    def test_anyLetsEverythingThrough(self) -> None:
        self.makeFactory()
        protocol, transport = self.connect()
        protocol.dataReceived(TLS10_HELLO)
        self.assertTrue(transport.connected)


class RefusalAlertTests(ListenerTestCase):
    def test_noRouteIsUnrecognizedName(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = RecordingLog()
        config = ListenerConfig(
            name="web",
            listen=("tcp:443",),
            routes=(RouteConfig("other.example.com", "app"),),
        )
        self.factory = ListenerFactory(
            config,
            {"app": UpstreamRuntime("app", RecordingChooser(), 1)},
            self.reactor,
            self.reactor,
            self.log,  # type: ignore[arg-type]
            strategyFor(config),
        )
        protocol, transport = self.connect()
        protocol.dataReceived(TLS10_HELLO)
        self.assertEqual(self.log.records[-1].status, "no_route")
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.UNRECOGNIZED_NAME, 0x0301)
        )

    def test_deniedJA4IsAccessDenied(self) -> None:
        self.makeFactory()
        probe, _ = self.connect()
        probe.dataReceived(HELLO)
        assert probe.record.ja4 is not None
        self.makeFactory(deny_ja4=(probe.record.ja4,))
        protocol, transport = self.connect()
        protocol.dataReceived(HELLO)
        self.assertEqual(
            transport.value(), alertRecord(AlertDescription.ACCESS_DENIED, 0x0303)
        )

    def test_passthroughWithNoServerLeftIsInternalError(self) -> None:
        self.makeFactory()
        protocol, transport = self.connect()
        protocol.dataReceived(HELLO)
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(NO_CONNECTOR, Failure(ConnectionRefusedError()))
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")
        alert = alertRecord(AlertDescription.INTERNAL_ERROR, 0x0303)
        self.assertEqual(transport.value(), alert)
        self.assertEqual(record.bytesOut, len(alert))


@implementer(IPreamble)
class PlaintextAtOnce:
    """
    A preamble that says every client starts without TLS.
    """

    def feed(self, data: bytes, answer: object) -> object:
        return "a plaintext start"

    def describeEnd(self) -> str:
        return "closed in the preamble"

    def describeTimeout(self, timeout: float) -> str:
        return "slow preamble"


@implementer(IProtocolStrategy)
class BareStrategy:
    """
    A strategy that provides none of the small interfaces: it serves no
    plaintext client, nothing at accept, and terminates plainly.
    """

    name = "bare"
    speaksTLSFirst = False

    def __init__(self, readsHello: bool) -> None:
        self.readsHello = readsHello

    def preamble(self) -> PlaintextAtOnce:
        return PlaintextAtOnce()

    def misdirected(self, buffered: bytes) -> None:
        return None

    def opening(self, encrypted: bool) -> None:
        return None

    def listenerState(self) -> None:
        return None


class MissingHookTests(SynchronousTestCase):
    """
    The listener asks which small interfaces its strategy provides: a
    hook that is not there is never called.
    """

    def makeFactory(self, strategy: IProtocolStrategy) -> ListenerFactory:
        self.reactor = MemoryReactorClock()
        self.log = RecordingLog()
        config = ListenerConfig(name="bare", listen=("tcp:443",), upstream="app")
        return ListenerFactory(
            config,
            {"app": UpstreamRuntime("app", RecordingChooser(), 1)},
            self.reactor,
            self.reactor,
            self.log,  # type: ignore[arg-type]
            strategy,
        )

    def test_aStrategyThatCouldServeNoConnectionIsRefusedWhenBuilt(self) -> None:
        """
        Reading no ClientHello without serving at accept would leave every
        connection unserved: the factory refuses the strategy at once.
        """
        error = self.assertRaises(TypeError, self.makeFactory, BareStrategy(False))
        self.assertIn("IServesAtAccept", str(error))

    def test_aPlaintextClientOfAStrategyThatServesNoneIsRefused(self) -> None:
        factory = self.makeFactory(BareStrategy(True))
        peer = IPv4Address("TCP", "198.51.100.7", 40000)
        protocol = factory.buildProtocol(peer)
        transport = PromptClientTransport(hostAddress=LISTENER, peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"hello in the clear")
        [record] = self.log.records
        self.assertEqual(record.status, "plaintext_refused")
        self.assertIn("bare serves no client without TLS", record.reason)
        self.assertFalse(transport.connected)
        self.assertEqual(self.reactor.tcpClients, [])
