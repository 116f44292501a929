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
splice hub (L{_Hub}: one epoll set, itself one reader of the reactor, that
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
import select
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import Final

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
    IReadDescriptor,
    IReadWriteDescriptor,
)
from twisted.internet.main import CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.accesslog import ConnectionRecord
from gateway.portable import EPOLL, PORTABLE, SPLICE
from gateway.relay import IRelay, PortableRelay, RelayTransport, reset, send
from gateway.timers import cancel

#: C{os.splice} (Linux, Python 3.10+), or L{None} where it does not exist
#: or the fast paths are off (L{gateway.portable}).
_splice = getattr(os, "splice", None) if SPLICE else None
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
#: Most bytes asked for per C{splice} from a socket: a pipe's capacity
#: bounds what one call moves.
_CHUNK = 1 << 20
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
    setting: str, client: RelayTransport, upstream: RelayTransport
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
    """
    if setting == "portable":
        return "relay = portable"
    if PORTABLE:
        return f"relay = {setting}, but TLSGATEWAY_PORTABLE is set"
    if _splice is None:
        return f"relay = {setting}, but this platform has no splice"
    for side, transport in (("client", client), ("upstream", upstream)):
        if not isinstance(transport, tcp.Connection):
            kind = type(transport).__name__
            return f"relay = {setting}, but the {side} side is a {kind}"
        if transport.getHandle().family not in (socket.AF_INET, socket.AF_INET6):
            return f"relay = {setting}, but the {side} side is not an IP socket"
        if not transport.connected or transport.disconnecting:
            return f"relay = {setting}, but the {side} side is closing"
        if len(transport.dataBuffer) - transport.offset + transport._tempDataLen:
            return f"relay = {setting}, but the {side} side has unsent bytes"
    return None


def startRelay(
    setting: str,
    reactor: object,
    clock: IReactorTime,
    client: RelayTransport,
    upstream: RelayTransport,
    record: ConnectionRecord,
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
    where = f"{record.client} -> {record.upstream}"
    if why is None:
        try:
            hubFor(reactor)  # type: ignore[arg-type]
        except OSError as e:
            # No descriptor for the hub's epoll set (EMFILE): this
            # connection is relayed all the same, by the reactor.
            why = f"relay = {setting}, but no splice hub: {e.strerror}"
    if why is None:
        _log.debug(
            "relay {where}: splice (relay = {setting})", where=where, setting=setting
        )
        return SpliceRelay(
            client,  # type: ignore[arg-type]
            upstream,  # type: ignore[arg-type]
            record,
            clock,
            idleTimeout,
            done,
            reactor=IReactorFDSet(reactor),
            head=b"".join(pending),
        )
    _log.debug("relay {where}: portable ({why})", where=where, why=why)
    if pending:
        send(upstream, pending[0] if len(pending) == 1 else b"".join(pending))
    readers = _hubReaders(reactor, client, upstream)
    relay = PortableRelay(
        client,
        upstream,
        record,
        clock,
        idleTimeout,
        done,
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
    One relayed socket as the relay's L{_Hub} sees it while the relay owns
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
        transport: tcp.Connection,
        hub: _Hub,
    ) -> None:
        self.side = side
        self.transport = transport
        self.socket = transport.getHandle()
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


# getattr: importing this module must work where there is no epoll (the
# portable relay is then the only one, and no hub is ever made).
_IN: Final[int] = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLPRI", 0)
_OUT: Final[int] = getattr(select, "EPOLLOUT", 0)
_HANGUP: Final[int] = getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)


@implementer(IReadDescriptor)
class _Hub:
    """
    The spliced sockets of one reactor, in an epoll set of their own that
    is itself one reader of the reactor.

    Why not register each socket with the reactor: Twisted's dispatch of an
    event (the poll loop, C{callWithLogger}, two context managers,
    C{_doReadOrWrite}) costs about 1.4 us in Python, more than the relay's
    own work for a small request; the hub takes the events of all its
    sockets from one readiness event and calls the relay directly, for
    0.2 us each.  On C{pass-rps} that is two events per request.

    The rules are Twisted's own (L{twisted.internet.posixbase}'s
    C{_doReadOrWrite}): readable first, then writable if the socket is
    still registered for it; a hang-up or error without input, or an
    exception from the relay, drops the socket and calls its
    C{connectionLost}.  The hub's epoll descriptor lives as long as the
    reactor (the reactor's C{disconnectAll} at shutdown reaches every
    socket through the hub's C{connectionLost}).

    @ivar _sockets: the registered sockets by descriptor.
    @ivar _added: registered with the reactor.
    """

    def __init__(self, reactor: IReactorFDSet) -> None:
        # Weakly: the hub is the value of a weak-keyed table whose key is
        # the reactor, which a strong reference would keep alive forever.
        self._reactor = weakref.ref(reactor)
        self._epoll = select.epoll()
        self._sockets: dict[int, _Socket | _Reader] = {}
        self._added = False

    def update(self, end: _Socket | _Reader) -> None:
        """
        Make the epoll registration of C{end} match its C{reading} and
        C{writing}.
        """
        fd = end.fd
        mask = (_IN if end.reading else 0) | (_OUT if end.writing else 0)
        known = self._sockets.get(fd)
        if not mask:
            if known is end:
                del self._sockets[fd]
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
            return
        if known is end:
            self._epoll.modify(fd, mask)
            return
        if known is not None:
            # The descriptor was closed and reused under a relay that
            # forgot it: the kernel dropped it from the set already.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        self._sockets[fd] = end
        self._epoll.register(fd, mask)
        if not self._added:
            reactor = self._reactor()
            if reactor is not None:
                self._added = True
                reactor.addReader(self)

    def _drop(self, end: _Socket | _Reader, reason: Failure) -> None:
        if self._sockets.get(end.fd) is end:
            del self._sockets[end.fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(end.fd)
        end.connectionLost(reason)

    # IReadDescriptor

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "splice"

    def doRead(self) -> None:
        try:
            events = self._epoll.poll(0)
        except InterruptedError:
            return
        sockets = self._sockets
        for fd, mask in events:
            end = sockets.get(fd)
            if end is None:
                continue
            try:
                if mask & _IN:
                    end.doRead()
                elif mask & _HANGUP:
                    self._drop(end, Failure(ConnectionLost("hang-up")))
                    continue
                if mask & _OUT and end.writing and sockets.get(fd) is end:
                    end.doWrite()
            except Exception:  # noqa: BLE001 - as the reactor's own dispatch does
                failure = Failure()
                _log.failure("splice relay {side} socket", failure, side=end.side)
                self._drop(end, failure)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped the hub (it is stopping): every socket is lost.
        """
        self._added = False
        for end in list(self._sockets.values()):
            self._drop(end, reason)

    def close(self) -> None:
        """
        Close the epoll set (tests; a running gateway keeps its hub).
        """
        reactor = self._reactor()
        if self._added and reactor is not None:
            reactor.removeReader(self)
        self._added = False
        self._epoll.close()
        if reactor is not None and _HUBS.get(reactor) is self:
            del _HUBS[reactor]


@implementer(IReadDescriptor, IPushProducer)
class _Reader:
    """
    Reads a Twisted TCP transport's socket from the hub instead of the
    reactor, for the portable relay.

    Each readable event runs the transport's own C{doRead} (its C{recv}
    and its protocol's C{dataReceived}), and what that returns is handled
    as the reactor handles it (C{_disconnectSelectable}): end of stream is
    C{readConnectionLost} for a half-closeable transport, anything else
    C{connectionLost}.  Only the reactor's dispatch around it is saved:
    about 1.4 us of the 10 us a terminated keep-alive request costs.
    Writing stays the transport's (L{gateway.relay.send}, Twisted's
    buffer when the kernel's is full).

    It is the streaming producer the relay registers with the other side,
    so a full write buffer there pauses reading here.

    @ivar reading: registered with the hub.
    """

    __slots__ = ("_hub", "_size", "fd", "reading", "side", "transport")

    #: The hub asks: a reader never waits to write.
    writing = False

    def __init__(self, hub: _Hub, transport: tcp.Connection, side: str) -> None:
        self._hub = hub
        self.transport = transport
        self.fd = transport.fileno()
        self.side = side
        self.reading = False
        self._size = transport.bufferSize

    def start(self) -> None:
        if not self.reading:
            # Take the reading over from the reactor.
            self.transport.stopReading()
            self.reading = True
            self._hub.update(self)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            self._hub.update(self)

    # IPushProducer, for the other side's transport

    def pauseProducing(self) -> None:
        self.stop()

    def resumeProducing(self) -> None:
        if not self.transport.disconnected:
            self.start()

    def stopProducing(self) -> None:
        # What the transport itself does as a producer (FileDescriptor).
        self.stop()
        self.transport.stopProducing()

    # IReadDescriptor, for the hub

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"relay-{self.side}"

    def doRead(self) -> None:
        """
        Twisted's C{tcp.Connection.doRead}, with a read size that grows.

        Twisted reads 64 KiB at a time.  A read that fills that is a bulk
        transfer, and for it four times as much per C{recv} (and per
        C{SSL_write} and C{send} behind it) takes about a tenth off the CPU
        per byte of C{term-mbps}; small reads keep the small size, whose
        buffer is cheaper to allocate (a larger one costs a small request
        more than it saves).  An aborted transport reads nothing more, as
        Twisted's C{abortConnection} arranges for its own C{doRead}.
        """
        transport = self.transport
        if transport._aborting or transport.disconnected:
            self.stop()
            return
        try:
            data = transport.socket.recv(self._size)
        except BlockingIOError:
            return
        except OSError:
            why: object = CONNECTION_LOST
        else:
            if len(data) == self._size and self._size < _BULK_READ:
                self._size = _BULK_READ
            why = transport._dataReceived(data)
        if why is None:
            return
        self.stop()
        if isinstance(why, ConnectionDone) and IHalfCloseableDescriptor.providedBy(
            self.transport
        ):
            self.transport.readConnectionLost(Failure(why))
        else:
            self.transport.connectionLost(Failure(why))

    def doWrite(self) -> None:  # pragma: no cover - never registered to write
        pass

    def connectionLost(self, reason: Failure) -> None:
        # The hub dropped it: an exception in the protocol's code, a
        # hang-up, or the reactor stopping with the connection open (when
        # the reactor may have reached the transport itself first).
        self.reading = False
        if not self.transport.disconnected:
            self.transport.connectionLost(reason)


#: Read size of a L{_Reader} once a read filled Twisted's 64 KiB.
_BULK_READ: Final = 1 << 18


def _hubReaders(
    reactor: object, client: RelayTransport, upstream: RelayTransport
) -> tuple[_Reader, _Reader] | None:
    """
    Hub readers for the TCP sockets under C{client} and C{upstream} (a
    L{TLSTransport}'s C{wire}), or L{None} to let the reactor read them:
    no epoll or the fast paths off (L{gateway.portable}), a reactor that
    takes no file descriptors, or a transport that is not
    a plain, open Twisted TCP (or UNIX) connection.
    """
    if not EPOLL or not IReactorFDSet.providedBy(reactor):
        return None
    wires = []
    for transport in (client, upstream):
        wire = getattr(transport, "wire", transport)
        if (
            not isinstance(wire, tcp.Connection)
            or wire.TLS
            or not wire.connected
            or wire.disconnecting
        ):
            return None
        wires.append(wire)
    try:
        hub = hubFor(reactor)
    except OSError:
        return None  # no descriptor for the hub (EMFILE): the reactor reads
    return _Reader(hub, wires[0], "client"), _Reader(hub, wires[1], "upstream")


#: The hub of each reactor that ran a splice relay.
_HUBS: weakref.WeakKeyDictionary[IReactorFDSet, _Hub] = weakref.WeakKeyDictionary()


def hubFor(reactor: IReactorFDSet) -> _Hub:
    """
    The hub of C{reactor}, made on first use.
    """
    hub = _HUBS.get(reactor)
    if hub is None:
        hub = _HUBS[reactor] = _Hub(reactor)
    return hub


class _Flow:
    """
    One direction: source socket, pipe, sink socket.

    The source is read only while nothing is held for the sink, so a pipe
    is empty whenever C{splice} fills it; that is the backpressure (a sink
    that does not drain the pipe stops reads from the source, whose kernel
    buffer then fills and closes the TCP window) and it keeps the rules
    short:

      - source readable: borrow a pipe, splice source -> pipe; 0 bytes is
        the source's FIN.
      - then, and when the sink is writable: send C{head}, splice pipe ->
        sink.  Something left: wait until the sink is writable, not reading
        the source.  Nothing left: give the pipe back and read the source
        again or, after its FIN, pass the FIN on (C{shutdown(SHUT_WR)}).

    @ivar head: bytes the gateway already holds for the sink, sent before
        any spliced byte: the pre-read ClientHello, upstream.
    @ivar buffered: bytes in the pipe, counted because a pipe cannot be
        asked how full it is.
    @ivar _pipe: the borrowed pipe, C{(read end, write end)}, while bytes
        are in flight.
    """

    __slots__ = (
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

    def hold(self, data: bytes) -> None:
        """
        Bytes that reached Python for the sink.  Only while nothing is in
        the pipe (before the relay starts, or read from the source when it
        may be read), so that they cannot overtake spliced bytes.
        """
        self.head += data

    def sourceReadable(self) -> None:
        assert _splice is not None
        if self._pipe is None:
            try:
                self._pipe = self._pipes.take()
            except OSError as e:
                # Out of descriptors: the gateway's fault, not the peers'.
                self._relay.failed(
                    f"no pipe for splicing: {e.strerror}",
                    status="upstream_unavailable",
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
        if self._countIn:
            self._record.bytesIn += moved
        self._relay.active()
        self.sinkWritable()

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
        if not data:
            self.end()
            return
        if self._countIn:
            self._record.bytesIn += len(data)
        self._relay.active()
        self.hold(data)
        self.sinkWritable()

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
        upstream: tcp.Connection,
        record: ConnectionRecord,
        clock: IReactorTime,
        idleTimeout: float,
        done: Callable[[], None],
        *,
        reactor: IReactorFDSet,
        head: bytes = b"",
        pipes: PipePool = PIPES,
    ) -> None:
        """
        @param head: bytes for the upstream ahead of everything spliced:
            the session's pending bytes (the ClientHello), given here rather
            than written to the upstream transport, whose buffer nobody
            would send once the relay owns the socket.
        """
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
        for transport in (client, upstream):
            transport.stopReading()
            transport.stopWriting()
        self._lastActivity = clock.seconds()
        self._timer: IDelayedCall | None = clock.callLater(idleTimeout, self._checkIdle)
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
                end.transport.connectionLost(Failure(ConnectionDone()))

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
        reset(other.transport)
        end.transport.abortConnection()

    def failed(self, why: str, status: str | None = None) -> None:
        """
        The relay itself cannot go on: reset both sides.

        @param status: the access-log status to record, if any (a local
            resource error is C{upstream_unavailable}).
        """
        if self._state is _State.CLOSING:
            return
        self._warn(why)
        if status is not None:
            self._record.fail(status, f"local resource error: {why}")
        self._stop()
        self._record.extra.setdefault("closed_by", "gateway_error")
        for end in (self._client, self._upstream):
            reset(end.transport)

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

    def _lost(self, other: _Socket, side: str) -> None:
        self._open -= 1
        if self._state is not _State.CLOSING:
            # Twisted lost a socket the relay had not given back: something
            # closed the transport under the relay.  End it as a reset.
            self._stop()
            self._record.extra.setdefault("closed_by", f"{side}_reset")
            reset(other.transport)
        if self._open == 0 and self._done is not None:
            done, self._done = self._done, None
            done()

    def abort(self, status: str, reason: str) -> None:
        if self._state is _State.CLOSING:
            return
        self._record.fail(status, reason)
        self._stop()
        for end in (self._client, self._upstream):
            end.transport.abortConnection()

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
            self.abort("idle_timeout", f"no bytes for {idle:.1f}s")
        else:
            self._timer = self._clock.callLater(
                self._idleTimeout - idle, self._checkIdle
            )
