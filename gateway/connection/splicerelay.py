"""
The zero-copy relay: Linux C{splice(2)} moves passthrough bytes from one
socket to the other through a pipe, without copying them into Python.

In passthrough the gateway never looks at a relayed byte, so reading each
one into a Python object and writing it out again (what L{PortableRelay}
does through Twisted transports) is pure cost.  Here each direction splices
what the source socket has into a pipe and from the pipe into the sink
socket: the kernel moves page references, and Python only counts.

Taking the sockets over: once the session has both connections, the relay
stops Twisted's reading and writing on both transports and registers its
own descriptor objects for the same file descriptors with the reactor's
splice hub (L{gateway.fast.internals.Hub}: one epoll set, itself one reader of the reactor, that
calls the relays without Twisted's per-event dispatch).
Twisted keeps owning the sockets: when the relay is done it unregisters and
gives them back (C{loseConnection}, C{abortConnection}), so the transports'
C{connectionLost} reaches the protocols and the session finishes (and the
access log is written) exactly as with the portable relay.

L{startRelay} chooses between the two relays per connection.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Final

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IReactorFDSet,
    IReactorTime,
    IReadWriteDescriptor,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.relay import IRelay, PortableRelay, reset
from gateway.connection.timers import Deadline, cancel, later
from gateway.core import verbosity
from gateway.core.transports import RelayTransport
from gateway.fast.internals import HUBS, Hub, hasUnsentBytes, hubFor, hubReaders, send
from gateway.fast.portable import PORTABLE, SPLICE
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import ConnectionOwner, Event

#: C{os.splice} (Linux, Python 3.10+), or L{None} where it does not exist
#: or the fast paths are off (L{gateway.fast.portable}).
_splice = getattr(os, "splice", None) if SPLICE else None
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
#: Most bytes asked for per C{splice} from a socket: a pipe's capacity
#: bounds what one call moves.
_CHUNK = 1 << 20
#: Reads of up to this many bytes are copied rather than spliced (see
#: L{_Flow}), through one buffer that every flow of the process shares:
#: the reactor is single-threaded and each read is sent on at once.
_COPY_SIZE: Final = 1 << 16
_COPY_BUFFER = bytearray(_COPY_SIZE)
_COPY_VIEW = memoryview(_COPY_BUFFER)
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


class PipePool:
    """
    Empty pipes that the splice relays of a process borrow and give back.

    A direction holds a pipe only while bytes are in it: from the splice
    that fills it until the sink has taken all of it, which for a sink that
    keeps up is the same reactor callback.  So a process needs about as
    many pipes as it has directions whose sink is behind, not two per
    connection: an idle connection holds no pipe and no extra descriptors,
    and large pipes (fewer system calls per byte) stay affordable within
    the kernel's per-user pipe budget (C{fs.pipe-user-pages-soft}).

    A pipe comes back only when its direction counted it empty; a pipe
    that may hold bytes (a connection that ended abnormally) is closed, so
    no byte can reach another connection.

    @ivar size: the capacity asked for (C{F_SETPIPE_SZ}); where the kernel
        refuses (above C{fs.pipe-max-size}, or over the user's budget) a
        pipe keeps the size it got, which works, in smaller steps.
    @ivar keep: most idle pipes kept open; more are closed when given back.
    """

    def __init__(self, size: int = 1 << 20, keep: int = 16) -> None:
        self.size = size
        self.keep = keep
        self._idle: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        """
        An empty pipe, C{(read end, write end)}, both non-blocking.

        @raise OSError: no descriptors left for a new one.
        """
        if self._idle:
            return self._idle.pop()
        pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, self.size)
        return pipe

    def give(self, pipe: tuple[int, int]) -> None:
        """
        Take back an empty pipe.
        """
        if len(self._idle) < self.keep:
            self._idle.append(pipe)
        else:
            _closePipe(pipe)

    def close(self) -> None:
        """
        Close the idle pipes.
        """
        while self._idle:
            _closePipe(self._idle.pop())


def _closePipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        os.close(fd)


#: The process's pipes, for relays that are not given a pool of their own.
PIPES = PipePool()


def spliceUnavailable(
    setting: str, client: RelayTransport, upstream: RelayTransport | None
) -> str | None:
    """
    Why a connection cannot use the splice relay, or L{None} if it can.

    C{auto} and C{splice} ask the same question, since splice is used
    wherever it moves the bytes correctly; C{splice} only makes the log say
    that it was asked for.  It cannot when bytes must pass through Python:
    TLS done by the gateway (a L{TLSTransport} side), a side that is not an
    IP socket (C{unix:}: the portable relay is the tested path there), or a
    side holding bytes the gateway wrote through Twisted that are not sent
    yet, which spliced bytes would overtake.  (A PROXY protocol header is
    not such a case: the session puts it first among the pending bytes,
    which the splice relay sends before anything else.)

    @param setting: the listener's C{relay} key.
    @param upstream: L{None} for an upstream socket that is not connected
        yet and will be the relay's own (L{gateway.connection.directconnect}): a TCP
        socket to an IP address with nothing written to it, which splice
        always takes.
    """
    if setting == "portable":
        return "relay = portable"
    if PORTABLE:
        return f"relay = {setting}, but TLSGATEWAY_PORTABLE is set"
    if _splice is None:
        return f"relay = {setting}, but this platform has no splice"
    for side, transport in (("client", client), ("upstream", upstream)):
        if transport is None:
            continue
        if not isinstance(transport, tcp.Connection):
            kind = type(transport).__name__
            return f"relay = {setting}, but the {side} side is a {kind}"
        if transport.getHandle().family not in (socket.AF_INET, socket.AF_INET6):
            return f"relay = {setting}, but the {side} side is not an IP socket"
        if not transport.connected or transport.disconnecting:
            return f"relay = {setting}, but the {side} side is closing"
        if hasUnsentBytes(transport):
            return f"relay = {setting}, but the {side} side has unsent bytes"
    return None


def directHub(setting: str, reactor: object, client: RelayTransport) -> Hub | None:
    """
    The splice hub to connect a connection's upstream in
    (L{gateway.connection.directconnect}), when the connection will be spliced
    whatever its upstream: its C{relay} setting, the platform and its
    client side allow it.  L{None} otherwise: the upstream is connected
    by Twisted, and L{startRelay} chooses.

    Only a hub that exists: the first relay of a process makes it
    (L{startRelay}), where a hub that cannot be made (no descriptor left)
    leaves that connection to the reactor; made here, before the upstream
    socket, it could take the descriptor that socket needed.
    """
    if spliceUnavailable(setting, client, None) is not None:
        return None
    return HUBS.get(reactor)  # type: ignore[call-overload, no-any-return]


def startDirectRelay(
    setting: str,
    reactor: object,
    clock: IReactorTime,
    client: RelayTransport,
    upstream: object,
    record: ConnectionRecord,
    owner: ConnectionOwner,
    idleTimeout: float,
    done: Callable[[], None],
    pending: Sequence[bytes],
) -> SpliceRelay:
    """
    The splice relay between C{client} and C{upstream}, said in the debug
    log: a Twisted TCP transport (L{startRelay} chose splice), or a socket
    that L{gateway.connection.directconnect} connected, which the relay then owns
    (the client side must still be spliceable: L{spliceUnavailable} with
    no upstream).
    """
    if verbosity.DEBUG:
        _log.debug(
            "relay {where}: splice (relay = {setting})",
            where=f"{record.client} -> {record.upstream}",
            setting=setting,
        )
    return SpliceRelay(
        client,  # type: ignore[arg-type]
        upstream,  # type: ignore[arg-type]
        record,
        clock,
        idleTimeout,
        done,
        owner=owner,
        reactor=IReactorFDSet(reactor),
        head=b"".join(pending),
    )


def startRelay(
    setting: str,
    reactor: object,
    clock: IReactorTime,
    client: RelayTransport,
    upstream: RelayTransport,
    record: ConnectionRecord,
    owner: ConnectionOwner,
    idleTimeout: float,
    done: Callable[[], None],
    pending: Sequence[bytes],
    *,
    countBytes: bool,
) -> IRelay:
    """
    Start relaying a connection whose upstream is ready: with the splice
    relay where it applies, the portable relay otherwise; say which in the
    debug log.

    @param setting: the listener's C{relay} key.
    @param reactor: the reactor (an L{IReactorFDSet} for the splice relay).
    @param pending: client bytes read before the relay, to go upstream first.
    @param countBytes: see L{PortableRelay}.
    """
    why = spliceUnavailable(setting, client, upstream)
    if why is None:
        try:
            hubFor(reactor)  # type: ignore[arg-type]
        except OSError as e:
            # No descriptor for the hub's epoll set (EMFILE): this
            # connection is relayed all the same, by the reactor.
            why = f"relay = {setting}, but no splice hub: {e.strerror}"
    if why is None:
        return startDirectRelay(
            setting,
            reactor,
            clock,
            client,
            upstream,
            record,
            owner,
            idleTimeout,
            done,
            pending,
        )
    if verbosity.DEBUG:
        where = f"{record.client} -> {record.upstream}"
        _log.debug("relay {where}: portable ({why})", where=where, why=why)
    if pending:
        send(upstream, pending[0] if len(pending) == 1 else b"".join(pending))
    readers = hubReaders(reactor, client, upstream)
    relay = PortableRelay(
        client,
        upstream,
        record,
        clock,
        idleTimeout,
        done,
        owner=owner,
        countBytes=countBytes,
        readers=readers,
    )
    if readers is None:
        client.resumeProducing()
    else:
        for reader in readers:
            reader.start()
    return relay


class _State(enum.Enum):
    #: being built: its descriptors are not registered yet, and bytes the
    #: session holds are taken as the head (L{_Flow.hold}).
    STARTING = "starting"
    #: the relay's descriptors move the bytes.
    RELAYING = "relaying"
    #: the relay unregistered and gave both sockets back to Twisted to
    #: close; it waits for both transports' C{connectionLost}.
    CLOSING = "closing"


class _Close(enum.Enum):
    #: both FINs went out and nothing is left to send.
    CLEAN = "clean"
    #: pass a reset on: RST, not FIN.
    RESET = "reset"
    #: stop at once (C{abortConnection}).
    ABORT = "abort"


#: C{SO_LINGER} on, zero seconds: C{close} sends RST.
_LINGER0 = struct.pack("ii", 1, 0)


class _FlowState(enum.Enum):
    #: the source may send more.
    OPEN = "open"
    #: the source sent FIN; what is held is still going to the sink.
    ENDED = "ended"
    #: everything went to the sink, followed by a FIN (C{SHUT_WR}).
    SHUT = "shut"


@implementer(IReadWriteDescriptor)
class _Socket:
    """
    One relayed socket as the relay's L{gateway.fast.internals.Hub} sees it while the relay owns
    it: the source of one flow (C{doRead}) and the sink of the other
    (C{doWrite}).

    @ivar reading: registered for reading.
    @ivar writing: registered for writing.
    """

    # Slots, here and in the other per-connection classes: an idle
    # connection's relay is most of what the gateway keeps for it.
    __slots__ = (
        "_hub",
        "_incoming",
        "_outgoing",
        "_relay",
        "fd",
        "reading",
        "side",
        "socket",
        "transport",
        "writing",
    )

    def __init__(
        self,
        relay: SpliceRelay,
        side: str,
        end: tcp.Connection | socket.socket,
        hub: Hub,
    ) -> None:
        self.side = side
        if isinstance(end, socket.socket):
            self.transport: tcp.Connection | None = None
            self.socket = end
        else:
            self.transport = end
            self.socket = end.getHandle()
        self.fd = self.socket.fileno()
        self.reading = False
        self.writing = False
        self._relay = relay
        self._hub = hub
        self._outgoing: _Flow
        self._incoming: _Flow

    def connect(self, outgoing: _Flow, incoming: _Flow) -> None:
        self._outgoing = outgoing
        self._incoming = incoming

    def close(self, how: _Close) -> None:
        """
        End the socket (the relay has unregistered it): give it back to its
        Twisted transport, whose C{connectionLost} then reaches the session
        as it always does, or, for a socket the relay owns
        (L{gateway.connection.directconnect}), close it here and tell the relay it is
        lost.
        """
        transport = self.transport
        if transport is not None:
            if how is _Close.CLEAN:
                transport.connectionLost(Failure(ConnectionDone()))
            elif how is _Close.RESET:
                reset(transport)
            else:
                transport.abortConnection()
            return
        if self.fd < 0:
            return
        if how is _Close.RESET:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        self.socket.close()
        self.fd = -1
        self._relay.ownedLost(self)

    def startReading(self) -> None:
        if not self.reading:
            self.reading = True
            self._hub.update(self)

    def stopReading(self) -> None:
        if self.reading:
            self.reading = False
            self._hub.update(self)

    def startWriting(self) -> None:
        if not self.writing:
            self.writing = True
            self._hub.update(self)

    def stopWriting(self) -> None:
        if self.writing:
            self.writing = False
            self._hub.update(self)

    # IReadWriteDescriptor

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"splice-{self.side}"

    def doRead(self) -> None:
        self._outgoing.sourceReadable()

    def doWrite(self) -> None:
        self._incoming.sinkWritable()

    def connectionLost(self, reason: Failure) -> None:
        # The hub dropped the descriptor: a hang-up seen while only
        # writing, an exception in doRead/doWrite, or the reactor stopping.
        self.reading = self.writing = False
        self._relay.broken(self, reason.getErrorMessage())


class _Flow:
    """
    One direction: source socket, pipe, sink socket.

    The source is read only while nothing is held for the sink, so a pipe
    is empty whenever C{splice} fills it; that is the backpressure (a sink
    that does not drain the pipe stops reads from the source, whose kernel
    buffer then fills and closes the TCP window) and it keeps the rules
    short:

      - source readable, in bulk: borrow a pipe, splice source -> pipe;
        0 bytes is the source's FIN.  Otherwise: C{recv_into} one shared
        buffer and C{send} from it (L{_COPY_SIZE}).
      - then, and when the sink is writable: send C{head}, splice pipe ->
        sink.  Something left: wait until the sink is writable, not reading
        the source.  Nothing left: give the pipe back and read the source
        again or, after its FIN, pass the FIN on (C{shutdown(SHUT_WR)}).

    Copy or splice: both take two system calls per read, but for the few
    hundred bytes of a request or a small answer, C{recv}/C{send} through
    one reused buffer is cheaper in the kernel than filling and draining a
    pipe (measured on C{pass-rps}: about a tenth of the CPU per request),
    while for bulk transfers splicing saves the copies.  So a flow copies
    until a read fills the buffer, splices from then on, and goes back to
    copying when a splice moves less than a buffer's worth.

    @ivar head: bytes the gateway already holds for the sink, sent before
        any spliced byte: the pre-read ClientHello, upstream.
    @ivar buffered: bytes in the pipe, counted because a pipe cannot be
        asked how full it is.
    @ivar _pipe: the borrowed pipe, C{(read end, write end)}, while bytes
        are in flight.
    @ivar _bulk: the last read filled the copy buffer: splice the next.
    """

    __slots__ = (
        "_bulk",
        "_countIn",
        "_countOut",
        "_pipe",
        "_pipes",
        "_record",
        "_relay",
        "_sink",
        "_source",
        "buffered",
        "head",
        "state",
    )

    def __init__(
        self,
        relay: SpliceRelay,
        source: _Socket,
        sink: _Socket,
        pipes: PipePool,
        record: ConnectionRecord,
        head: bytes = b"",
    ) -> None:
        self.state = _FlowState.OPEN
        self.head = head
        self.buffered = 0
        self._relay = relay
        self._source = source
        self._sink = sink
        self._pipes = pipes
        self._pipe: tuple[int, int] | None = None
        self._record = record
        self._countIn = source.side == "client"
        self._countOut = sink.side == "client"
        self._bulk = False

    def hold(self, data: bytes) -> None:
        """
        Bytes that reached Python for the sink.  Only while nothing is in
        the pipe (before the relay starts, or read from the source when it
        may be read), so that they cannot overtake spliced bytes.
        """
        self.head += data

    def sourceReadable(self) -> None:
        if not self._bulk:
            self._copy()
            return
        assert _splice is not None
        if self._pipe is None:
            try:
                self._pipe = self._pipes.take()
            except OSError as e:
                # Out of descriptors: the gateway's fault, not the peers'.
                self._relay.failed(
                    f"no pipe for splicing: {e.strerror}",
                    event=Event.UPSTREAM_UNAVAILABLE,
                )
                return
        try:
            moved = _splice(self._source.fd, self._pipe[1], _CHUNK, flags=_FLAGS)
        except BlockingIOError:
            moved = -1
        except OSError as e:
            self._relay.broken(self._source, e)
            return
        if moved <= 0:
            self._pipes.give(self._pipe)
            self._pipe = None
            if moved == 0:
                self.end()
            else:
                self._readPastUrgentData()
            return
        self.buffered = moved
        if moved < _COPY_SIZE:
            self._bulk = False
        if self._countIn:
            self._record.bytesIn += moved
        self._relay.active()
        self.sinkWritable()

    def _copy(self) -> None:
        """
        Move what the source has through the shared buffer: one C{recv_into}
        and, usually, one C{send} that takes it all.  What the sink does not
        take is held (C{head}) until it is writable, as a pipe's rest would
        be.  C{recv} also reads past TCP urgent data, dropping the urgent
        byte as the portable relay's reads do (see L{_readPastUrgentData}).
        """
        try:
            count = self._source.socket.recv_into(_COPY_BUFFER)
        except BlockingIOError:
            return
        except OSError as e:
            self._relay.broken(self._source, e)
            return
        if not self._received(count):
            return
        if count == _COPY_SIZE:
            self._bulk = True
        try:
            sent = self._sink.socket.send(_COPY_VIEW[:count])
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._relay.broken(self._sink, e)
            return
        if sent < count:
            self.head = _COPY_VIEW[sent:count].tobytes()
            self._source.stopReading()
            self._sink.startWriting()

    def _readPastUrgentData(self) -> None:
        """
        The source is readable, but C{splice} cannot move a byte.

        C{splice} stops at TCP urgent data (C{MSG_OOB}) and, non-blocking,
        says "try again" while epoll keeps reporting the socket readable:
        left alone, that is a busy loop any client can start.  C{recv} reads
        past the urgent byte, dropping it as the portable relay's reads do,
        and what it returns goes to the sink like any other byte; then
        splicing resumes.
        """
        try:
            data = self._source.socket.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self._relay.broken(self._source, e)
            return
        if not self._received(len(data)):
            return
        self.hold(data)
        self.sinkWritable()

    def _received(self, count: int) -> bool:
        """
        A read of the source returned C{count} bytes: count them as the
        flow's direction says, or end the flow at the source's EOF.
        @return: whether there are bytes to pass on.
        """
        if not count:
            self.end()
            return False
        if self._countIn:
            self._record.bytesIn += count
        if self._countOut:
            self._record.bytesOut += count
        self._relay.active()
        return True

    def sinkWritable(self) -> None:
        assert _splice is not None
        held = len(self.head) + self.buffered
        try:
            while self.head:
                self.head = self.head[self._sink.socket.send(self.head) :]
            while self.buffered:
                assert self._pipe is not None
                moved = _splice(
                    self._pipe[0], self._sink.fd, self.buffered, flags=_FLAGS
                )
                if moved == 0:  # the pipe holds less than counted: a bug
                    self._relay.failed("the pipe is emptier than counted")
                    return
                self.buffered -= moved
                if self._countOut:
                    self._record.bytesOut += moved
        except BlockingIOError:
            pass
        except OSError as e:
            self._relay.broken(self._sink, e)
            return
        if len(self.head) + self.buffered < held:
            self._relay.active()
        if self.head or self.buffered:
            self._source.stopReading()
            self._sink.startWriting()
            return
        if self._pipe is not None:
            self._pipes.give(self._pipe)
            self._pipe = None
        self._sink.stopWriting()
        if self.state is _FlowState.OPEN:
            self._source.startReading()
        elif self.state is _FlowState.ENDED:
            self.state = _FlowState.SHUT
            try:
                self._sink.socket.shutdown(socket.SHUT_WR)
            except OSError as e:
                self._relay.broken(self._sink, e)
                return
            self._relay.flowShut()

    def end(self) -> None:
        """
        The source sent FIN: pass it on after what is held.
        """
        if self.state is not _FlowState.OPEN:
            return
        self.state = _FlowState.ENDED
        self._source.stopReading()
        if self._relay.relaying:
            self.sinkWritable()

    def drop(self) -> None:
        """
        The relay is over: close the pipe, if one is held, with what is in it.
        """
        if self._pipe is not None:
            _closePipe(self._pipe)
            self._pipe = None


@implementer(IRelay)
class SpliceRelay:
    """
    A relay that splices between two TCP sockets (Linux), with the portable
    relay's guarantees: backpressure per direction (see L{_Flow}),
    half-close both ways, resets passed on as resets, C{idle_timeout}, byte
    counts, and C{done} once both transports are closed.

    C{clientData}/C{upstreamData} are not called once the relay owns the
    sockets, since bytes no longer reach Python; C{bytesIn} counts bytes
    spliced from the client socket, C{bytesOut} bytes spliced to it.

    @ivar _open: transports not yet lost; C{done} runs at zero.
    @ivar _lastActivity: reactor time bytes last moved, either way, in or
        out; checked by a re-arming timer as in L{PortableRelay}.
    """

    __slots__ = (
        "_client",
        "_clock",
        "_done",
        "_idleTimeout",
        "_lastActivity",
        "_open",
        "_owner",
        "_record",
        "_state",
        "_timer",
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
        self._owner = owner
        self._record = record
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._done: Callable[[], None] | None = done
        self._open = 2
        self._state = _State.STARTING
        hub = hubFor(reactor)
        self._client = _Socket(self, "client", client, hub)
        self._upstream = _Socket(self, "upstream", upstream, hub)
        self._toUpstream = _Flow(
            self, self._client, self._upstream, pipes, record, head
        )
        self._toClient = _Flow(self, self._upstream, self._client, pipes, record)
        self._client.connect(self._toUpstream, self._toClient)
        self._upstream.connect(self._toClient, self._toUpstream)
        # The session paused the client; nothing is buffered on either
        # transport (spliceUnavailable checked), so this hands both over.
        for end in (self._client, self._upstream):
            if end.transport is not None:
                end.transport.stopReading()
                end.transport.stopWriting()
        self._lastActivity = clock.seconds()
        self._timer: Deadline | None = later(clock, idleTimeout, self._checkIdle)
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

    # IRelay: bytes (see _Flow.hold) and FINs seen before the relay started

    def clientData(self, data: bytes) -> None:
        self._record.bytesIn += len(data)
        self._toUpstream.hold(data)

    def upstreamData(self, data: bytes) -> None:
        self._record.bytesOut += len(data)
        self._toClient.hold(data)

    def clientReadClosed(self) -> None:
        self._toUpstream.end()

    def upstreamReadClosed(self) -> None:
        self._toClient.end()

    # flow events

    def active(self) -> None:
        self._lastActivity = self._clock.seconds()

    def flowShut(self) -> None:
        """
        A flow passed its FIN on; after both, close both sockets, cleanly.
        """
        if self._toUpstream.state is self._toClient.state is _FlowState.SHUT:
            self._stop()
            # Nothing is left to flush and both FINs went out, so close now,
            # as the reactor does (IFileDescriptor.connectionLost).  Not
            # loseConnection(): it would wait for writability, and epoll
            # reports a socket shut both ways as a hang-up, which Twisted
            # takes for a connection lost "in a non-clean fashion".
            for end in (self._client, self._upstream):
                end.close(_Close.CLEAN)

    def broken(self, end: _Socket, error: OSError | str) -> None:
        """
        A socket failed (its peer reset it, typically): reset the other one,
        as L{PortableRelay} does, rather than pretend the stream ended.
        """
        if self._state is _State.CLOSING:
            return
        if isinstance(error, OSError) and error.errno not in _PEER_ERRORS:
            self._warn(f"{end.side} socket: {error}")
        self._stop()
        self._record.extra.setdefault("closed_by", f"{end.side}_reset")
        other = self._upstream if end is self._client else self._client
        other.close(_Close.RESET)
        end.close(_Close.ABORT)

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
            end.close(_Close.RESET)

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

    def ownedLost(self, end: _Socket) -> None:
        """
        A socket the relay owns (no Twisted transport) was closed: what a
        transport's C{connectionLost} is for the others.
        """
        self._lost(self._client if end is self._upstream else self._upstream, end.side)

    def _lost(self, other: _Socket, side: str) -> None:
        self._open -= 1
        if self._state is not _State.CLOSING:
            # Twisted lost a socket the relay had not given back: something
            # closed the transport under the relay.  End it as a reset.
            self._stop()
            self._record.extra.setdefault("closed_by", f"{side}_reset")
            other.close(_Close.RESET)
        if self._open == 0 and self._done is not None:
            done, self._done = self._done, None
            done()

    def abort(self, event: Event, reason: str) -> None:
        if self._state is _State.CLOSING:
            return
        self._owner.report(event, reason)
        self._stop()
        for end in (self._client, self._upstream):
            end.close(_Close.ABORT)

    def _stop(self) -> None:
        """
        Stop relaying for good: cancel the timers, unregister the relay's
        descriptors and drop the pipes.  The caller then has Twisted close
        the sockets.
        """
        self._state = _State.CLOSING
        cancel(self._timer)
        self._timer = None
        for end in (self._client, self._upstream):
            end.stopReading()
            end.stopWriting()
        self._toUpstream.drop()
        self._toClient.drop()

    # idle

    def _checkIdle(self) -> None:
        self._timer = None
        idle = self._clock.seconds() - self._lastActivity
        if idle >= self._idleTimeout:
            self.abort(Event.IDLE, f"no bytes for {idle:.1f}s")
        else:
            self._timer = later(self._clock, self._idleTimeout - idle, self._checkIdle)
