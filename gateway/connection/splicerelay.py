"""
The zero-copy relay: Linux C{splice(2)} moves passthrough bytes from one
socket to the other through a pipe, without copying them into Python.

In passthrough the gateway never looks at a relayed byte, so reading each
one into a Python object and writing it out again (what L{gateway.connection.relay.PortableRelay}
does through Twisted transports) is pure cost.  Here each direction splices
what the source socket has into a pipe and from the pipe into the sink
socket: the kernel moves page references, and Python only counts.

Taking the sockets over: once the session has both connections, the relay
stops Twisted's reading and writing on both transports and registers its
own descriptor objects for the same file descriptors with the reactor's
splice hub (L{gateway.fast.hub.Hub}: one epoll set, itself one reader of the reactor, that
calls the relays without Twisted's per-event dispatch).
Twisted keeps owning the sockets: when the relay is done it unregisters and
gives them back (C{loseConnection}, C{abortConnection}), so the transports'
C{connectionLost} reaches the protocols and the session finishes (and the
access log is written) exactly as with the portable relay.

The moving parts (pipes, sockets, each direction's state machine) are in
L{gateway.connection.spliceflow}; the rules every relay keeps (idle,
resets, the end) in L{gateway.connection.relayrules}; which relay serves
a connection, in L{gateway.connection.relays.chooseRelay}.
"""

from __future__ import annotations

import enum
import errno
import socket
from collections.abc import Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.relay import IRelay
from gateway.connection.relayrules import RelayRules
from gateway.connection.spliceflow import (
    PIPES,
    Close,
    Flow,
    FlowState,
    PipePool,
    SpliceEnd,
)
from gateway.fast.hub import hubFor
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import ConnectionOwner, Event

#: Socket errors that are the peer's doing (a reset, a dead path), not ours:
#: they end the connection without a warning in the log.
_PEER_ERRORS = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)


_log = Logger()


class _State(enum.Enum):
    #: being built: its descriptors are not registered yet, and bytes the
    #: session holds are taken as the head (L{Flow.hold}).
    STARTING = "starting"
    #: the relay's descriptors move the bytes.
    RELAYING = "relaying"
    #: the relay unregistered and gave both sockets back to Twisted to
    #: close; it waits for both transports' C{connectionLost}.
    CLOSING = "closing"


