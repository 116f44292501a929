"""
The one choice of relay (L{gateway.connection.relays}): which provider
serves a connection, from the C{relay} setting, the platform and the two
transports, said in the debug log.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gateway.connection import spliceflow
from gateway.connection.relay import CopyRelay, PortableRelay
from gateway.connection.relays import (
    Provider,
    chooseRelay,
    spliceUnavailable,
    startRelay,
)
from gateway.connection.splicerelay import SpliceRelay
from gateway.connection.terminatedrelay import TerminatedRelay
from gateway.fast import hub as fasthub
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.lifecycle import Event, State
from gateway.tls.transport import ITLSEvents, TLSTransport
from tests.helpers import appendingTo, fastPathOnly
from tests.transports import HalfCloseableTransport, TableOwner

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux splice only"),
    fastPathOnly,
    pytest.mark.timeout(60),
]

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor


@pytest.fixture
def tcpPair() -> Iterator[tuple[tcp.Connection, tcp.Connection]]:
    """Two connected Twisted TCP transports (not registered with any reactor)."""
    reactor = EPollReactor()
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    transports = []
    for sock in (near, far):
        transport = tcp.Connection(sock, Protocol(), reactor)
        transport.connected = True
        transports.append(transport)
    yield transports[0], transports[1]
    hub = fasthub.HUBS.get(reactor)
    if hub is not None:
        hub.close()
    near.close()
    far.close()
    reactor._poller.close()


def test_spliceIsChosenForTwoTcpSockets(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    assert spliceUnavailable("auto", *tcpPair) is None
    assert spliceUnavailable("splice", *tcpPair) is None


def test_portableWhenAskedFor(tcpPair: tuple[tcp.Connection, tcp.Connection]) -> None:
    assert spliceUnavailable("portable", *tcpPair) == "relay = portable"


def test_portableWithoutSplice(
    tcpPair: tuple[tcp.Connection, tcp.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spliceflow, "splice", None)
    assert spliceUnavailable("splice", *tcpPair) == (
        "relay = splice, but this platform has no splice"
    )


def test_portableForTlsOrMemoryTransports(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    """
    Plaintext that lives in Python (a terminated or re-encrypted side) is
    not in a socket to splice from.
    """
    assert spliceUnavailable("auto", HalfCloseableTransport(), tcpPair[1]) == (
        "relay = auto, but the client side is a HalfCloseableTransport"
    )


def test_portableForUnixSockets(tcpPair: tuple[tcp.Connection, tcp.Connection]) -> None:
    near, far = socket.socketpair()
    try:
        unix = tcp.Connection(near, Protocol(), tcpPair[0].reactor)
        unix.connected = True
        assert spliceUnavailable("auto", tcpPair[0], unix) == (
            "relay = auto, but the upstream side is not an IP socket"
        )
    finally:
        near.close()
        far.close()


def test_portableWhileTwistedHoldsUnsentBytes(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    """
    Bytes the gateway wrote through Twisted (a PROXY header, say) would be
    overtaken by spliced ones.
    """
    client, upstream = tcpPair
    upstream._tempDataBuffer.append(b"PROXY TCP4 ...\r\n")
    upstream._tempDataLen += 16
    assert spliceUnavailable("auto", client, upstream) == (
        "relay = auto, but the upstream side has unsent bytes"
    )


def test_startRelayFallsBackToPortableAndSaysWhy() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(appendingTo(events))
    client, upstream = HalfCloseableTransport(), HalfCloseableTransport()
    client.pauseProducing()
    record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0, upstream="u:1")
    clock = Clock()
    try:
        relay = startRelay(
            "splice",
            None,
            clock,
            client,
            upstream,
            record,
            TableOwner(record, State.RELAYING),
            60.0,
            lambda: None,
            [b"hello", b" there"],
            clientBytes=ClientBytes(record),
        )
    finally:
        globalLogPublisher.removeObserver(appendingTo(events))
    assert isinstance(relay, PortableRelay)
    assert upstream.value() == b"hello there"
    assert client.producerState == "producing"
    (event,) = [
        e for e in events if e.get("log_namespace") == "gateway.connection.relays"
    ]
    assert event["log_level"].name == "debug"
    assert event["where"] == "127.0.0.1:1 -> u:1"
    assert (
        event["why"]
        == "relay = splice, but the client side is a HalfCloseableTransport"
    )


def test_startRelayChoosesSpliceForTcpAndSaysSo(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(appendingTo(events))
    client, upstream = tcpPair
    record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0, upstream="u:1")
    try:
        relay = startRelay(
            "auto",
            client.reactor,
            Clock(),
            client,
            upstream,
            record,
            TableOwner(record, State.RELAYING),
            60.0,
            lambda: None,
            [b"hello"],
            clientBytes=ClientBytes(record),
        )
    finally:
        globalLogPublisher.removeObserver(appendingTo(events))
    assert isinstance(relay, SpliceRelay)
    # Started at once: the pending bytes went straight out on the socket
    # (whose other end is the client transport's, in this pair), not
    # through Twisted's buffer.
    assert relay.relaying
    assert relay._toUpstream.head == b""
    assert upstream._tempDataLen == 0
    assert client.getHandle().recv(100) == b"hello"
    (event,) = [
        e for e in events if e.get("log_namespace") == "gateway.connection.relays"
    ]
    assert event["log_level"].name == "debug"
    assert event["setting"] == "auto"
    relay.abort(Event.SHUT_DOWN, "test over")


def test_chooseSpliceForTwoTcpSockets(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    client, upstream = tcpPair
    choice = chooseRelay("auto", client.reactor, client, upstream)
    assert choice.provider is Provider.SPLICE
    assert choice.why == ""


def test_chooseCopyWhenSpliceIsNotAskedForButTheHubCanRead(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    """
    C{relay = portable} keeps bytes in Python, but the hub still reads two
    plain TCP sockets: the copy relay, with its two readers.
    """
    client, upstream = tcpPair
    choice = chooseRelay("portable", client.reactor, client, upstream)
    assert choice.provider is Provider.COPY
    assert choice.why == "relay = portable"
    assert choice.readers is not None
    assert [getattr(r, "transport", None) for r in choice.readers] == [client, upstream]


def test_choosePortableForWhatTheHubCannotRead(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    choice = chooseRelay(
        "auto", tcpPair[0].reactor, HalfCloseableTransport(), tcpPair[1]
    )
    assert choice.provider is Provider.PORTABLE
    assert choice.readers is None
    assert choice.why == (
        "relay = auto, but the client side is a HalfCloseableTransport"
    )


def test_startRelayStartsTheCopyRelayWithItsReaders(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    client, upstream = tcpPair
    record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0, upstream="u:1")
    relay = startRelay(
        "portable",
        client.reactor,
        Clock(),
        client,
        upstream,
        record,
        TableOwner(record, State.RELAYING),
        60.0,
        lambda: None,
        [],
        clientBytes=ClientBytes(record),
    )
    assert isinstance(relay, CopyRelay)
    readers = [r for r in relay._readers if isinstance(r, fasthub.HubReader)]
    assert [reader.reading for reader in readers] == [True, True]
    relay.abort(Event.SHUT_DOWN, "test over")
    assert [reader.reading for reader in readers] == [False, False]


def _tlsOver(wire: tcp.Connection) -> TLSTransport:
    """A server TLS layer over C{wire}, fed nothing: only its type counts."""
    events = cast(ITLSEvents, None)
    return TLSTransport(
        SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD)), wire, events
    )


def test_chooseTerminatedForATLSClientTheHubCanRead(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    """
    The client is a TLS layer over a TCP socket the hub can read: the
    terminated relay, whatever the setting (nothing terminated is spliced).
    """
    client, upstream = tcpPair
    tls = _tlsOver(client)
    for setting in ("auto", "portable"):
        choice = chooseRelay(setting, client.reactor, tls, upstream)
        assert choice.provider is Provider.TERMINATED
        assert choice.readers is not None
        assert [getattr(r, "transport", None) for r in choice.readers] == [
            client,
            upstream,
        ]


def test_startRelaySaysWhichSidesTakeTheHubsWay(
    tcpPair: tuple[tcp.Connection, tcp.Connection],
) -> None:
    """
    The debug line of a terminated relay names it and what it does with
    the upstream's side: here watched, so read by its protocol.
    """
    client, upstream = tcpPair
    tls = _tlsOver(client)
    record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0, upstream="u:1")
    events: list[Any] = []
    globalLogPublisher.addObserver(appendingTo(events))
    try:
        relay = startRelay(
            "auto",
            client.reactor,
            Clock(),
            tls,
            upstream,
            record,
            TableOwner(record, State.RELAYING),
            60.0,
            lambda: None,
            [],
            clientBytes=None,
            upstreamWatched=True,
        )
    finally:
        globalLogPublisher.removeObserver(appendingTo(events))
    assert isinstance(relay, TerminatedRelay)
    client_, upstream_ = relay._readers
    assert client_.sink is not None
    assert upstream_.sink is None
    (event,) = [
        e for e in events if e.get("log_namespace") == "gateway.connection.relays"
    ]
    assert "terminated (client TLS records in the hub" in event["log_format"]
    assert "read by its protocol" in event["side"]
    relay.abort(Event.SHUT_DOWN, "test over")
