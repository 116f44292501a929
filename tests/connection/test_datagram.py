"""
Tests for L{gateway.connection.datagram}: a UDP endpoint's flows driven in
memory, with aioquic's real client datagrams, a fake UDP reactor and a
fake clock.  No socket is opened.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ListenerConfig, RouteConfig, ServerConfig, UpstreamConfig
from gateway.connection.datagram import QuicEndpoint, QuicListener
from gateway.connection.quicflows import FlowState
from gateway.connection.session import UpstreamRuntime
from gateway.connection.upstream import FirstServer
from gateway.rules.accesslog import ConnectionRecord
from gateway.wire.clienthello import NEED_MORE
from gateway.wire.ja4 import ja4
from gateway.wire.quic import (
    CONNECTION_REFUSED,
    QUIC_V1,
    QUIC_V2,
    InitialReader,
    initialKeys,
    parseLongHeader,
)
from gateway.wire.quic.crypto import decryptInitial
from tests.wire.test_quic import aioquicDatagrams

CLIENT = ("198.51.100.7", 40000)
SERVERS = (ServerConfig("192.0.2.1", 443), ServerConfig("192.0.2.2", 443))


def randomInitial(size: int) -> bytes:
    """
    A v1 Initial header of consistent length over random bytes: readable,
    never decryptable.
    """
    head = b"\xc0" + QUIC_V1.to_bytes(4, "big") + b"\x08" + os.urandom(8) + b"\x00\x00"
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


class FakeUDPPort:
    """
    What C{listenUDP} returns: records what is written, where it is
    connected, and whether it was stopped.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.written: list[tuple[bytes, Any]] = []
        self.connected: tuple[str, int] | None = None
        self.stopped = False

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def write(self, datagram: bytes, addr: Any = None) -> None:
        self.written.append((datagram, addr))

    def stopListening(self) -> None:
        self.stopped = True


class FakeUDPReactor:
    def __init__(self) -> None:
        self.ports: list[FakeUDPPort] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        fake = FakeUDPPort(protocol)
        protocol.makeConnection(fake)
        self.ports.append(fake)
        return fake


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[ConnectionRecord] = []
        self.accepts: list[str] = []

    def accepted(self, listener: str) -> None:
        self.accepts.append(listener)

    def write(self, record: ConnectionRecord) -> None:
        self.records.append(record)


class RecordingChooser(FirstServer):
    def __init__(self, upstream: UpstreamConfig) -> None:
        super().__init__(upstream)
        self.events: list[tuple[str, str]] = []

    def connectFailed(self, server: ServerConfig) -> None:
        self.events.append(("failed", server.address))

    def connectSucceeded(self, server: ServerConfig) -> None:
        self.events.append(("succeeded", server.address))

    def released(self, server: ServerConfig) -> None:
        self.events.append(("released", server.address))


class EndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.makeEndpoint()

    def makeEndpoint(self, **keys: Any) -> None:
        self.clock = Clock()
        self.reactor = FakeUDPReactor()
        self.log = RecordingLog()
        self.drops: list[str] = []
        upstream = UpstreamConfig(name="app", servers=SERVERS)
        self.chooser = RecordingChooser(upstream)
        settings: dict[str, Any] = {
            "routes": (
                RouteConfig("one.example", "app", None, 1),
                RouteConfig("ALPN:h3", "app", None, 2),
            ),
            "quic_idle_timeout": 30.0,
            "preread_timeout": 5.0,
            "connect_timeout": 2.0,
            **keys,
        }
        config = ListenerConfig(name="q", listen=("udp:443",), **settings)
        self.listener = QuicListener(
            config,
            {"app": UpstreamRuntime("app", self.chooser, 2)},
            self.reactor,  # type: ignore[arg-type]
            self.clock,
            self.log,  # type: ignore[arg-type]
            dropped=lambda listener, reason: self.drops.append(reason),
        )
        self.endpoint = QuicEndpoint(self.listener, self.clock)
        self.port = self.reactor.listenUDP(443, self.endpoint)

    def send(self, datagram: bytes, address: tuple[str, int] = CLIENT) -> None:
        self.endpoint.datagramReceived(datagram, address)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.endpoint.sweep()

    def establish(self, name: str = "one.example") -> list[bytes]:
        """
        A client's first flight, then the server's Initial (with its own
        connection ID) back: a relaying flow.
        """
        datagrams = aioquicDatagrams(name, ["h3"])
        for datagram in datagrams:
            self.send(datagram)
        upstream = self.reactor.ports[-1]
        upstream.protocol.datagramReceived(self.serverInitial(), ("192.0.2.1", 443))
        return datagrams

    def serverInitial(self, scid: bytes = b"srv-cid1") -> bytes:
        header = (
            b"\xc0"
            + QUIC_V1.to_bytes(4, "big")
            + b"\x08clientid"
            + bytes([len(scid)])
            + scid
            + b"\x00\x40\x10"
        )
        return header + os.urandom(16)

    # routing and relaying

    def test_aFlowIsRoutedAndItsDatagramsReplayedToTheServer(self) -> None:
        datagrams = aioquicDatagrams("one.example", ["h3"])
        for datagram in datagrams:
            self.send(datagram)
        upstream = self.reactor.ports[-1]
        self.assertEqual(upstream.connected, ("192.0.2.1", 443))
        self.assertEqual([d for d, _ in upstream.written], datagrams)
        self.assertEqual(self.log.accepts, ["q"])
        # Later datagrams go straight through.
        self.send(b"\x41" + b"z" * 40)
        self.assertEqual(upstream.written[-1][0], b"\x41" + b"z" * 40)

    def test_theServersDatagramsGoToTheClient(self) -> None:
        self.establish()
        self.assertEqual(self.port.written[-1][1], CLIENT)
        self.assertEqual(self.chooser.events, [("succeeded", "192.0.2.1:443")])

    def test_aHelloOverSeveralDatagramsWaitsForTheLast(self) -> None:
        datagrams = aioquicDatagrams(
            "one.example", ["h3", *(f"pad-{i:03d}" for i in range(150))]
        )
        self.assertGreaterEqual(len(datagrams), 2)
        for datagram in datagrams[:-1]:
            self.send(datagram)
            self.assertEqual(len(self.reactor.ports), 1)
        self.send(datagrams[-1])
        upstream = self.reactor.ports[-1]
        self.assertEqual([d for d, _ in upstream.written], datagrams)

    def test_aForgedInitialDoesNotEndAPendingFlow(self) -> None:
        datagrams = aioquicDatagrams(
            "one.example", ["h3", *(f"pad-{i:03d}" for i in range(150))]
        )
        self.send(datagrams[0])
        self.send(randomInitial(1200))
        self.assertEqual(self.drops, ["undecryptable"])
        for datagram in datagrams[1:]:
            self.send(datagram)
        upstream = self.reactor.ports[-1]
        self.assertEqual([d for d, _ in upstream.written], datagrams)
        self.endpoint.shutdown()
        self.assertEqual(self.log.records[0].fields()["packets_in"], len(datagrams))

    def test_anIdleFlowIsLoggedOk(self) -> None:
        datagrams = self.establish()
        upstream = self.reactor.ports[-1]
        self.advance(29)
        self.send(b"\x41srv-cid1" + b"x" * 30)
        self.advance(29.5)
        self.assertEqual(self.log.records, [])
        self.advance(1)
        [record] = self.log.records
        self.assertEqual(
            (record.status, record.transport, record.sni, record.upstream),
            (None, "udp", "one.example", "192.0.2.1:443"),
        )
        fields = record.fields()
        self.assertEqual(fields["status"], "ok")
        self.assertEqual(fields["packets_in"], len(datagrams) + 1)
        self.assertEqual(fields["packets_out"], 1)
        self.assertEqual(fields["quic_version"], "v1")
        self.assertEqual(
            fields["bytes_in"], sum(map(len, datagrams)) + len(b"\x41srv-cid1") + 30
        )
        self.assertTrue(upstream.stopped)
        self.assertEqual(self.chooser.events[-1], ("released", "192.0.2.1:443"))
        self.assertEqual(len(self.endpoint.table), 0)

    def test_version2IsLoggedAsV2(self) -> None:
        for datagram in aioquicDatagrams("one.example", ["h3"], QUIC_V2):
            self.send(datagram)
        self.endpoint.shutdown()
        [record] = self.log.records
        self.assertEqual(record.fields()["quic_version"], "v2")
        self.assertEqual(record.status, "shutdown")

    # migration

    def test_aClientOnANewPortKeepsItsFlow(self) -> None:
        self.establish()
        upstream = self.reactor.ports[-1]
        moved = ("198.51.100.7", 40001)
        self.send(b"\x41srv-cid1" + b"m" * 30, moved)
        self.assertEqual(upstream.written[-1][0], b"\x41srv-cid1" + b"m" * 30)
        upstream.protocol.datagramReceived(b"\x41answer", ("192.0.2.1", 443))
        self.assertEqual(self.port.written[-1], (b"\x41answer", moved))
        self.assertEqual(len(self.endpoint.table), 1)

    def test_aLongHeaderFromANewAddressIsDropped(self) -> None:
        datagrams = self.establish()
        upstream = self.reactor.ports[-1]
        before = len(upstream.written)
        self.send(datagrams[0], ("203.0.113.66", 1))
        self.assertEqual(len(upstream.written), before)
        self.assertEqual(self.drops, ["address_changed"])
        upstream.protocol.datagramReceived(b"\x41answer", ("192.0.2.1", 443))
        self.assertEqual(self.port.written[-1][1], CLIENT)

    def test_aShortHeaderOfNoFlowIsDropped(self) -> None:
        self.establish()
        self.send(b"\x41unknown1" + b"x" * 30, ("198.51.100.7", 40001))
        self.assertEqual(self.drops, ["unknown_flow"])

    # failures

    def test_aSilentServerIsReplacedByTheNext(self) -> None:
        datagrams = aioquicDatagrams("one.example", ["h3"])
        for datagram in datagrams:
            self.send(datagram)
        first = self.reactor.ports[-1]
        self.advance(2)
        second = self.reactor.ports[-1]
        self.assertTrue(first.stopped)
        self.assertEqual(second.connected, ("192.0.2.2", 443))
        self.assertEqual([d for d, _ in second.written], datagrams)
        self.assertEqual(self.chooser.events, [("failed", "192.0.2.1:443")])
        # Both tried (next_upstream_tries = 2): the flow ends.
        self.advance(2)
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")
        self.assertEqual(len(self.endpoint.table), 0)

    def test_anUnreachableServerIsReplacedAtOnce(self) -> None:
        for datagram in aioquicDatagrams("one.example", ["h3"]):
            self.send(datagram)
        self.reactor.ports[-1].protocol.connectionRefused()
        self.assertEqual(self.reactor.ports[-1].connected, ("192.0.2.2", 443))

    def test_anIncompleteHelloTimesOut(self) -> None:
        datagrams = aioquicDatagrams(
            "one.example", ["h3", *(f"pad-{i:03d}" for i in range(150))]
        )
        self.send(datagrams[0])
        self.advance(4.9)
        self.assertEqual(self.log.records, [])
        self.advance(0.1)
        [record] = self.log.records
        self.assertEqual(record.status, "preread_timeout")
        self.assertEqual(len(self.endpoint.table), 0)

    def test_tooManyBufferedBytesIsABadClientHello(self) -> None:
        self.makeEndpoint(preread_buffer_size=2000)
        datagrams = aioquicDatagrams(
            "one.example", ["h3", *(f"pad-{i:03d}" for i in range(150))]
        )
        for datagram in datagrams:
            self.send(datagram)
        [record] = self.log.records
        self.assertEqual(record.status, "bad_client_hello")
        self.assertEqual(len(self.reactor.ports), 1)

    # refusals

    def test_noRouteIsLoggedOnceAndItsRetransmissionsDropped(self) -> None:
        self.makeEndpoint(
            routes=(RouteConfig("one.example", "app", None, 1),),
        )
        datagrams = aioquicDatagrams("two.example", ["h3"])
        self.send(datagrams[0])
        self.send(datagrams[0])
        [record] = self.log.records
        self.assertEqual(record.status, "no_route")
        self.assertEqual(self.drops, ["refused"])
        self.advance(5)
        self.assertEqual(len(self.endpoint.table), 0)

    def assertRefusal(self, datagram: bytes, answer: bytes, address: Any) -> None:
        """
        C{answer} is the refusal of the flow C{datagram} (its first
        Initial) started, sent to the client: CONNECTION_CLOSE with
        CONNECTION_REFUSED under the server's Initial keys.
        """
        self.assertEqual(address, CLIENT)
        sent = parseLongHeader(datagram)
        header = parseLongHeader(answer)
        self.assertEqual((header.dcid, header.scid), (sent.scid, sent.dcid))
        keys = initialKeys(sent.dcid, sent.version, "server")
        opened = decryptInitial(answer, header.headerLength, keys, 0)
        self.assertEqual(opened.payload[:4], bytes([0x1C, CONNECTION_REFUSED, 0, 0]))

    def test_aRefusedClientIsAnsweredConnectionRefused(self) -> None:
        """
        A refused flow's client gets a CONNECTION_CLOSE at once, counted in
        the flow's line, and again for up to two retransmissions.
        """
        self.makeEndpoint(routes=(RouteConfig("one.example", "app", None, 1),))
        datagrams = aioquicDatagrams("two.example", ["h3"])
        self.send(datagrams[0])
        [(answer, address)] = self.port.written
        self.assertRefusal(datagrams[0], answer, address)
        [record] = self.log.records
        fields = record.fields()
        self.assertEqual((fields["status"], fields["packets_out"]), ("no_route", 1))
        self.assertEqual(fields["bytes_out"], len(answer))
        for _ in range(4):
            self.send(datagrams[0])
        self.assertEqual(len(self.port.written), 3)
        for again, address in self.port.written[1:]:
            self.assertRefusal(datagrams[0], again, address)
        self.assertEqual(self.drops, ["refused"] * 4)
        self.assertEqual(len(self.log.records), 1)
        # Nothing else answered: a short header of the refused flow.
        self.send(b"\x41" + b"s" * 30)
        self.assertEqual(len(self.port.written), 3)

    def test_aDeniedOrLimitedClientIsAnsweredToo(self) -> None:
        import ipaddress

        self.makeEndpoint(deny=(ipaddress.ip_network("198.51.100.0/24"),))
        datagram = aioquicDatagrams("one.example", ["h3"])[0]
        self.send(datagram)
        self.assertEqual(self.log.records[0].status, "denied")
        [(answer, address)] = self.port.written
        self.assertRefusal(datagram, answer, address)

    def test_noServerAnsweringIsARefusal(self) -> None:
        """
        No server answered the flow (both timed out): its client never
        heard from one, and is refused as at a refusal.
        """
        datagrams = aioquicDatagrams("one.example", ["h3"])
        for datagram in datagrams:
            self.send(datagram)
        self.advance(2)
        self.advance(2)
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")
        [(answer, address)] = self.port.written
        self.assertRefusal(datagrams[0], answer, address)

    def test_aFlowAServerAnsweredIsNotRefused(self) -> None:
        """
        Once a server answered, the client's Initial keys are no longer the
        only ones: the gateway never speaks for the server then.
        """
        self.establish()
        self.advance(31)
        [record] = self.log.records
        self.assertEqual(record.fields()["status"], "ok")
        self.assertEqual(len(self.port.written), 1)  # the server's datagram

    def test_quicMaxFlowsRefusesTheNextFlow(self) -> None:
        self.makeEndpoint(quic_max_flows=1)
        self.establish()
        for datagram in aioquicDatagrams("one.example", ["h3"]):
            self.send(datagram, ("198.51.100.8", 1))
        [record] = self.log.records
        self.assertEqual(record.status, "limited")
        self.assertIn("quic_max_flows: 1", record.reason)
        self.assertEqual(len(self.reactor.ports), 2)

    def test_alpnH3RoutesANameWithNoRoute(self) -> None:
        for datagram in aioquicDatagrams("other.example", ["h3"]):
            self.send(datagram)
        self.assertEqual(self.reactor.ports[-1].connected, ("192.0.2.1", 443))
        self.endpoint.shutdown()
        [record] = self.log.records
        self.assertEqual((record.sni, record.alpn), ("other.example", ("h3",)))

    def test_denyJA4IsApplied(self) -> None:
        datagrams = aioquicDatagrams("one.example", ["h3"])
        hello = InitialReader().feed(datagrams[0])
        assert hello is not NEED_MORE
        self.makeEndpoint(deny_ja4=(ja4(hello),))
        self.send(datagrams[0])
        [record] = self.log.records
        self.assertEqual(record.status, "denied")
        self.assertIn("deny_ja4", record.reason)
        self.assertEqual(len(self.reactor.ports), 1)

    def test_denyIsApplied(self) -> None:
        import ipaddress

        self.makeEndpoint(deny=(ipaddress.ip_network("198.51.100.0/24"),))
        self.send(aioquicDatagrams("one.example", ["h3"])[0])
        self.assertEqual(self.log.records[0].status, "denied")

    # what starts no flow

    def test_anUnknownVersionGetsVersionNegotiation(self) -> None:
        datagram = b"\xc0\x1a\x2a\x3a\x4a\x04dcid\x03sci" + b"\x00" * 1200
        self.send(datagram)
        [(answer, address)] = self.port.written
        self.assertEqual(address, CLIENT)
        header = parseLongHeader(answer)
        self.assertEqual((header.dcid, header.scid), (b"sci", b"dcid"))
        self.assertEqual(set(header.versions), {QUIC_V1, QUIC_V2})
        self.assertLessEqual(len(answer), len(datagram))
        # Too small to be an Initial: not answered.
        self.send(datagram[:1000])
        self.assertEqual(len(self.port.written), 1)
        self.assertEqual(self.drops, ["unsupported_version"])

    def test_whatStartsNoFlowIsDroppedByReason(self) -> None:
        initial = aioquicDatagrams("one.example", ["h3"])[0]
        self.send(b"")
        self.send(b"\x00garbage")
        self.send(b"\x41" + b"s" * 30)
        self.send(initial[:1100])
        self.send(randomInitial(1100))
        self.send(randomInitial(1200))
        handshake = bytearray(initial)
        handshake[0] = (handshake[0] & 0xCF) | 0x20
        self.send(bytes(handshake))
        self.assertEqual(
            self.drops,
            [
                "not_quic",
                "not_quic",
                "unknown_flow",
                "too_small",
                "too_small",
                "undecryptable",
                "unknown_flow",
            ],
        )
        self.assertEqual(self.port.written, [])
        self.assertEqual(self.log.records, [])
        self.assertEqual(len(self.endpoint.table), 0)

    def test_noNewFlowWhileDraining(self) -> None:
        self.establish()
        self.endpoint.accepting = False
        self.send(aioquicDatagrams("one.example", ["h3"])[0], ("198.51.100.8", 1))
        self.assertEqual(self.drops, ["shutdown"])
        # The established flow goes on.
        self.send(b"\x41srv-cid1" + b"x" * 30)
        self.assertEqual(self.reactor.ports[-1].written[-1][0][:9], b"\x41srv-cid1")
        self.assertEqual(
            self.endpoint.table.byAddress[CLIENT].state, FlowState.RELAYING
        )

    def test_noSocketIsNotTheServersFault(self) -> None:
        """
        A flow whose UDP socket cannot be opened (out of descriptors) ends
        C{upstream_unavailable} without counting against the server.
        """
        listenUDP = self.reactor.listenUDP

        def failing(*args: Any, **kwargs: Any) -> FakeUDPPort:
            raise OSError(24, "Too many open files")

        self.reactor.listenUDP = failing  # type: ignore[method-assign]
        for datagram in aioquicDatagrams("one.example", ["h3"]):
            self.send(datagram)
        self.reactor.listenUDP = listenUDP  # type: ignore[method-assign]
        [record] = self.log.records
        self.assertEqual(record.status, "upstream_unavailable")
        self.assertIn("Too many open files", record.reason)
        self.assertEqual(self.chooser.events, [("released", "192.0.2.1:443")])
        self.assertEqual(len(self.endpoint.table), 0)

    def test_aRetryAndTheNextInitialStayOnTheFlow(self) -> None:
        datagrams = aioquicDatagrams("one.example", ["h3"])
        for datagram in datagrams:
            self.send(datagram)
        upstream = self.reactor.ports[-1]
        retry = (
            b"\xf0"
            + QUIC_V1.to_bytes(4, "big")
            + b"\x08clientid\x08retrycid"
            + b"token-from-the-server"
            + os.urandom(16)
        )
        upstream.protocol.datagramReceived(retry, ("192.0.2.1", 443))
        self.assertEqual(self.port.written[-1], (retry, CLIENT))
        flow = self.endpoint.table.byCID[b"retrycid"]
        self.assertIs(flow, self.endpoint.table.byAddress[CLIENT])
        # The client's next Initial (to the Retry's ID) goes the same way.
        self.send(datagrams[0])
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(upstream.written[-1][0], datagrams[0])


def _endpoint() -> tuple[EndpointTests, FakeUDPPort]:
    case = EndpointTests()
    case.makeEndpoint()
    return case, case.port


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.binary(max_size=64),
                st.binary(min_size=1200, max_size=1300),
                st.builds(
                    lambda first, rest: bytes([first]) + rest,
                    st.sampled_from([0x40, 0x41, 0xC0, 0xD0, 0xE0, 0xF0, 0x80]),
                    st.binary(max_size=1300),
                ),
            ),
            st.integers(1, 3),
        ),
        max_size=20,
    )
)
def test_anyDatagramsAreDroppedOrAnsweredNoLarger(
    datagrams: list[tuple[bytes, int]],
) -> None:
    """
    Whatever arrives from wherever: no exception, no flow, and nothing sent
    back but Version Negotiation no larger than what it answers.
    """
    case, port = _endpoint()
    for datagram, source in datagrams:
        case.send(datagram, ("203.0.113.1", source))
        for answer, _ in port.written:
            assert answer[1:5] == b"\0\0\0\0"
            assert len(answer) <= max(len(d) for d, _ in datagrams)
    assert len(case.endpoint.table) == 0
    assert case.log.records == []
