"""
The splice hub: one epoll set per reactor, itself one reader of the
reactor, that calls the gateway's relays (L{gateway.connection.splicerelay}'s
sockets, L{HubReader}s, L{gateway.connection.directconnect}'s connects)
without Twisted's per-event dispatch.

Part of the quarantine (L{gateway.fast}): L{HubReader} is a copy of
C{tcp.Connection.doRead} on a Twisted transport's internals
(C{_dataReceived}, C{_aborting}), used only while
L{gateway.fast.internals.HUB_READER} says they are there and the fast
paths are on.
"""

from __future__ import annotations

import collections
import contextlib
import select
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
    IReadDescriptor,
)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.fast.internals import HUB_READER

if TYPE_CHECKING:
    from gateway.core.transports import RelayTransport


_log = Logger()


# getattr: importing this module must work where there is no epoll (the
# portable relay is then the only one, and no hub is ever made).
_IN: Final[int] = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLPRI", 0)
_OUT: Final[int] = getattr(select, "EPOLLOUT", 0)
_HANGUP: Final[int] = getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)


class HubEnd(Protocol):
    """
    What the hub calls: a splice relay's socket, a L{HubReader}, or a
    listening socket and the clients it accepted
    (L{gateway.connection.hubaccept}, L{gateway.connection.hubclient}).

    An end may also say C{shared = True}: Twisted may register its socket
    too meanwhile (see L{Hub}).
    """

    fd: int
    side: str
    reading: bool
    writing: bool

    def doRead(self) -> None: ...

    def doWrite(self) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...


class _ReadsItself(Protocol):
    """
    A Twisted descriptor that the reactor reads until told not to.
    """

    def stopReading(self) -> None: ...


