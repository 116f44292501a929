"""
The moving parts of the splice relay (L{gateway.connection.splicerelay}):
the pipes it borrows, each relayed socket as the splice hub sees it
(L{SpliceEnd}) and each direction's state machine (L{Flow}).

A L{Flow} decides, per read, whether to copy through one shared buffer or
to splice through a pipe, and when to pass a FIN on; the relay that owns
two of them (a L{FlowOwner}) decides how the connection ends.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import socket
from typing import Final, Protocol

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.relayrules import LINGER0, reset
from gateway.fast.hub import Hub
from gateway.fast.portable import SPLICE
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.lifecycle import Event

#: C{os.splice} (Linux, Python 3.10+), or L{None} where it does not exist
#: or the fast paths are off (L{gateway.fast.portable}).
splice = getattr(os, "splice", None) if SPLICE else None
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
#: Most bytes asked for per C{splice} from a socket: a pipe's capacity
#: bounds what one call moves.
_CHUNK = 1 << 20
#: Reads of up to this many bytes are copied rather than spliced (see
#: L{Flow}), through one buffer that every flow of the process shares:
#: the reactor is single-threaded and each read is sent on at once.
_COPY_SIZE: Final = 1 << 16
_COPY_BUFFER = bytearray(_COPY_SIZE)
_COPY_VIEW = memoryview(_COPY_BUFFER)


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


class Close(enum.Enum):
    #: both FINs went out and nothing is left to send.
    CLEAN = "clean"
    #: pass a reset on: RST, not FIN.
    RESET = "reset"
    #: stop at once (C{abortConnection}).
    ABORT = "abort"


class FlowState(enum.Enum):
    #: the source may send more.
    OPEN = "open"
    #: the source sent FIN; what is held is still going to the sink.
    ENDED = "ended"
    #: everything went to the sink, followed by a FIN (C{SHUT_WR}).
    SHUT = "shut"


class FlowOwner(Protocol):
    """
    What the flows and sockets of a splice relay report to it.
    """

    @property
    def relaying(self) -> bool: ...

    def flowShut(self) -> None: ...

    def broken(self, end: SpliceEnd, error: OSError | str) -> None: ...

    def failed(self, why: str, event: Event | None = None) -> None: ...

    def ownedLost(self, end: SpliceEnd) -> None: ...


@implementer(IReadWriteDescriptor)
class SpliceEnd:
    """
    One relayed socket as the relay's L{gateway.fast.hub.Hub} sees it while the relay owns
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
        "shared",
        "side",
        "socket",
        "transport",
        "writing",
    )

    def __init__(
        self,
        relay: FlowOwner,
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
        # A Twisted transport's socket goes back to it at the end: the
        # hub keeps it apart from the reactor's set (Hub._pollerOf).
        self.shared = self.transport is not None
        self.fd = self.socket.fileno()
        self.reading = False
        self.writing = False
        self._relay = relay
        self._hub = hub
        self._outgoing: Flow
        self._incoming: Flow

    def connect(self, outgoing: Flow, incoming: Flow) -> None:
        """
        The socket is the source of C{outgoing} (its reads) and the sink of
        C{incoming} (its writability).

        The flows, not their bound methods: two bound methods per socket
        would be a quarter of a KiB per connection, most of which is idle.
        """
        self._outgoing = outgoing
        self._incoming = incoming

    def close(self, how: Close) -> None:
        """
        End the socket (the relay has unregistered it): give it back to its
        Twisted transport, whose C{connectionLost} then reaches the session
        as it always does, or, for a socket the relay owns
        (L{gateway.connection.directconnect}), close it here and tell the relay it is
        lost.
        """
        transport = self.transport
        if transport is not None:
            if how is Close.CLEAN:
                transport.connectionLost(Failure(ConnectionDone()))
            elif how is Close.RESET:
                reset(transport)
            else:
                transport.abortConnection()
            return
        if self.fd < 0:
            return
        if how is Close.RESET:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        self.socket.close()
        self.fd = -1
        self._relay.ownedLost(self)

    def stop(self) -> None:
        """
        Stop being called by the hub, for good: the relay is ending.  A
        socket the relay owns is closed right after, which takes it out
        of the epoll set by itself (L{gateway.fast.hub.Hub.forget}); a
        Twisted transport's is unregistered, since Twisted gets it back.
        """
        if self.transport is None:
            self._hub.forget(self)
            self.reading = self.writing = False
        else:
            self.stopReading()
            self.stopWriting()

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


class Flow:
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
    @ivar _counted: the connection owner's count of client bytes
        (L{gateway.rules.clientbytes}): the flow reads or writes the
        client's socket itself, so it counts there what it moves.
    @ivar _bulk: the last read filled the copy buffer: splice the next.
    @ivar activeAt: when bytes last moved this way (reactor time), for the
        relay's idle check; stamped here rather than through a call to the
        relay on every read.
    """

    __slots__ = (
        "_bulk",
        "_clock",
        "_countIn",
        "_countOut",
        "_counted",
        "_pipe",
        "_pipes",
        "_relay",
        "_sink",
        "_source",
        "activeAt",
        "buffered",
        "head",
        "state",
    )

    def __init__(
        self,
        relay: FlowOwner,
        source: SpliceEnd,
        sink: SpliceEnd,
        pipes: PipePool,
        counted: ClientBytes,
        clock: IReactorTime,
        startedAt: float,
        head: bytes = b"",
    ) -> None:
        self.state = FlowState.OPEN
        # The clock itself, shared, rather than its bound C{seconds}: one
        # object less per flow of an idle connection.
        self._clock = clock
        self.activeAt = startedAt
        self.head = head
        self.buffered = 0
        self._relay = relay
        self._source = source
        self._sink = sink
        self._pipes = pipes
        self._pipe: tuple[int, int] | None = None
        self._counted = counted
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
        """
        The source is readable.  In bulk, splice (L{_splice}); else move
        what it has through the shared buffer: one C{recv_into} and,
        usually, one C{send} that takes it all (in one method: this is most
        of what a keep-alive request costs).  What the sink does not take is
        held (C{head}) until it is writable, as a pipe's rest would be.
        C{recv} also reads past TCP urgent data, dropping the urgent byte as
        the portable relay's reads do (see L{_splice}).
        """
        if self._bulk:
            self._splice()
            return
        try:
            count = self._source.socket.recv_into(_COPY_BUFFER)
        except BlockingIOError:
            return
        except OSError as e:
            self._relay.broken(self._source, e)
            return
        if not count:
            self.end()
            return
        if self._countIn:
            self._counted.received(count)
        if self._countOut:
            self._counted.sent(count)
        self.activeAt = self._clock.seconds()
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

    def _splice(self) -> None:
        """
        Splice what the source has into a borrowed pipe, then on to the
        sink as far as it takes it (L{sinkWritable}).
        """
        assert splice is not None
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
            moved = splice(self._source.fd, self._pipe[1], _CHUNK, flags=_FLAGS)
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
                return
            # Readable, but splice cannot move a byte: it stops at TCP
            # urgent data (MSG_OOB) and, non-blocking, says "try again"
            # while epoll keeps reporting the socket readable (left alone,
            # a busy loop any client can start).  Less than a buffer's
            # worth moved, so the flow copies again, as after any short
            # splice: recv reads past the urgent byte.
            self._bulk = False
            self.sourceReadable()
            return
        self.buffered = moved
        if moved < _COPY_SIZE:
            self._bulk = False
        if self._countIn:
            self._counted.received(moved)
        self.activeAt = self._clock.seconds()
        self.sinkWritable()

    def sinkWritable(self) -> None:
        assert splice is not None
        held = len(self.head) + self.buffered
        try:
            while self.head:
                self.head = self.head[self._sink.socket.send(self.head) :]
            while self.buffered:
                assert self._pipe is not None
                moved = splice(
                    self._pipe[0], self._sink.fd, self.buffered, flags=_FLAGS
                )
                if moved == 0:  # the pipe holds less than counted: a bug
                    self._relay.failed("the pipe is emptier than counted")
                    return
                self.buffered -= moved
                if self._countOut:
                    self._counted.sent(moved)
        except BlockingIOError:
            pass
        except OSError as e:
            self._relay.broken(self._sink, e)
            return
        if len(self.head) + self.buffered < held:
            self.activeAt = self._clock.seconds()
        if self.head or self.buffered:
            self._source.stopReading()
            self._sink.startWriting()
            return
        if self._pipe is not None:
            self._pipes.give(self._pipe)
            self._pipe = None
        self._sink.stopWriting()
        if self.state is FlowState.OPEN:
            self._source.startReading()
        elif self.state is FlowState.ENDED:
            self.state = FlowState.SHUT
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
        if self.state is not FlowState.OPEN:
            return
        self.state = FlowState.ENDED
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
