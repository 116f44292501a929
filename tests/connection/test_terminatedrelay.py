"""
The relay of a terminated connection (L{gateway.connection.terminatedrelay}),
on real loopback sockets: a pyOpenSSL client, the gateway's own
termination stage, session and TLS layer on an epoll reactor driven by
the test, and a plain upstream socket the test reads and writes.

The same tests run in the suite's portable pass, where the relay chosen
is the portable one: the rules are the same whichever relay keeps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.relay import PortableRelay
from gateway.connection.session import Session, Timeouts, UpstreamRuntime
from gateway.connection.terminate import TerminationStage
from gateway.connection.terminatedrelay import TerminatedRelay
from gateway.core.vocabulary import Status
from gateway.fast import hub as fasthub
from gateway.fast.portable import PORTABLE
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import State
from gateway.tls.transport import TLSTransport
from tests.helpers import FixedServers
from tests.transports import TableOwner

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux epoll reactor"),
    pytest.mark.timeout(60),
]

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor

#: Bound on the reactor turns of one wait: every loop of these tests ends.
_TURNS = 3000


@implementer(IHalfCloseableProtocol)
class _Owner(Protocol):
    """
    The client socket's protocol, standing in for the connection's owner
    (L{gateway.connection.preread.PrereadProtocol}) once it has handed the
    connection to its stage: it counts what it receives, then passes
    every event on.
    """

    def __init__(self, table: TableOwner) -> None:
        self.table = table
        self.stage: TerminationStage | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.stage is not None
        self.table.clientBytes.received(len(data))
        self.stage.dataReceived(data)

    def readConnectionLost(self) -> None:
        assert self.stage is not None
        self.stage.readConnectionLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        assert self.stage is not None
        self.stage.connectionLost(reason)


class _Client:
    """
    A TLS client on memory BIOs over a non-blocking socket, counting the
    bytes that cross its socket both ways.
    """

    def __init__(self, sock: socket.socket, ca: trustme.CA) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ca.configure_trust(context)
        context.set_verify(SSL.VERIFY_PEER)
        self.tls = SSL.Connection(context, None)
        self.tls.set_tlsext_host_name(b"term.test")
        self.tls.set_connect_state()
        self.sock = sock
        self.outbox = b""
        self.wireSent = 0
        self.wireReceived = 0
        self.plaintext = bytearray()
        self.closeNotify = False
        self.eof = False
        self.reading = True
        self.handshakeDone = False
        self.error: str | None = None

    def step(self) -> None:
        while True:
            try:
                data = self.tls.bio_read(1 << 17)
            except SSL.WantReadError:
                break
            self.outbox += data
        if self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                sent = 0
            self.wireSent += sent
            self.outbox = self.outbox[sent:]
        while self.reading and not self.eof:
            try:
                data = self.sock.recv(1 << 17)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.wireReceived += len(data)
            self.tls.bio_write(data)
        if not self.handshakeDone:
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                return
            self.handshakeDone = True
        while self.error is None and not self.closeNotify:
            try:
                self.plaintext += self.tls.recv(1 << 17)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closeNotify = True
            except SSL.Error as e:
                self.error = str(e)

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)


class _Rig:
    """
    One terminated connection through the gateway's stage, session and
    relay, and the test's two peers.
    """

    def __init__(
        self,
        idleTimeout: float,
        watcher: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reactor = EPollReactor()
        ca = trustme.CA()
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        ca.issue_cert("term.test").configure_cert(context)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.setblocking(False)
        with socket.create_server(("127.0.0.1", 0)) as listening:
            far = socket.create_connection(listening.getsockname())
            near, _ = listening.accept()
        far.setblocking(False)
        near.setblocking(False)
        self.client = _Client(far, ca)
        self.record = ConnectionRecord("term", "127.0.0.1:1", 0.0, 0.0)
        self.table = TableOwner(self.record, State.DECIDED)
        owner = _Owner(self.table)
        self.transport = tcp.Connection(near, owner, self.reactor)
        self.transport.connected = True
        owner.makeConnection(self.transport)
        self.table.clientBytes.socket = self.transport
        host, port = self.server.getsockname()
        runtime = UpstreamRuntime("app", FixedServers(ServerConfig(host, port)), 1)
        self.sessions: list[Session] = []

        def makeSession(tls: TLSTransport) -> Session:
            session = Session(
                self.reactor,
                self.reactor,
                tls,
                self.record,
                self.table,
                runtime,
                "127.0.0.1",
                Timeouts(5.0, idleTimeout),
                clientBytes=None,
                relay="auto",
            )
            session.upstreamWatcher = watcher
            self.sessions.append(session)
            return session

        owner.stage = TerminationStage(
            self.reactor,
            self.transport,
            self.record,
            self.table,
            context,
            makeSession,
            10.0,
            lambda connection: {},
        )
        owner.stage.start(b"")
        self.transport.startReading()
        self.upstream: socket.socket | None = None
        self.upstreamReceived = bytearray()
        self.upstreamEOF = False
        self.upstreamReset = False
        self.reading = True

    def turn(self) -> None:
        self.reactor.iterate(0.005)
        self.client.step()
        if self.upstream is None:
            try:
                self.upstream, _ = self.server.accept()
            except BlockingIOError:
                return
            self.upstream.setblocking(False)
        while self.reading and not self.upstreamEOF:
            try:
                data = self.upstream.recv(1 << 17)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.upstreamEOF = self.upstreamReset = True
                break
            if not data:
                self.upstreamEOF = True
                break
            self.upstreamReceived += data

    def until(self, done: Callable[[], bool], turns: int = _TURNS) -> None:
        for _ in range(turns):
            if done():
                return
            self.turn()
        raise AssertionError("not reached within the bound")

    def stalled(self, progress: Callable[[], int], turns: int = 40) -> None:
        """
        Turn until C{progress} has not moved for C{turns} turns in a row.
        """
        last, still = progress(), 0
        for _ in range(_TURNS):
            self.turn()
            now = progress()
            still = still + 1 if now == last else 0
            last = now
            if still >= turns:
                return
        raise AssertionError("never stalled")

    def relaying(self) -> None:
        self.until(
            lambda: (
                self.upstream is not None
                and bool(self.sessions)
                and self.sessions[0].relay is not None
            )
        )

    @property
    def relay(self) -> Any:
        return self.sessions[0].relay

    def close(self) -> None:
        hub = fasthub.HUBS.get(self.reactor)
        if hub is not None:
            hub.close()
        for sock in (self.client.sock, self.upstream, self.server):
            if sock is not None:
                sock.close()
        if not self.transport.disconnected:
            self.transport.socket.close()
        self.reactor._poller.close()


@pytest.fixture
def rig() -> Iterator[_Rig]:
    made = _Rig(idleTimeout=60.0)
    yield made
    made.close()


def _digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _ended(rig: _Rig) -> bool:
    return rig.table.ends == 1


def test_theTerminatedRelayIsChosenWhereTheHubReads(rig: _Rig) -> None:
    """
    A terminated client and a plain upstream, both TCP sockets the hub can
    read: the terminated relay, with the client's reader giving it the
    bytes; the portable relay with the fast paths off.
    """
    rig.relaying()
    if PORTABLE:
        assert type(rig.relay) is PortableRelay
    else:
        assert type(rig.relay) is TerminatedRelay
        client, upstream = rig.relay._readers
        assert client.sink is not None
        assert upstream.sink is not None


def test_exactBytesBothWaysAndTheClientSocketsCounts(rig: _Rig) -> None:
    """
    Requests and answers of every size, keep-alive, arrive exactly; the
    record's byte counts are what crossed the client's socket (TLS records,
    the handshake included), both ways.
    """
    rig.relaying()
    assert rig.upstream is not None
    sentUp, sentDown = bytearray(), bytearray()
    for size in (1, 6, 1000, 16384, 16385, 70000, 300000):
        request = os.urandom(size)
        sentUp += request
        rig.client.send(request)
        rig.until(lambda: len(rig.upstreamReceived) == len(sentUp))
        answer = os.urandom(size + 3)
        sentDown += answer
        rig.upstream.sendall(answer)
        rig.until(lambda: len(rig.client.plaintext) == len(sentDown))
    assert _digest(rig.upstreamReceived) == _digest(sentUp)
    assert _digest(rig.client.plaintext) == _digest(sentDown)
    rig.client.tls.shutdown()
    rig.until(lambda: rig.upstreamEOF)
    rig.upstream.shutdown(socket.SHUT_WR)
    rig.until(lambda: _ended(rig) and rig.client.eof)
    assert rig.client.closeNotify
    assert rig.record.bytesIn == rig.client.wireSent
    assert rig.record.bytesOut == rig.client.wireReceived
    assert rig.record.status in (None, Status.OK)


def test_aClientCloseNotifyHalfClosesTheUpstreamAndTheAnswerStillFlows(
    rig: _Rig,
) -> None:
    rig.relaying()
    assert rig.upstream is not None
    rig.client.send(b"last request")
    rig.client.tls.shutdown()
    rig.until(lambda: rig.upstreamEOF)
    assert bytes(rig.upstreamReceived) == b"last request"
    rig.upstream.sendall(b"the answer, after the client's FIN")
    rig.until(lambda: len(rig.client.plaintext) == 34)
    assert bytes(rig.client.plaintext) == b"the answer, after the client's FIN"
    assert not _ended(rig)
    rig.upstream.close()
    rig.upstream = None
    rig.until(lambda: _ended(rig) and rig.client.eof)
    assert rig.client.closeNotify


def test_aClientFinWithoutCloseNotifyIsTheEndOfItsStream(rig: _Rig) -> None:
    rig.relaying()
    assert rig.upstream is not None
    rig.client.send(b"request")
    rig.until(lambda: len(rig.upstreamReceived) == 7)
    rig.client.sock.shutdown(socket.SHUT_WR)
    rig.until(lambda: rig.upstreamEOF)
    rig.upstream.sendall(b"answer")
    rig.until(lambda: bytes(rig.client.plaintext) == b"answer")
    rig.upstream.shutdown(socket.SHUT_WR)
    rig.until(lambda: _ended(rig) and rig.client.eof)


def test_anUpstreamFinSendsCloseNotifyAndTheClientStillSends(rig: _Rig) -> None:
    rig.relaying()
    assert rig.upstream is not None
    rig.upstream.sendall(b"goodbye")
    rig.upstream.shutdown(socket.SHUT_WR)
    rig.until(lambda: rig.client.closeNotify)
    assert bytes(rig.client.plaintext) == b"goodbye"
    assert not rig.client.eof or rig.client.wireReceived > 0
    rig.client.send(b"still talking")
    rig.until(lambda: bytes(rig.upstreamReceived) == b"still talking")
    rig.client.tls.shutdown()
    rig.until(lambda: _ended(rig) and rig.upstreamEOF)


def test_anUpstreamThatStopsReadingStopsTheClientsReads(rig: _Rig) -> None:
    """
    Backpressure: an upstream that takes nothing fills its socket and
    then Twisted's buffer, which pauses the reads of the client's socket,
    so the client cannot send more than the buffers on the way hold; once
    the upstream reads again every byte arrives, exactly.
    """
    rig.relaying()
    rig.reading = False
    payload = os.urandom(32 << 20)
    sent = 0
    chunk = 1 << 20
    while sent < len(payload) and len(rig.client.outbox) < (4 << 20):
        rig.client.send(payload[sent : sent + chunk])
        sent += chunk
        rig.turn()
    rig.stalled(lambda: rig.client.wireSent)
    if not PORTABLE:
        assert not rig.relay._readers[0].reading
    assert rig.client.wireSent < len(payload) // 2
    rig.reading = True
    while sent < len(payload):
        rig.client.send(payload[sent : sent + chunk])
        sent += chunk
        rig.until(lambda: not rig.client.outbox)
    rig.until(lambda: len(rig.upstreamReceived) == len(payload))
    assert _digest(rig.upstreamReceived) == _digest(payload)


def test_aClientThatStopsReadingStopsTheUpstreamsReads(rig: _Rig) -> None:
    """
    The same the other way: a client that reads nothing pauses the reads
    of the upstream's socket.
    """
    rig.relaying()
    assert rig.upstream is not None
    upstream = rig.upstream
    payload = os.urandom(24 << 20)
    sent = 0

    def push() -> int:
        nonlocal sent
        with contextlib.suppress(BlockingIOError):
            sent += upstream.send(payload[sent : sent + (1 << 20)])
        return sent

    rig.client.reading = False
    rig.stalled(push)
    rig.client.reading = True
    if not PORTABLE:
        assert not rig.relay._readers[1].reading
    assert sent < len(payload) // 2
    for _ in range(_TURNS):
        if len(rig.client.plaintext) == len(payload):
            break
        push()
        rig.turn()
    assert _digest(rig.client.plaintext) == _digest(payload)


def test_aCorruptRecordSendsTheAlertAndCloses(rig: _Rig) -> None:
    """
    A record that fails to decrypt: OpenSSL's alert goes to the client,
    the connection closes, and the record says why.
    """
    rig.relaying()
    rig.client.send(b"fine")
    rig.until(lambda: bytes(rig.upstreamReceived) == b"fine")
    record = b"\x17\x03\x03\x00\x20" + os.urandom(32)
    rig.client.sock.sendall(record)
    rig.client.wireSent += len(record)
    rig.until(lambda: rig.client.eof and _ended(rig))
    assert rig.client.error is not None
    assert "alert" in rig.client.error
    assert rig.record.status is Status.TLS_ERROR
    assert rig.record.extra["closed_by"] == "client_tls_error"
    rig.until(lambda: rig.upstreamEOF)
    assert rig.upstreamReset  # a broken stream is not a clean end upstream either
    assert rig.record.bytesIn == rig.client.wireSent
    assert rig.record.bytesOut == rig.client.wireReceived


def test_anIdleConnectionIsClosedAtTheIdleTimeout() -> None:
    made = _Rig(idleTimeout=0.4)
    try:
        made.relaying()
        made.client.send(b"one request")
        made.until(lambda: bytes(made.upstreamReceived) == b"one request")
        assert not _ended(made)
        made.until(lambda: _ended(made) and made.client.eof)
        assert made.record.status is Status.IDLE_TIMEOUT
    finally:
        made.close()


def test_aWatchedUpstreamIsReadThroughItsProtocol() -> None:
    """
    A session whose upstream's bytes are watched (a PostgreSQL session's
    cancel keys): that side keeps its protocol's way, where the watcher
    sits, and sees every byte; the client's side takes the short way.
    """
    seen = bytearray()
    made = _Rig(idleTimeout=60.0, watcher=seen.extend)
    try:
        made.relaying()
        assert made.upstream is not None
        if not PORTABLE:
            client, upstream = made.relay._readers
            assert client.sink is not None
            assert upstream.sink is None
        made.client.send(b"request")
        made.until(lambda: bytes(made.upstreamReceived) == b"request")
        made.upstream.sendall(b"watched answer")
        made.until(lambda: bytes(made.client.plaintext) == b"watched answer")
        assert bytes(seen) == b"watched answer"
    finally:
        made.close()
