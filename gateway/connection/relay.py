"""
Moving bytes between a client and its upstream once both are connected.

The relay is the only code that touches every relayed byte, so it is kept
small and self-contained: the pre-read, routing and upstream connect happen
before it starts, and the access log is written from what it counts.
L{IRelay} is the one relay interface; its providers are the portable relay
(L{PortableRelay}: Twisted transports read and write), the copy relay
(L{CopyRelay}: the splice hub reads the sockets, Twisted writes) and the
splice relay (L{gateway.connection.splicerelay.SpliceRelay}: the kernel
moves the bytes).  They end connections by the same rules
(L{gateway.connection.relayrules}), and one function chooses among them
(L{gateway.connection.relays.chooseRelay}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.connection.relayrules import RelayRules, ResetAfterFlush, reset
from gateway.core.transports import RelayTransport
from gateway.fast.internals import halfClose, send
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.lifecycle import ConnectionOwner, Event


class IRelay(Interface):
    """
    Relays one client connection and one upstream connection both ways.

    A provider is created once both transports are connected and the
    pre-read bytes have been written upstream.  It owns both transports from
    then on: it closes them, and it calls its C{done} callback exactly once,
    after both are closed, so the access log sees final byte counts.
    """

    def clientData(data: bytes) -> None:
        """
        Bytes arrived from the client.
        """

    def upstreamData(data: bytes) -> None:
        """
        Bytes arrived from the upstream.
        """

    def clientReadClosed() -> None:
        """
        The client half-closed (FIN): no more bytes will come from it.
        """

    def upstreamReadClosed() -> None:
        """
        The upstream half-closed (FIN).
        """

    def clientLost(reason: Failure) -> None:
        """
        The client connection is gone.
        """

    def upstreamLost(reason: Failure) -> None:
        """
        The upstream connection is gone.
        """

    def abort(event: Event, reason: str) -> None:
        """
        End both connections now (drain deadline, for example), reporting
        C{event} (C{shut down}, C{idle}) to the connection's owner, whose
        table records its status unless an earlier cause is recorded.
        """


class Reader(Protocol):
    """
    Reads a TCP socket for its transport in place of the reactor, and is
    the streaming producer a relay registers with the other side.

    @ivar sink: takes what is read instead of the transport's protocol,
        when a relay set it (L{gateway.fast.hub.HubReader.sink}).
    """

    sink: Callable[[bytes], None] | None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


@implementer(IRelay)
class PortableRelay(RelayRules[RelayTransport]):
    """
    A relay through Twisted transports: works on any reactor and transport.

    Backpressure comes from Twisted's producer/consumer API: each transport
    is registered as the streaming producer of the other, so when one side's
    write buffer fills (a slow reader), reading from the other side stops
    until it drains.  Memory per connection is then bounded by two write
    buffers plus one read each way, whatever the peers do.

    Half-close: a FIN from one side becomes C{loseWriteConnection} on the
    other; once both sides have sent FIN, both sockets are closed.

    @ivar _closingNow: we initiated the close, so a C{connectionLost} that
        follows is expected, not a peer's reset to propagate.
    @ivar _clientBytes: counts what is relayed to the client
        (L{gateway.rules.clientbytes}); L{None} for a terminated
        connection, whose TLS layer counts the records on the wire, not
        the plaintext relayed here.  What the client sends was counted by
        the connection's owner before it got here.
    """

    __slots__ = (
        "_client",
        "_clientBytes",
        "_clientEOF",
        "_closingNow",
        "_flushing",
        "_upstream",
        "_upstreamEOF",
    )

    def __init__(
        self,
        client: RelayTransport,
        upstream: RelayTransport,
        record: ConnectionRecord,
        clock: IReactorTime,
        idleTimeout: float,
        done: Callable[[], None],
        *,
        owner: ConnectionOwner,
        clientBytes: ClientBytes | None,
    ) -> None:
        super().__init__(record, clock, idleTimeout, done, owner)
        self._client = client
        self._upstream = upstream
        self._clientBytes = clientBytes
        self._clientEOF = False
        self._upstreamEOF = False
        self._closingNow = False
        self._flushing: ResetAfterFlush | None = None
        self._registerProducers()

    def _registerProducers(self) -> None:
        self._client.registerProducer(self._upstream, True)
        self._upstream.registerProducer(self._client, True)

    def start(self) -> None:
        """
        Read the client again: the session paused it while it connected.
        """
        self._client.resumeProducing()

    # data

    def clientData(self, data: bytes) -> None:
        self._lastActivity = self._clock.seconds()
        send(self._upstream, data)

    def upstreamData(self, data: bytes) -> None:
        clientBytes = self._clientBytes
        if clientBytes is not None:
            clientBytes.sent(len(data))
        self._lastActivity = self._clock.seconds()
        send(self._client, data)

    # half-close

    def clientReadClosed(self) -> None:
        if not self._clientEOF:
            self._clientEOF = True
            self._halfClose(self._upstream)

    def upstreamReadClosed(self) -> None:
        if not self._upstreamEOF:
            self._upstreamEOF = True
            self._halfClose(self._client)

    def _halfClose(self, writer: RelayTransport) -> None:
        # The side that hit EOF produces nothing more, so it no longer
        # needs to be paused by `writer`; and a transport with a paused
        # producer registered would resume it instead of ever half-closing.
        # (The other transport lost its producer at the first EOF.)
        writer.unregisterProducer()
        if self._clientEOF and self._upstreamEOF:
            self._stop()
            self._client.loseConnection()
            self._upstream.loseConnection()
        else:
            halfClose(writer)

    # end

    def clientLost(self, reason: Failure) -> None:
        self._lost(self._upstream, "client")

    def upstreamLost(self, reason: Failure) -> None:
        self._lost(self._client, "upstream")

    def _closing(self) -> bool:
        return self._closingNow

    def _stop(self) -> None:
        self._closingNow = True
        self._stopTimer()
        self._stopReaders()

    def _stopReaders(self) -> None:
        pass

    def _passReset(self, other: RelayTransport, side: str) -> None:
        halfClosed = self._upstreamEOF if side == "upstream" else self._clientEOF
        if halfClosed:
            # Its FIN is out, so what it was sent has been written.
            reset(other)
        else:
            self._flushing = ResetAfterFlush(other, self._clock, self._idleTimeout)

    def _abortWhileClosing(self) -> None:
        # Still flushing to the peer that outlived a reset: stop waiting
        # for it.
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            flushing.cut()

    def _abortBoth(self) -> None:
        for transport in (self._client, self._upstream):
            transport.abortConnection()

    def _bothLost(self) -> None:
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            flushing.stopProducing()


@implementer(IRelay)
class CopyRelay(PortableRelay):
    """
    The portable relay with the splice hub reading both TCP sockets
    (L{gateway.fast.hub.hubReaders}) in place of the reactor: bytes
    still pass through Python and Twisted's transports write them (TLS
    done by the gateway, for example), but a read costs one hub dispatch
    rather than the reactor's.

    @ivar _readers: what reads the client's and the upstream's sockets:
        the producers registered with the other side, stopped when the
        relay closes.
    """

    __slots__ = ("_readers",)

    def __init__(
        self,
        client: RelayTransport,
        upstream: RelayTransport,
        record: ConnectionRecord,
        clock: IReactorTime,
        idleTimeout: float,
        done: Callable[[], None],
        *,
        owner: ConnectionOwner,
        readers: tuple[Reader, Reader],
        clientBytes: ClientBytes | None,
    ) -> None:
        self._readers = readers
        super().__init__(
            client,
            upstream,
            record,
            clock,
            idleTimeout,
            done,
            owner=owner,
            clientBytes=clientBytes,
        )

    def _registerProducers(self) -> None:
        self._client.registerProducer(self._readers[1], True)
        self._upstream.registerProducer(self._readers[0], True)

    def start(self) -> None:
        for reader in self._readers:
            reader.start()

    def _stopReaders(self) -> None:
        for reader in self._readers:
            reader.stop()