@implementer(IRelay)
class SpliceRelay(RelayRules[SpliceEnd]):
    """
    A relay that splices between two TCP sockets (Linux), with the portable
    relay's guarantees: backpressure per direction (see L{Flow}),
    half-close both ways, resets passed on as resets, C{idle_timeout}, byte
    counts, and C{done} once both transports are closed.

    C{clientData}/C{upstreamData} are not called once the relay owns the
    sockets, since bytes no longer reach Python: the flows count the bytes
    they move from and to the client's socket with the owner's
    L{gateway.rules.clientbytes.ClientBytes}.

    It ends connections by the rules of every relay
    (L{gateway.connection.relayrules.RelayRules}); C{_lastActivity} is
    stamped when bytes move, either way, in or out.
    """

    __slots__ = (
        "_client",
        "_state",
        "_toClient",
        "_toUpstream",
        "_upstream",
    )

    def __init__(
        self,
        client: tcp.Connection,
        upstream: tcp.Connection | socket.socket,
        record: ConnectionRecord,
        clock: IReactorTime,
        idleTimeout: float,
        done: Callable[[], None],
        *,
        owner: ConnectionOwner,
        reactor: IReactorFDSet,
        head: bytes = b"",
        pipes: PipePool = PIPES,
    ) -> None:
        """
        @param upstream: the upstream's Twisted transport, or its socket,
            which the relay then owns and closes (L{gateway.connection.directconnect}).
        @param head: bytes for the upstream ahead of everything spliced:
            the session's pending bytes (the ClientHello), given here rather
            than written to the upstream transport, whose buffer nobody
            would send once the relay owns the socket.
        """
        super().__init__(record, clock, idleTimeout, done, owner)
        self._state = _State.STARTING
        hub = hubFor(reactor)
        self._client = SpliceEnd(self, "client", client, hub)
        self._upstream = SpliceEnd(self, "upstream", upstream, hub)
        # The flows read and write the client's socket themselves: they
        # count its bytes with the owner's count.
        counted = owner.clientBytes
        now = self._lastActivity
        self._toUpstream = Flow(
            self, self._client, self._upstream, pipes, counted, clock, now, head
        )
        self._toClient = Flow(
            self, self._upstream, self._client, pipes, counted, clock, now
        )
        self._client.connect(self._toUpstream, self._toClient)
        self._upstream.connect(self._toClient, self._toUpstream)
        # The session paused the client; nothing is buffered on either
        # transport (spliceUnavailable checked), so this hands both over.
        for end in (self._client, self._upstream):
            if end.transport is not None:
                end.transport.stopReading()
                end.transport.stopWriting()
        # The session runs in the upstream transport's connectionMade, from
        # the reactor's dispatch of its connect; the reactor may call the
        # transport's doWrite next for the same event.  That cannot touch
        # the relay's registrations, which are the hub's, not the
        # reactor's, so the relay starts now rather than a turn later.
        self._start()

    @property
    def relaying(self) -> bool:
        return self._state is _State.RELAYING

    def _start(self) -> None:
        self._state = _State.RELAYING
        for flow in (self._toUpstream, self._toClient):
            if self._state is _State.RELAYING:
                flow.sinkWritable()

    # IRelay: bytes (see Flow.hold) and FINs seen before the relay started

    def clientData(self, data: bytes) -> None:
        # Counted by the owner, which received it.
        self._toUpstream.hold(data)

    def upstreamData(self, data: bytes) -> None:
        self._owner.clientBytes.sent(len(data))
        self._toClient.hold(data)

    def clientReadClosed(self) -> None:
        self._toUpstream.end()

    def upstreamReadClosed(self) -> None:
        self._toClient.end()

    # flow events

    def _activeAt(self) -> float:
        # The flows stamp their own activity (Flow.activeAt).
        return max(self._toUpstream.activeAt, self._toClient.activeAt)

    def flowShut(self) -> None:
        """
        A flow passed its FIN on; after both, close both sockets, cleanly.
        """
        if self._toUpstream.state is self._toClient.state is FlowState.SHUT:
            self._stop()
            # Nothing is left to flush and both FINs went out, so close now,
            # as the reactor does (IFileDescriptor.connectionLost).  Not
            # loseConnection(): it would wait for writability, and epoll
            # reports a socket shut both ways as a hang-up, which Twisted
            # takes for a connection lost "in a non-clean fashion".
            for end in (self._client, self._upstream):
                end.close(Close.CLEAN)

    def broken(self, end: SpliceEnd, error: OSError | str) -> None:
        """
        A socket failed (its peer reset it, typically): reset the other one,
        as the portable relay does, rather than pretend the stream ended.
        """
        if self._state is _State.CLOSING:
            return
        if isinstance(error, OSError) and error.errno not in _PEER_ERRORS:
            self._warn(f"{end.side} socket: {error}")
        self._stop()
        self._record.extra.setdefault("closed_by", f"{end.side}_reset")
        other = self._upstream if end is self._client else self._client
        other.close(Close.RESET)
        end.close(Close.ABORT)

    def failed(self, why: str, event: Event | None = None) -> None:
        """
        The relay itself cannot go on: reset both sides.

        @param event: what to report to the connection's owner, if anything
            (a local resource error is C{upstream unavailable}).
        """
        if self._state is _State.CLOSING:
            return
        self._warn(why)
        if event is not None:
            self._owner.report(event, f"local resource error: {why}")
        self._stop()
        self._record.extra.setdefault("closed_by", "gateway_error")
        for end in (self._client, self._upstream):
            end.close(Close.RESET)

    def _warn(self, why: str) -> None:
        _log.warn(
            "splice relay {client} -> {upstream}: {why}",
            client=self._record.client,
            upstream=self._record.upstream,
            why=why,
        )

    # IRelay: the end

    def clientLost(self, reason: Failure) -> None:
        self._lost(self._upstream, "client")

    def upstreamLost(self, reason: Failure) -> None:
        self._lost(self._client, "upstream")

    def ownedLost(self, end: SpliceEnd) -> None:
        """
        A socket the relay owns (no Twisted transport) was closed: what a
        transport's C{connectionLost} is for the others.
        """
        self._lost(self._client if end is self._upstream else self._upstream, end.side)

    def _closing(self) -> bool:
        return self._state is _State.CLOSING

    def _passReset(self, other: SpliceEnd, side: str) -> None:
        # Twisted lost a socket the relay had not given back: something
        # closed the transport under the relay.  End it as a reset.
        other.close(Close.RESET)

    def _abortBoth(self) -> None:
        for end in (self._client, self._upstream):
            end.close(Close.ABORT)

    def _stop(self) -> None:
        """
        Stop relaying for good: cancel the timers, unregister the relay's
        descriptors and drop the pipes.  The caller then has Twisted close
        the sockets.
        """
        self._state = _State.CLOSING
        self._stopTimer()
        for end in (self._client, self._upstream):
            end.stop()
        self._toUpstream.drop()
        self._toClient.drop()
