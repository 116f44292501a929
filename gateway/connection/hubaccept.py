"""
Who accepts a listener's connections: Twisted's listening port, or the
splice hub.

Two providers of L{IAcceptor}, chosen in one place (L{chooseAcceptor}):

  - L{PortAcceptor}: the port reads itself, as Twisted's ports do; what
    L{gateway.fast.acceptwatch} adds to it (a line for each connection
    closed at EMFILE, the end of a shared socket) stays as it was.  Used
    with C{TLSGATEWAY_PORTABLE=1}, without epoll, and for every listener
    the hub does not pre-read: a protocol with a preamble or none read
    (PostgreSQL, MySQL, C{mode = tcp}), C{relay = portable}, a listener
    that only terminates, a UNIX socket.
  - L{HubAcceptor}: the listening socket is one socket of the hub
    (L{gateway.fast.hub}); a readiness event accepts a batch of
    connections, each given to the listener's factory with a
    L{gateway.connection.hubclient.HubClient} as its transport.  The
    connection's owner, its limits, ACLs, PROXY header, deadline,
    refusals, drain and access-log line are the same objects as with a
    port; only the transport differs until the verdict hands the socket
    on.

The factory is the port's current one at each accept, so a reload that
gives a port a new factory (L{gateway.run.service}) is seen at once; a
reload that changes whether the hub may pre-read a listener chooses again
(L{IAcceptor.stop}, then L{chooseAcceptor}).  With C{workers > 1} the
listening socket is shared and registered with C{EPOLLEXCLUSIVE}: one
worker is woken per connection, as with L{gateway.fast.internals.acceptExclusively}.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

from twisted.internet.interfaces import IReactorFDSet, IReactorSocket
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.connection.hubclient import HubClient, ipAddress
from gateway.fast.acceptwatch import listening
from gateway.fast.hub import hubFor
from gateway.fast.internals import acceptExclusively, acceptor
from gateway.fast.portable import EPOLL

_log = Logger()

#: Connections accepted per readiness event at most, so one busy listener
#: does not starve the others (Twisted's ports take up to 100).
BATCH: Final = 64

#: C{accept} failures that mean the process is out of something, not that
#: the connection is bad: Twisted's port recovers from these the same way.
_OUT_OF: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: C{accept} failures of one connection (it was reset while queued).
_TRANSIENT: Final = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
)

#: C{EPOLLEXCLUSIVE}, where Python and the kernel have it.
_EXCLUSIVE: Final[int] = getattr(select, "EPOLLEXCLUSIVE", 0)


class AcceptingFactory(Protocol):
    """
    What an acceptor needs of a listener's factory
    (L{gateway.connection.listener.ListenerFactory}).
    """

    def acceptedInHub(self, client: HubClient) -> None: ...

    def closedAtAccept(self, address: object) -> None: ...


class IAcceptor(Interface):
    """
    Accepts the connections of one listening port.
    """

    def stop() -> None:
        """
        Stop accepting (the port closes, or another acceptor takes over):
        the port is left as Twisted made it.
        """


@implementer(IAcceptor)
class PortAcceptor:
    """
    The port accepts, as Twisted's ports do (nothing to undo).
    """

    def stop(self) -> None:
        pass


@implementer(IAcceptor)
class HubAcceptor:
    """
    A listening socket read from the hub.

    @ivar reading: registered with the hub (the hub's L{HubEnd}).
    @ivar _exclusive: the epoll flag the hub registers it with.
    @ivar _reserve: a descriptor kept to be given up when C{accept} finds
        none left, so the waiting connections can be accepted and closed
        (each with its line) instead of the socket staying readable.
    """

    side = "listener"
    writing = False

    def __init__(
        self,
        reactor: IReactorFDSet,
        port: Any,
        factory: Callable[[], AcceptingFactory | None],
        *,
        shared: bool = False,
    ) -> None:
        self._reactor = reactor
        self._port = port
        self._factory = factory
        self._shared = shared
        self._hub = hubFor(reactor)
        self.socket: socket.socket = port.socket
        self.fd: int = self.socket.fileno()
        self._accept = acceptor(self.socket)
        self._family = self.socket.family
        self._exclusive = _EXCLUSIVE if shared else 0
        self.reading = False
        self._reserve = _reserve()

    def start(self) -> None:
        """
        Take the listening socket over from the reactor.
        """
        self._hub.takeReading(self, self._port, self._exclusive)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            self._hub.update(self)
            # Back to the port, as Twisted made it.
            self._port.startReading()
            if self._shared:
                acceptExclusively(self._reactor, self._port)
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1

    # What the hub calls

    def doRead(self) -> None:
        factory = self._factory()
        if factory is None:
            return
        accept = self._accept
        family = self._family
        hub = self._hub
        for _ in range(BATCH):
            try:
                sock, address = accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._acceptFailed(e, factory)
                return
            sock.setblocking(False)
            client = HubClient(hub, sock, family, ipAddress(family, address))
            try:
                factory.acceptedInHub(client)
            except Exception:  # noqa: BLE001 - one connection's bug, not the port's
                self._failed(client)

    def _failed(self, client: HubClient) -> None:
        """
        Starting a connection raised (a bug): log it and drop that
        connection only.  Twisted's port would have been dropped with it,
        and the listener would accept nothing more.
        """
        _log.failure(
            "listener socket {port}: a connection from {client} failed to start",
            port=self._port,
            client=client.getPeer(),
        )
        client.abortConnection()

    def doWrite(self) -> None:  # pragma: no cover - never registered to write
        pass

    def connectionLost(self, reason: Failure) -> None:
        # The hub dropped it (the reactor stops, or an exception escaped
        # a factory): the port's own stopListening closes the socket.
        self.reading = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "hub-accept"

    def _acceptFailed(self, error: OSError, factory: AcceptingFactory) -> None:
        if error.errno in _TRANSIENT:
            return
        if error.errno in _OUT_OF:
            self._recover(factory)
            return
        if self._shared and not listening(self.socket):
            # The supervisor shut it down: the port's own read says so
            # and ends it (gateway.fast.acceptwatch).
            self.stop()
            return
        _log.error("{port}: cannot accept: {error}", port=self._port, error=error)

    def _recover(self, factory: AcceptingFactory) -> None:
        """
        Out of descriptors: give up the reserved one, accept and close
        every connection waiting (each is logged by the factory), and
        reserve one again, as Twisted's port does.
        """
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        try:
            for _ in range(BATCH * 16):
                try:
                    sock, address = self.socket.accept()
                except OSError:
                    break
                sock.close()
                factory.closedAtAccept(address)
        finally:
            self._reserve = _reserve()


def _reserve() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def chooseAcceptor(
    reactor: object,
    port: Any,
    factory: Callable[[], AcceptingFactory | None],
    *,
    preread: bool,
    shared: bool,
) -> IAcceptor:
    """
    The acceptor of a listening port: the only place that chooses.

    @param preread: the port's listener is one the hub may pre-read
        (L{gateway.connection.listener.ListenerFactory.prereadsInHub}).
    @param shared: the socket is shared with other workers.
    """
    sock = getattr(port, "socket", None)
    if (
        preread
        and EPOLL
        and IReactorFDSet.providedBy(reactor)
        and IReactorSocket.providedBy(reactor)
        and isinstance(sock, socket.socket)
        and sock.family in (socket.AF_INET, socket.AF_INET6)
    ):
        try:
            acceptor = HubAcceptor(reactor, port, factory, shared=shared)
        except OSError:
            pass  # no descriptor for the hub: the port accepts
        else:
            acceptor.start()
            return acceptor
    if shared:
        acceptExclusively(reactor, port)
    return PortAcceptor()
