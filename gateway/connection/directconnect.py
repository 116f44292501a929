"""
Connect a spliced passthrough connection's upstream without Twisted.

A passthrough connection relayed by splice (L{gateway.connection.splicerelay}) never
shows a byte of its upstream socket to Python, so a Twisted transport for
it would only be built, handed over and torn down again: a C{Connector},
an address resolution for what is already an IP address, a reactor turn
before the C{connect}, a second C{connect} to learn the result, a timeout
C{DelayedCall}, a protocol and a factory.  Here the session makes a
non-blocking socket itself, waits for it to become writable in the splice
hub (L{gateway.fast.hub.Hub}) and gives the connected socket straight to
the splice relay, which closes it itself when the connection ends.

Only for a server whose host is an IP address (a name goes through
Twisted, which resolves it); the errors are Twisted's own
(L{twisted.internet.error.getConnectError}, C{TimeoutError}, C{UserError}),
with the same words, so that a connect fails here exactly as it does there:
the session cannot tell, the logs and C{next_upstream_tries} neither.
Public APIs only: C{socket}, and the hub's epoll set.  Where splice is not
used (L{gateway.fast.portable}), nothing here is.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
from collections.abc import Callable
from typing import Final

from twisted.internet.error import TimeoutError, UserError, getConnectError
from twisted.internet.interfaces import IDelayedCall, IReactorSocket, IReactorTime
from twisted.python.failure import Failure

from gateway.connection.timers import Deadline, cancel, later
from gateway.fast.hub import HUBS, Hub
from gateway.fast.internals import HUB_READER


def adoptionHub(reactor: object) -> Hub | None:
    """
    The hub to connect an upstream in that the reactor then adopts
    (L{gateway.connection.upstream.adoptConnected}), for a connection that is not
    spliced; L{None} to use Twisted's connector: the fast paths are off
    (L{gateway.fast.portable}) or lack what they need, the reactor adopts no
    sockets, or no hub exists yet (the first relay of a process makes it,
    as for L{gateway.connection.splicerelay.directHub}).
    """
    if not HUB_READER or not IReactorSocket.providedBy(reactor):
        return None
    return HUBS.get(reactor)  # type: ignore[call-overload, no-any-return]


@functools.lru_cache(maxsize=4096)
def literalAddress(host: str, port: int) -> tuple[int, tuple[object, ...]] | None:
    """
    The address family and socket address of C{host}:C{port} when C{host}
    is an IP address (no lookup happens: C{AI_NUMERICHOST}), else L{None}.
    Cached: a pool's few servers are asked for on every connection.
    """
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except (OSError, UnicodeError):
        return None
    family, _, _, _, address = found[0]
    return int(family), tuple(address)


class DirectConnect:
    """
    One connect attempt: a non-blocking socket waiting, in the hub, to
    become writable.

    Exactly one of C{connected} (with the socket, which the callee then
    owns) or C{failed} (with a L{Failure} such as Twisted's connector would
    give) is called, once: when the connect completes or fails, when
    C{timeout} passes, or when L{stopConnecting} is called.

    @ivar fd: the socket's descriptor (what the hub keys it by).
    @ivar writing: registered with the hub for writability.
    """

    __slots__ = (
        "_clock",
        "_connected",
        "_failed",
        "_handOver",
        "_hub",
        "_socket",
        "_timer",
        "fd",
        "writing",
    )

    #: The hub asks: a connect only waits to write.
    reading = False
    side = "upstream connect"

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        connected: Callable[[socket.socket], None],
        failed: Callable[[Failure], None],
        *,
        handOver: bool = False,
    ) -> None:
        """
        @param handOver: the connected socket goes to the splice relay,
            which takes its registration in the hub as it is
            (L{gateway.fast.hub.Hub.release}); else (a socket the reactor
            adopts, duplicating it) it leaves the hub.
        """
        self._handOver = handOver
        self._hub = hub
        self._clock = clock
        self._connected: Callable[[socket.socket], None] | None = connected
        self._failed = failed
        self._socket: socket.socket | None = None
        self._timer: Deadline | IDelayedCall | None = None
        self.fd = -1
        self.writing = False

    def start(self, family: int, address: tuple[object, ...], timeout: float) -> None:
        """
        Make the socket and start connecting it to C{address}.  A failure
        known at once (no descriptor left, a refusal the kernel gives
        without waiting) is reported on the reactor's next turn, as
        Twisted's connector reports it: the caller is never called back
        from inside this call.
        """
        try:
            # Non-blocking from the start where the flag exists (Linux): one
            # system call less than setblocking after.
            sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
        except OSError as e:
            self._later(e.errno or errno.EIO)
            return
        if not _NONBLOCK:
            sock.setblocking(False)
        self._socket = sock
        self.fd = sock.fileno()
        result = sock.connect_ex(address)
        if result not in (0, errno.EINPROGRESS):
            self._later(result)
            return
        if _connected(sock):
            # On loopback the handshake is over when connect() returns:
            # no registration, no deadline, no wait for the hub to wake.
            self._hub.soon(self, self._established)
            return
        self._timer = later(self._clock, timeout, self._timedOut)
        self.writing = True
        self._hub.update(self)

    def stopConnecting(self) -> None:
        """
        Give up: the client left.  Reports C{UserError}, as Twisted's
        C{IConnector.stopConnecting} does.
        """
        if self._connected is not None:
            self._fail(Failure(UserError()))

    # for the hub

    def doRead(self) -> None:  # pragma: no cover - never registered to read
        pass

    def doWrite(self) -> None:
        self._done()

    def connectionLost(self, reason: Failure) -> None:
        # The hub dropped the socket: a hang-up (a refused connect shows as
        # one) or the reactor stopping.  The socket's error says which.
        self.writing = False
        self._done()

    # the outcome

    def _done(self) -> None:
        sock = self._socket
        if self._connected is None or sock is None:
            return
        number = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if number:
            self._fail(Failure(getConnectError((number, os.strerror(number)))))
            return
        self._succeed(sock)

    def _established(self) -> None:
        # Connected when start() looked (getpeername answered): the
        # socket has no connect error to ask for.
        sock = self._socket
        if self._connected is not None and sock is not None:
            self._succeed(sock)

    def _succeed(self, sock: socket.socket) -> None:
        assert self._connected is not None
        connected, self._connected = self._connected, None
        if self._handOver:
            cancel(self._timer)
            self._timer = None
            self._hub.release(self, sock)
            self.writing = False
        else:
            self._release()
        self._socket = None
        connected(sock)

    def _timedOut(self) -> None:
        self._timer = None
        if self._connected is not None:
            self._fail(Failure(TimeoutError()))

    def _later(self, number: int) -> None:
        failure = Failure(getConnectError((number, os.strerror(number))))
        self._timer = self._clock.callLater(0, self._fail, failure)

    def _fail(self, reason: Failure) -> None:
        if self._connected is None:
            return
        self._connected = None
        self._release()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._failed(reason)

    def _release(self) -> None:
        cancel(self._timer)
        self._timer = None
        if self.writing:
            self.writing = False
            self._hub.update(self)


_NONBLOCK: Final = getattr(socket, "SOCK_NONBLOCK", 0)


def _connected(sock: socket.socket) -> bool:
    """
    C{sock}'s connect is complete (C{getpeername} answers only then).
    """
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
