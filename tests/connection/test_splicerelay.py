"""
The splice relay, between real loopback TCP connections on a private epoll
reactor.

The splice relay works at the file-descriptor level (the reactor's readiness
events, C{splice} on real sockets and pipes), so an in-memory transport
cannot stand in for a socket here.  Each test gets its own
L{EPollReactor} (never the global one), two real TCP connections whose far
ends the test drives as plain non-blocking sockets, and turns the reactor
with bounded loops: every wait fails after a few seconds instead of hanging.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.connection import spliceflow
from gateway.connection.relay import IRelay
from gateway.connection.spliceflow import PipePool
from gateway.connection.splicerelay import SpliceRelay
from gateway.fast import hub as fasthub
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import Event, State
from tests.helpers import appendingTo, fastPathOnly
from tests.transports import TableOwner

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux splice only"),
    # The splice relay and the hub are fast paths (gateway.fast.internals).
    fastPathOnly,
    pytest.mark.timeout(60),
]

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor

MiB = 1024 * 1024


def openFds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@implementer(IHalfCloseableProtocol)
class Side(Protocol):
    """
    One gateway-side connection: passes its transport's events to the
    relay, as the session's protocols do.
    """

    def __init__(self, harness: Relayed, side: str) -> None:
        self.harness = harness
        self.side = side
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.harness.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data  # the splice relay must leave nothing for Twisted

    def readConnectionLost(self) -> None:
        relay = self.harness.relay
        assert relay is not None
        if self.side == "client":
            relay.clientReadClosed()
        else:
            relay.upstreamReadClosed()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason
        relay = self.harness.relay
        assert relay is not None
        if self.side == "client":
            relay.clientLost(reason)
        else:
            relay.upstreamLost(reason)


class Relayed:
    """
    A splice relay between two loopback TCP connections.

    The test holds C{clientPeer} (what the client would be) and
    C{upstreamPeer} (the server); the gateway side of each connection is a
    Twisted TCP transport, the client's accepted by C{listenTCP} and the
    upstream's made by C{connectTCP}, and the relay starts in the upstream
    protocol's C{connectionMade}, as it does in a session.
    """

    def __init__(
        self,
        idleTimeout: float = 30.0,
        head: bytes = b"",
        built: Callable[[SpliceRelay], object] = lambda relay: None,
    ) -> None:
        self.reactor = EPollReactor()
        self.pipes = PipePool(keep=2)
        self.record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0)
        self.done: list[bool] = []
        self.relay: SpliceRelay | None = None
        self.client: Side | None = None
        self.upstream: Side | None = None
        self._idleTimeout = idleTimeout
        self._head = head
        self._built = built
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._port = self.reactor.listenTCP(
            0, Factory.forProtocol(lambda: Side(self, "client")), interface="127.0.0.1"
        )
        # The reactor's splice hub lives as long as the reactor: made now,
        # so that it is not taken for a descriptor a relay leaked.
        fasthub.hubFor(self.reactor)
        self.baseline = openFds()
        self.clientPeer = socket.create_connection(
            ("127.0.0.1", self._port.getHost().port)
        )
        self.spin(lambda: self.relay is not None, "no relay")
        self.upstreamPeer, _ = self._listener.accept()
        for peer in (self.clientPeer, self.upstreamPeer):
            peer.setblocking(False)
        self.spin(
            lambda: self.relay is not None and self.relay.relaying, "not relaying"
        )

    def connected(self, side: Side) -> None:
        if side.side == "client":
            self.client = side
            assert side.transport is not None
            side.transport.pauseProducing()  # type: ignore[attr-defined]  # as the session does
            factory = ClientFactory.forProtocol(lambda: Side(self, "upstream"))
            host, port = self._listener.getsockname()
            self.reactor.connectTCP(host, port, factory)  # type: ignore[arg-type]
            return
        self.upstream = side
        assert self.client is not None
        self.relay = SpliceRelay(
            self.client.transport,  # type: ignore[arg-type]
            side.transport,  # type: ignore[arg-type]
            self.record,
            self.reactor,
            self._idleTimeout,
            lambda: self.done.append(True),
            owner=TableOwner(self.record, State.RELAYING),
            reactor=self.reactor,
            head=self._head,
            pipes=self.pipes,
        )
        self._built(self.relay)

    def spin(
        self, until: Callable[[], object], what: str, timeout: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"timed out: {what}"
            self.reactor.iterate(0.005)

    def turn(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.reactor.iterate(0.005)

    def exchange(
        self, peer: socket.socket, data: bytes, other: socket.socket, size: int
    ) -> bytes:
        """Send C{data} from C{peer}, return the first C{size} bytes at C{other}."""
        view = memoryview(data)
        got = bytearray()

        def progress() -> bool:
            nonlocal view
            if view:
                with contextlib.suppress(BlockingIOError):
                    view = view[peer.send(view) :]
            with contextlib.suppress(BlockingIOError):
                got.extend(other.recv(MiB))
            return not view and len(got) >= size

        self.spin(progress, f"{size} bytes relayed")
        return bytes(got)

    def readToEnd(self, peer: socket.socket) -> bytes:
        """Everything C{peer} receives until FIN (a reset raises)."""
        got = bytearray()
        ended = False

        def progress() -> bool:
            nonlocal ended
            while True:
                try:
                    data = peer.recv(MiB)
                except BlockingIOError:
                    return False
                if not data:
                    ended = True
                    return True
                got.extend(data)

        self.spin(progress, "FIN")
        assert ended
        return bytes(got)

    def waitForReset(self, peer: socket.socket) -> None:
        def reset() -> bool:
            try:
                while peer.recv(MiB):
                    pass
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True
            return False  # a FIN is not a reset: keep waiting, then fail

        self.spin(reset, "a reset")

    def finish(self) -> None:
        """Wait for C{done}; then no descriptor of the relay may be left."""
        self.spin(lambda: self.done, "done")
        self.turn(0.05)
        assert self.done == [True]
        for peer in (self.clientPeer, self.upstreamPeer):
            peer.close()
        self.pipes.close()
        leaked = openFds() - self.baseline
        assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}

    def close(self) -> None:
        for peer in (self.clientPeer, self.upstreamPeer):
            peer.close()
        if self.relay is not None:
            self.relay.abort(Event.SHUT_DOWN, "test over")
        self.turn(0.02)
        self._port.stopListening()
        self._listener.close()
        self.pipes.close()
        fasthub.hubFor(self.reactor).close()
        self.reactor.removeAll()
        self.reactor._poller.close()


@pytest.fixture
def relayed() -> Iterator[Callable[..., Relayed]]:
    made: list[Relayed] = []

    def make(**options: Any) -> Relayed:
        made.append(Relayed(**options))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def linger0(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- the relay -------------------------------------------------------------------


def test_providesIRelay(relayed: Callable[..., Relayed]) -> None:
    harness = relayed()
    assert harness.relay is not None
    verifyObject(IRelay, harness.relay)


def test_headGoesFirstThenBytesMoveBothWaysByteExact(
    relayed: Callable[..., Relayed],
) -> None:
    harness = relayed(head=b"CLIENTHELLO")
    up, down = pattern(8 * MiB, 1), pattern(6 * MiB + 7, 2)
    peers = {"client": harness.clientPeer, "upstream": harness.upstreamPeer}
    unsent = {"client": memoryview(up), "upstream": memoryview(down)}
    received = {"client": bytearray(), "upstream": bytearray()}

    def progress() -> bool:
        for side, peer in peers.items():
            if unsent[side]:
                with contextlib.suppress(BlockingIOError):
                    unsent[side] = unsent[side][peer.send(unsent[side][:MiB]) :]
            with contextlib.suppress(BlockingIOError):
                received[side].extend(peer.recv(MiB))
        return len(received["upstream"]) == len(up) + 11 and len(
            received["client"]
        ) == len(down)

    harness.spin(progress, "both ways", timeout=30)
    assert bytes(received["upstream"]) == b"CLIENTHELLO" + up
    assert bytes(received["client"]) == down
    # The head was counted when it was read (by the pre-read), not here.
    assert (harness.record.bytesIn, harness.record.bytesOut) == (len(up), len(down))
    assert harness.client is not None
    assert harness.upstream is not None
    assert harness.client.received == harness.upstream.received == b""
    assert harness.done == []


def test_pipesAreHeldOnlyWhileBytesAreInFlight(relayed: Callable[..., Relayed]) -> None:
    """
    An idle connection holds no pipe: its descriptors are its two sockets.
    """
    harness = relayed()
    before = openFds()
    data = pattern(3 * MiB, 3)
    assert (
        harness.exchange(harness.clientPeer, data, harness.upstreamPeer, len(data))
        == data
    )
    harness.turn(0.05)
    relay = harness.relay
    assert relay is not None
    assert relay._toUpstream.buffered == relay._toClient.buffered == 0
    assert relay._toUpstream._pipe is relay._toClient._pipe is None
    assert len(openFds() - before) <= 2 * harness.pipes.keep


def test_slowReaderStopsReadsFromTheSource(relayed: Callable[..., Relayed]) -> None:
    """
    The client reads nothing while the upstream sends as fast as it can: the
    relay stops reading the upstream, the upstream's sends stall (what is in
    flight is bounded by kernel buffers and one pipe), and nothing is lost.
    """
    harness = relayed()
    relay = harness.relay
    assert relay is not None
    data = pattern(64 * MiB, 4)
    view = memoryview(data)
    sentAt: list[int] = []

    def push() -> None:
        nonlocal view
        with contextlib.suppress(BlockingIOError):
            while view:
                view = view[harness.upstreamPeer.send(view[:MiB]) :]
        sentAt.append(len(data) - len(view))

    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        push()
        harness.reactor.iterate(0.005)
    stalledAt = sentAt[-1]
    assert view, "the upstream was never stopped"
    assert sentAt[-50] == stalledAt, "still flowing at the end of the stall"
    assert stalledAt < 32 * MiB
    assert not relay._upstream.reading
    assert relay._client.writing
    assert relay._toClient.buffered > 0
    received = bytearray()

    def drain() -> bool:
        push()
        with contextlib.suppress(BlockingIOError):
            received.extend(harness.clientPeer.recv(MiB))
        return len(received) == len(data)

    harness.spin(drain, "everything after the stall", timeout=30)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert harness.record.bytesOut == len(data)


@pytest.mark.parametrize("first", ["client", "upstream"])
def test_halfCloseEachWayThenCloseBoth(
    relayed: Callable[..., Relayed], first: str
) -> None:
    """
    A FIN from one side reaches the other, which can still send; after both
    FINs both connections close cleanly and C{done} runs once.
    """
    harness = relayed()
    peers = {"client": harness.clientPeer, "upstream": harness.upstreamPeer}
    closer, other = peers[first], peers["upstream" if first == "client" else "client"]
    closer.send(b"last words")
    closer.shutdown(socket.SHUT_WR)
    assert harness.readToEnd(other) == b"last words"
    assert harness.done == []
    answer = pattern(2 * MiB, 5)
    assert harness.exchange(other, answer, closer, len(answer)) == answer
    other.shutdown(socket.SHUT_WR)
    assert harness.readToEnd(closer) == b""
    harness.finish()
    assert harness.record.status is None
    assert "closed_by" not in harness.record.extra
    assert harness.client is not None
    assert harness.upstream is not None
    for side in (harness.client, harness.upstream):
        assert side.lost is not None
        assert side.lost.check(ConnectionDone)


@pytest.mark.parametrize("side", ["client", "upstream"])
def test_resetIsPassedOnAsReset(relayed: Callable[..., Relayed], side: str) -> None:
    harness = relayed()
    resetter, other = (
        (harness.clientPeer, harness.upstreamPeer)
        if side == "client"
        else (harness.upstreamPeer, harness.clientPeer)
    )
    assert harness.exchange(resetter, b"ping", other, 4) == b"ping"
    linger0(resetter)
    resetter.close()
    harness.waitForReset(other)
    harness.spin(lambda: harness.done, "done")
    assert harness.record.extra["closed_by"] == f"{side}_reset"
    assert harness.done == [True]
    harness.finish()


def test_aRelayBugResetsBothSidesAndIsLogged(
    relayed: Callable[..., Relayed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    An exception from the relay's code, raised into the hub's dispatch,
    is handled as the reactor handles one from a descriptor: logged, the
    socket dropped; the relay then resets both sides rather than leave a
    connection that nothing reads.
    """

    def broken(flow: spliceflow.Flow) -> None:
        raise RuntimeError("a bug")

    # Before the relay is made: its sockets call their flows' methods as
    # bound then.
    monkeypatch.setattr(spliceflow.Flow, "sourceReadable", broken)
    harness = relayed()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(appendingTo(events))
    try:
        harness.clientPeer.send(b"boom")
        harness.waitForReset(harness.upstreamPeer)
        harness.spin(lambda: harness.done, "done")
    finally:
        globalLogPublisher.removeObserver(appendingTo(events))
    assert harness.record.extra["closed_by"] == "client_reset"
    failures = [e["log_failure"] for e in events if "log_failure" in e]
    assert [str(f.value) for f in failures] == ["a bug"]
    harness.finish()