@implementer(IReadDescriptor)
class Hub:
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

    On the gateway's own reactor (L{gateway.fast.hubreactor}) the sockets
    no one else may register (those the gateway accepted or connected
    itself, and listening sockets the hub took from their port) are in
    the reactor's epoll set instead, and the reactor hands their events
    to L{turn}: one C{epoll_wait} per wake-up rather than two.  A socket
    whose Twisted transport may register it for writing meanwhile (a
    L{HubReader}'s, a spliced transport's: their end says C{shared}) stays
    in the hub's own set, since one descriptor has one registration per
    set.

    @ivar _sockets: the registered sockets by descriptor, in either set.
    @ivar _main: the reactor's epoll set, where it lends it; else L{None}.
    @ivar _added: registered with the reactor.
    """

    def __init__(self, reactor: IReactorFDSet) -> None:
        # Weakly: the hub is the value of a weak-keyed table whose key is
        # the reactor, which a strong reference would keep alive forever.
        self._reactor = weakref.ref(reactor)
        self._epoll = select.epoll()
        self._sockets: dict[int, HubEnd] = {}
        self._released: dict[int, tuple[object, int, select.epoll]] = {}
        lend = getattr(reactor, "lendPoller", None)
        self._main: select.epoll | None = lend(self) if lend is not None else None
        self._soon: collections.deque[tuple[HubEnd, Callable[[], None]]] = (
            collections.deque()
        )
        self._turning = False
        self._added = False

    def soon(self, end: HubEnd, call: Callable[[], None]) -> None:
        """
        Call C{call} for C{end} at the end of the hub's current turn (the
        dispatch of one readiness event, which every connection the hub
        accepted runs inside), or on the reactor's next turn outside one:
        never from inside the caller's own call, as an event would come,
        and without a registration or a wake-up of the hub for a socket
        that is ready at once (a connect on loopback).  An exception is
        the end's, as from its C{doRead}.
        """
        if self._turning:
            self._soon.append((end, call))
            return
        reactor = self._reactor()
        if reactor is not None:
            IReactorTime(reactor).callLater(0, self._call, end, call)

    def _call(self, end: HubEnd, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:  # noqa: BLE001 - as the reactor's own dispatch does
            failure = Failure()
            _log.failure("splice relay {side} socket", failure, side=end.side)
            self._drop(end, failure)

    def takeReading(
        self, end: HubEnd, descriptor: _ReadsItself, exclusive: int = 0
    ) -> None:
        """
        C{end} reads the socket of C{descriptor} (a Twisted port or
        transport) from the hub, instead of the reactor (C{exclusive}: as
        for L{update}).
        """
        descriptor.stopReading()
        end.reading = True
        self.update(end, exclusive)

    def release(self, end: HubEnd, sock: object) -> None:
        """
        C{end} hands its socket C{sock}, registration included (as its
        C{reading} and C{writing} say now: the caller clears them after),
        to the next end of the same descriptor (the splice relay's): that one's
        first L{update} takes the registration as it is (an C{epoll_ctl}
        only if its events differ) instead of one call to remove it and
        one to add it again.

        Only for a socket that is not shared with another descriptor (a
        duplicate would keep the registration alive after C{close}): a
        socket the gateway accepted or connected and relays itself.
        """
        fd = end.fd
        if self._sockets.get(fd) is end:
            del self._sockets[fd]
            mask = (_IN if end.reading else 0) | (_OUT if end.writing else 0)
            self._released[fd] = (sock, mask, self._pollerOf(end))

    def forget(self, end: HubEnd) -> None:
        """
        Stop calling C{end}, whose socket its owner closes next: closing
        takes it out of the epoll set without an C{epoll_ctl} (same
        proviso as L{release}: a socket without a duplicate).
        """
        if self._sockets.get(end.fd) is end:
            del self._sockets[end.fd]

    def _takeOver(self, end: HubEnd, mask: int) -> bool:
        """
        Give C{end} the registration its descriptor's previous end
        released (L{release}), if that was of the same socket.
        """
        fd = end.fd
        released = self._released.pop(fd, None)
        if released is None:
            return False
        sock, registered, poller = released
        if sock is not getattr(end, "socket", None):
            return False  # closed since, and the descriptor reused
        if not mask or poller is not self._pollerOf(end):
            with contextlib.suppress(OSError):
                poller.unregister(fd)
            return not mask
        if mask != registered:
            poller.modify(fd, mask)
        self._sockets[fd] = end
        return True

    def _pollerOf(self, end: HubEnd) -> select.epoll:
        """
        The epoll set C{end}'s socket is registered in (see the class).
        """
        main = self._main
        if main is None or getattr(end, "shared", False):
            return self._epoll
        return main

    def update(self, end: HubEnd, exclusive: int = 0) -> None:
        """
        Make the epoll registration of C{end} match its C{reading} and
        C{writing}.

        @param exclusive: C{EPOLLEXCLUSIVE}, for a shared listening socket
            being registered (L{gateway.connection.hubaccept}): one
            worker's hub woken per connection.
        """
        fd = end.fd
        mask = (_IN if end.reading else 0) | (_OUT if end.writing else 0)
        known = self._sockets.get(fd)
        if known is None and self._released and self._takeOver(end, mask):
            return
        poller = self._pollerOf(end)
        if not mask:
            if known is end:
                del self._sockets[fd]
                # Not contextlib.suppress: three calls, once per connection.
                try:  # noqa: SIM105
                    poller.unregister(fd)
                except OSError:
                    pass
            return
        if known is end:
            poller.modify(fd, mask)
            return
        if known is not None:
            # The descriptor was closed and reused under a relay that
            # forgot it: the kernel dropped it from the set already.
            with contextlib.suppress(OSError):
                self._pollerOf(known).unregister(fd)
        self._sockets[fd] = end
        if exclusive:
            # The flag takes no EPOLLPRI.
            try:
                poller.register(fd, select.EPOLLIN | exclusive)
            except OSError:
                poller.register(fd, select.EPOLLIN)  # a kernel without it
        else:
            poller.register(fd, mask)
        if not self._added:
            reactor = self._reactor()
            if reactor is not None:
                self._added = True
                reactor.addReader(self)

    def _drop(self, end: HubEnd, reason: Failure) -> None:
        if self._sockets.get(end.fd) is end:
            del self._sockets[end.fd]
            with contextlib.suppress(OSError):
                self._pollerOf(end).unregister(end.fd)
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
        self.turn(events)

    def turn(self, events: list[tuple[int, int]]) -> None:
        """
        One turn of the hub: call the ends of C{events} (descriptor and
        epoll mask, from its own set or, for the gateway's reactor, from
        the reactor's), then what was asked for the end of the turn
        (L{soon}).
        """
        self._turning = True
        try:
            self._dispatch(events)
            soon = self._soon
            while soon:
                self._call(*soon.popleft())
        finally:
            self._turning = False

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        sockets = self._sockets
        for fd, mask in events:
            end = sockets.get(fd)
            if end is None:
                released = self._released.pop(fd, None)
                if released is not None:
                    # Released and not taken yet: no one to call, so
                    # not registered either (the taker registers anew).
                    with contextlib.suppress(OSError):
                        released[2].unregister(fd)
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
        main = self._main
        if main is not None:
            # What the reactor's set still holds of the hub's.
            for fd, end in list(self._sockets.items()):
                if self._pollerOf(end) is main:
                    with contextlib.suppress(OSError, ValueError):
                        main.unregister(fd)
                    del self._sockets[fd]
        if reactor is not None and HUBS.get(reactor) is self:
            del HUBS[reactor]


@implementer(IReadDescriptor, IPushProducer)
class HubReader:
    """
    Reads a Twisted TCP transport's socket from the hub instead of the
    reactor, for the portable relay.

    Each readable event runs the transport's own C{doRead} (its C{recv}
    and its protocol's C{dataReceived}), and what that returns is handled
    as the reactor handles it (C{_disconnectSelectable}): end of stream is
    C{readConnectionLost} for a half-closeable transport, anything else
    C{connectionLost}.  Only the reactor's dispatch around it is saved:
    about 1.4 us of the 10 us a terminated keep-alive request costs.
    Writing stays the transport's (L{gateway.connection.relay.send}, Twisted's
    buffer when the kernel's is full).

    It is the streaming producer the relay registers with the other side,
    so a full write buffer there pauses reading here.

    @ivar reading: registered with the hub.
    @ivar sink: where the bytes read go, set by a relay that takes them
        itself (L{gateway.connection.terminatedrelay}), instead of the
        transport's protocol (C{dataReceived}, through the stage and
        session that own it); L{None} for the protocol.  The end of the
        stream and errors go the transport's way in both cases.
    """

    __slots__ = ("_hub", "_size", "fd", "reading", "side", "sink", "transport")

    #: The hub asks: a reader never waits to write.
    writing = False
    #: The transport registers the socket for writing with the reactor
    #: itself (its own buffer): the hub keeps it in a set of its own.
    shared = True

    def __init__(self, hub: Hub, transport: tcp.Connection, side: str) -> None:
        self._hub = hub
        self.transport = transport
        self.fd = transport.fileno()
        self.side = side
        self.reading = False
        self.sink: Callable[[bytes], None] | None = None
        self._size = transport.bufferSize

    def start(self) -> None:
        if not self.reading:
            self._hub.takeReading(self, self.transport)

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
            sink = self.sink
            if sink is None:
                why = transport._dataReceived(data)
            elif data:
                sink(data)
                return
            else:
                why = CONNECTION_DONE
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


#: Read size of a L{HubReader} once a read filled Twisted's 64 KiB.
_BULK_READ: Final = 1 << 18


def hubReaders(
    reactor: object, client: RelayTransport, upstream: RelayTransport
) -> tuple[HubReader, HubReader] | None:
    """
    Hub readers for the TCP sockets under C{client} and C{upstream} (a
    L{TLSTransport}'s C{wire}), or L{None} to let the reactor read them:
    no epoll, the fast paths off (L{gateway.fast.portable}) or a Twisted
    without what L{HubReader} uses (L{gateway.fast.internals.HUB_READER}), a reactor that
    takes no file descriptors, or a transport that is not
    a plain, open Twisted TCP (or UNIX) connection.
    """
    if not HUB_READER or not IReactorFDSet.providedBy(reactor):
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
    return HubReader(hub, wires[0], "client"), HubReader(hub, wires[1], "upstream")


#: The hub of each reactor that ran a splice relay.
HUBS: weakref.WeakKeyDictionary[IReactorFDSet, Hub] = weakref.WeakKeyDictionary()


def hubFor(reactor: IReactorFDSet) -> Hub:
    """
    The hub of C{reactor}, made on first use.
    """
    hub = HUBS.get(reactor)
    if hub is None:
        hub = HUBS[reactor] = Hub(reactor)
    return hub
