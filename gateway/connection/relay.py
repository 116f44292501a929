"""
Moving bytes between a client and its upstream once both are connected.

The relay is the only code that touches every relayed byte, so it is kept
small and self-contained: the pre-read, routing and upstream connect happen
before it starts, and the access log is written from what it counts.
L{IRelay} is the seam where a zero-copy (C{splice}) relay sits beside the
portable one.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.connection.timers import Deadline, cancel, later
from gateway.core.transports import RelayTransport
from gateway.fast.internals import halfClose, send
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import ConnectionOwner, Event

#: SO_LINGER with a zero timeout: close() then sends RST instead of FIN.
_RESET = struct.pack("ii", 1, 0)


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
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


def reset(transport: RelayTransport) -> None:
    """
    Close a TCP transport with RST, so a reset on one side of the relay
    reaches the other side as a reset and not as a clean end of stream
    (which a peer could take for a complete response).
    """
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abortConnection()


class ResetAfterFlush:
    """
    Reset a TCP transport once Twisted has written what it holds for it.

    When one peer of a relay resets, the other is reset too (L{reset}); but
    the portable relay's transports keep a write buffer, and what the lost
    peer sent just before its reset may still be in it.  Aborting at once
    would drop those bytes, which the peer did send.  So the buffer drains
    first: registered as a pull producer and followed by
    C{loseConnection}, this object is asked for more data (its
    C{resumeProducing}) only once the transport's buffer is empty, and it
    answers with the reset.  A reader that never drains the buffer is cut
    after C{timeout} seconds, as an idle connection would be; L{cut} resets
    at once (a shutdown that will not wait).

    A transport without a socket of its own (TLS over TCP) is reset at
    once, as before: its C{loseConnection} would say C{close_notify}, a
    clean end, which a reset must not.
    """

    __slots__ = ("_armed", "_deadline", "_transport")

    def __init__(
        self, transport: RelayTransport, clock: IReactorTime, timeout: float
    ) -> None:
        self._transport: RelayTransport | None = transport
        self._deadline: Deadline | None = None
        self._armed = False
        if getattr(transport, "socket", None) is None:
            self.cut()
            return
        transport.unregisterProducer()
        # A pull producer is asked for data at once on registration; only
        # the calls after loseConnection mean "the buffer is empty".
        transport.registerProducer(self, False)
        self._armed = True
        self._deadline = later(clock, timeout, self.cut)
        transport.loseConnection()

    def resumeProducing(self) -> None:
        if self._armed:
            self.cut()

    def stopProducing(self) -> None:
        # The transport is gone (lost or aborted): nothing left to reset.
        self._transport = None
        self._stopDeadline()

    def cut(self) -> None:
        """
        Reset now, flushed or not.
        """
        transport, self._transport = self._transport, None
        self._stopDeadline()
        if transport is not None:
            reset(transport)

    def _stopDeadline(self) -> None:
        cancel(self._deadline)
        self._deadline = None


@implementer(IRelay)
class PortableRelay:
    """
    A relay through Twisted transports: works on any reactor and transport.

    Backpressure comes from Twisted's producer/consumer API: each transport
    is registered as the streaming producer of the other, so when one side's
    write buffer fills (a slow reader), reading from the other side stops
    until it drains.  Memory per connection is then bounded by two write
    buffers plus one read each way, whatever the peers do.

    Half-close: a FIN from one side becomes C{loseWriteConnection} on the
    other; once both sides have sent FIN, both sockets are closed.

    @ivar _open: how many of the two transports are not yet lost; C{done}
        runs when it reaches zero.
    @ivar _closing: we initiated the close, so a C{connectionLost} that
        follows is expected, not a peer's reset to propagate.
    @ivar _countBytes: count relayed bytes into the record.  Off for a
        terminated connection, whose record counts TLS records on the wire
        (at the TLS layer), not the plaintext relayed here.
    @ivar _lastActivity: reactor time of the last relayed chunk.  Checked by
        a timer that re-arms itself instead of resetting a delayed call per
        chunk, which would cost a heap operation per read on the hot path.
    @ivar _readers: what reads the two TCP sockets for their transports
        (client's, upstream's), when that is not the reactor itself (see
        L{gateway.connection.splicerelay.startRelay}): they are the producers
        registered with the other side, and stop when the relay closes.
    """

    __slots__ = (
        "_client",
        "_clientEOF",
        "_clock",
        "_closing",
        "_countBytes",
        "_done",
        "_flushing",
        "_idleTimeout",
        "_lastActivity",
        "_open",
        "_owner",
        "_readers",
        "_record",
        "_timer",
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
        countBytes: bool = True,
        readers: tuple[Reader, Reader] | None = None,
    ) -> None:
        self._owner = owner
        self._client = client
        self._upstream = upstream
        self._readers = readers
        self._record = record
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._countBytes = countBytes
        self._done: Callable[[], None] | None = done
        self._open = 2
        self._clientEOF = False
        self._upstreamEOF = False
        self._closing = False
        self._flushing: ResetAfterFlush | None = None
        self._lastActivity = clock.seconds()
        self._timer: Deadline | None = later(clock, idleTimeout, self._checkIdle)
        if readers is None:
            client.registerProducer(upstream, True)
            upstream.registerProducer(client, True)
        else:
            client.registerProducer(readers[1], True)
            upstream.registerProducer(readers[0], True)

    # data

    def clientData(self, data: bytes) -> None:
        if self._countBytes:
            self._record.bytesIn += len(data)
        self._lastActivity = self._clock.seconds()
        send(self._upstream, data)

    def upstreamData(self, data: bytes) -> None:
        if self._countBytes:
            self._record.bytesOut += len(data)
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
            self._closing = True
            self._stopTimer()
            self._stopReaders()
            self._client.loseConnection()
            self._upstream.loseConnection()
        else:
            halfClose(writer)

    # end

    def clientLost(self, reason: Failure) -> None:
        self._lost(self._upstream, "client")

    def upstreamLost(self, reason: Failure) -> None:
        self._lost(self._client, "upstream")

    def _lost(self, other: RelayTransport, side: str) -> None:
        self._open -= 1
        self._stopReaders()
        if not self._closing:
            # Not a close we started: the peer reset or the socket failed.
            # Pass it on as a reset rather than pretending the stream ended.
            self._closing = True
            self._stopTimer()
            self._record.extra.setdefault("closed_by", f"{side}_reset")
            halfClosed = self._upstreamEOF if side == "upstream" else self._clientEOF
            if halfClosed:
                # Its FIN is out, so what it was sent has been written.
                reset(other)
            else:
                self._flushing = ResetAfterFlush(other, self._clock, self._idleTimeout)
        if self._open == 0:
            self._stopFlushing()
        if self._open == 0 and self._done is not None:
            done, self._done = self._done, None
            done()

    def abort(self, event: Event, reason: str) -> None:
        if self._closing:
            # Still flushing to the peer that outlived a reset: stop
            # waiting for it.
            flushing, self._flushing = self._flushing, None
            if flushing is not None:
                flushing.cut()
            return
        self._owner.report(event, reason)
        self._closing = True
        self._stopTimer()
        self._stopReaders()
        for transport in (self._client, self._upstream):
            transport.abortConnection()

    def _stopFlushing(self) -> None:
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            flushing.stopProducing()

    def _stopReaders(self) -> None:
        if self._readers is not None:
            for reader in self._readers:
                reader.stop()

    # idle

    def _checkIdle(self) -> None:
        self._timer = None
        idle = self._clock.seconds() - self._lastActivity
        if idle >= self._idleTimeout:
            self.abort(Event.IDLE, f"no bytes for {idle:.1f}s")
        else:
            self._timer = later(self._clock, self._idleTimeout - idle, self._checkIdle)

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None