def test_resetWhileTheSinkIsBehindIsPassedOn(relayed: Callable[..., Relayed]) -> None:
    """
    The client resets while the relay holds bytes for it in a pipe: the pipe
    is closed with them, and the upstream gets the reset.
    """
    harness = relayed()
    relay = harness.relay
    assert relay is not None
    data = pattern(32 * MiB, 6)
    view = memoryview(data)

    def stalled() -> bool:
        nonlocal view
        with contextlib.suppress(BlockingIOError):
            view = view[harness.upstreamPeer.send(view[:MiB]) :]
        return relay._toClient.buffered > 0 and not relay._upstream.reading

    harness.spin(stalled, "a stalled flow")
    linger0(harness.clientPeer)
    harness.clientPeer.close()
    harness.waitForReset(harness.upstreamPeer)
    harness.spin(lambda: harness.done, "done")
    assert harness.record.extra["closed_by"] == "client_reset"
    harness.finish()


def test_idleConnectionIsAbortedAtTimeout(relayed: Callable[..., Relayed]) -> None:
    harness = relayed(idleTimeout=0.4)
    for _ in range(4):  # traffic keeps it open past the timeout...
        harness.turn(0.2)
        assert harness.exchange(harness.clientPeer, b"tick", harness.upstreamPeer, 4)
    assert harness.done == []
    started = time.monotonic()  # ...silence does not
    harness.waitForReset(harness.clientPeer)
    assert 0.3 <= time.monotonic() - started <= 2.0
    harness.spin(lambda: harness.done, "done")
    assert harness.record.status == "idle_timeout"
    harness.finish()


def test_abortRecordsTheFirstCauseAndResetsBoth(
    relayed: Callable[..., Relayed],
) -> None:
    harness = relayed()
    relay = harness.relay
    assert relay is not None
    relay.abort(Event.SHUT_DOWN, "gateway stopped")
    relay.abort(Event.IDLE, "late")
    harness.waitForReset(harness.clientPeer)
    harness.waitForReset(harness.upstreamPeer)
    harness.finish()
    assert harness.record.status == "shutdown"


def test_clientFinBeforeTheRelayStartsIsPassedOnAfterTheHead(
    relayed: Callable[..., Relayed],
) -> None:
    """
    A FIN the session saw before the relay (C{clientReadClosed} right after
    it is built) goes upstream after the pending bytes.
    """
    harness = relayed(
        head=b"hello and bye", built=lambda relay: relay.clientReadClosed()
    )
    assert harness.readToEnd(harness.upstreamPeer) == b"hello and bye"
    harness.upstreamPeer.send(b"bye")
    harness.upstreamPeer.shutdown(socket.SHUT_WR)
    assert harness.readToEnd(harness.clientPeer) == b"bye"
    harness.finish()


# -- choosing a relay ------------------------------------------------------------


@pytest.mark.parametrize("bulk", [False, True], ids=["copying", "splicing"])
def test_urgentDataNeitherStallsNorSpins(
    relayed: Callable[..., Relayed], monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    """
    C{splice} stops at TCP urgent data and, non-blocking, says "try again"
    while epoll keeps saying "readable": the relay reads past it with
    C{recv}, which drops the urgent byte as the portable relay's reads do,
    instead of spinning.  A flow that copies (small reads) drops it the
    same way.
    """
    harness = relayed()
    assert harness.relay is not None
    harness.relay._toUpstream._bulk = bulk
    reads: list[None] = []
    original = spliceflow.Flow.sourceReadable

    def counted(flow: spliceflow.Flow) -> None:
        reads.append(None)
        original(flow)

    monkeypatch.setattr(spliceflow.Flow, "sourceReadable", counted)
    harness.clientPeer.send(b"abc")
    harness.clientPeer.send(b"!", socket.MSG_OOB)
    harness.clientPeer.send(b"def")
    got = b""

    def arrived() -> bool:
        nonlocal got
        with contextlib.suppress(BlockingIOError):
            got += harness.upstreamPeer.recv(MiB)
        return got == b"abcdef"

    harness.spin(arrived, "the bytes around the urgent one", timeout=3)
    del reads[:]
    harness.turn(0.3)
    assert len(reads) < 5, "spinning on urgent data"
    assert (
        harness.exchange(harness.clientPeer, b"more", harness.upstreamPeer, 4)
        == b"more"
    )
    assert harness.record.bytesIn == 10


def test_smallReadsAreCopiedBulkIsSplicedAndTheBytesStayExact(
    relayed: Callable[..., Relayed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A flow copies small reads through the shared buffer, splices once a
    read fills it, and copies again after a splice moved less: through
    every switch, each byte arrives once and in order, and is counted.
    """
    harness = relayed()
    splices: list[int] = []
    original = spliceflow.splice
    assert original is not None

    def counted(source: int, sink: int, count: int, flags: int = 0) -> int:
        moved: int = original(source, sink, count, flags=flags)
        splices.append(moved)
        return moved

    monkeypatch.setattr(spliceflow, "splice", counted)
    sent = bytearray()
    got = bytearray()

    def send(data: bytes) -> None:
        sent.extend(data)
        got.extend(
            harness.exchange(harness.clientPeer, data, harness.upstreamPeer, len(data))
        )

    send(b"GET /small HTTP/1.1\r\n\r\n")
    assert splices == [], "a small read is copied"
    send(pattern(4 * MiB, 7))
    assert sum(splices) > 0, "bulk is spliced"
    before = len(splices)
    send(b"a" * 100)  # the splice that reads this moves less: copy again
    send(b"b" * 100)
    assert len(splices) <= before + 2
    for _ in range(3):
        done = len(splices)
        send(b"c" * 200)
        assert len(splices) == done, "small reads are copied again"
    assert bytes(got) == bytes(sent)
    assert harness.record.bytesIn == len(sent)
    answer = pattern(300, 8)
    assert (
        harness.exchange(harness.upstreamPeer, answer, harness.clientPeer, 300)
        == answer
    )
    assert harness.record.bytesOut == 300
