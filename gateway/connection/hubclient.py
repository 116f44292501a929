"""
The client side of a connection the hub accepted
(L{gateway.connection.hubaccept}): its socket, read from the hub, as the
transport of the connection's owner while it is pre-read.

A passthrough connection pays for Twisted's transport only to read a
ClientHello and be spliced: the port's C{doRead}, a C{tcp.Server} and its
registration with the reactor, the reactor's dispatch of each event and a
C{Failure} at the end.  L{HubClient} is the part of a transport the
pre-read uses (write, close, half-close, abort, the addresses, pause)
over a non-blocking socket the hub calls directly.  When the verdict is
known, the connection leaves it one of two ways:

  - spliced (a passthrough route to a TCP upstream): the splice relay
    takes the socket (L{HubClient.detach}) and owns it to the end;
  - anything else (termination, an ACME challenge, ECH, the portable
    relay): the reactor adopts the socket (L{HubClient.toReactor}, Twisted's
    public C{adoptStreamConnection}) and the owner goes on with an
    ordinary Twisted transport, exactly as if Twisted had accepted it.

Nothing is written to the client before either, except a refusal's alert,
after which the connection ends here.  No private attribute of Twisted is
used.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure

from gateway.core.transports import RelayTransport, relayTransport

if TYPE_CHECKING:
    from gateway.fast.hub import Hub

#: Bytes read per C{recv} while pre-reading: a ClientHello fits many times.
_READ_SIZE = 65536


def ipAddress(family: int, address: Any) -> IPv4Address | IPv6Address:
    """
    Twisted's address of a socket address, as its listening port builds it.
    """
    if family == socket.AF_INET6:
        return IPv6Address("TCP", *address)
    return IPv4Address("TCP", *address)


class _Moving(ServerFactory):
    """
    Gives the reactor the connection's own protocol for a socket it adopts,
    so the owner keeps the connection (L{HubClient.toReactor}).
    """

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


class HubClient:
    """
    A client socket accepted in the hub, read from there until its
    connection is handed on.

    @ivar reading: registered with the hub for reading.
    @ivar writing: registered with the hub for writing (an alert the
        kernel did not take at once).
    @ivar _buffer: what is written and not sent yet.
    @ivar _closing: C{loseConnection} was called: close once sent.
    @ivar _shutting: C{loseWriteConnection} was called: FIN once sent.
    @ivar _paused: the owner paused reading (its session connects).
    @ivar _done: the socket is closed, detached or adopted.
    @ivar _eof: the client's FIN was read: nothing more to read.
    """

    __slots__ = (
        "_buffer",
        "_closing",
        "_done",
        "_eof",
        "_family",
        "_hub",
        "_paused",
        "_peer",
        "_shutting",
        "fd",
        "protocol",
        "reading",
        "side",
        "socket",
        "writing",
    )

    def __init__(
        self,
        hub: Hub,
        sock: socket.socket,
        family: socket.AddressFamily,
        peer: IPv4Address | IPv6Address,
    ) -> None:
        self._hub = hub
        self.socket = sock
        self.fd = sock.fileno()
        self._family: socket.AddressFamily = family
        self._peer = peer
        self.side = "client"
        self.protocol: Protocol | None = None
        self.reading = False
        self.writing = False
        self._buffer = b""
        self._closing = False
        self._shutting = False
        self._paused = False
        self._done = False
        self._eof = False

    def connect(self, protocol: Protocol) -> None:
        """
        Make C{protocol} the connection's, and read for it unless it ended
        the connection at once (a refusal at accept).

        The first read is tried at once: a client sends its ClientHello
        right after its connect, so under load it is usually there by the
        time the connection is accepted, and then the connection is routed
        (and its socket, paused while the upstream is connected, handed to
        the splice relay) without ever being registered for reading.
        """
        self.protocol = protocol
        protocol.makeConnection(self)
        if self._done or self._paused:
            return
        self.doRead()
        if not self._done and not self._paused and not self.reading:
            self._startReading()

    @property
    def open(self) -> bool:
        """
        The socket is still the hub's, with nothing left to send: it can
        be handed on.
        """
        return not self._done and not self._closing and not self._buffer

    # What the pre-read and the session use of a transport

    def write(self, data: bytes) -> None:
        if self._done or self._closing or self._shutting or not data:
            return
        if self._buffer:
            self._buffer += data
            return
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(ConnectionLost)
            return
        if sent < len(data):
            self._buffer = data[sent:]
            self._update(writing=True)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._done:
            return
        self._closing = True
        if not self._buffer:
            self._close(ConnectionDone)

    def loseWriteConnection(self) -> None:
        if self._done or self._shutting:
            return
        self._shutting = True
        if not self._buffer:
            self._shutdownWrite()

    def abortConnection(self) -> None:
        if not self._done:
            self._close(ConnectionAborted)

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self._peer

    def getHost(self) -> IPv4Address | IPv6Address:
        return ipAddress(self._family, self.socket.getsockname())

    def pauseProducing(self) -> None:
        # Lazily: the socket stays registered until a read finds it
        # paused, so a connection whose client waits for the upstream
        # (every TLS client) makes no epoll_ctl for it.
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if not self._done:
            self._startReading()

    def stopProducing(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        raise TypeError(
            "a connection pre-read in the hub is relayed by splice or"
            " handed to the reactor first (HubClient.toReactor)"
        )

    def unregisterProducer(self) -> None:
        pass

    # Handing the connection on

    def detach(self) -> socket.socket:
        """
        Give the socket to the splice relay, which owns it from now on,
        with its registration in the hub (L{gateway.fast.hub.Hub.release}).
        """
        assert self.open, "only an open socket with nothing unsent is handed on"
        self._hub.release(self, self.socket)
        self.reading = self.writing = False
        self._done = True
        return self.socket

    def toReactor(self, reactor: IReactorSocket) -> RelayTransport:
        """
        Have the reactor adopt the socket for the connection's protocol,
        which keeps the connection (and whatever it read): from now on its
        transport is Twisted's own.

        @return: the new transport.
        @raise OSError: the descriptor could not be duplicated (EMFILE);
            the socket is still the hub's.
        """
        assert self.open
        assert self.protocol is not None
        reactor.adoptStreamConnection(
            self.fd,
            self._family,
            _Moving(self.protocol),
        )
        self._update(reading=False, writing=False)
        self._done = True
        self.socket.close()
        transport = relayTransport(self.protocol.transport)
        if self._paused:
            transport.pauseProducing()
        return transport

    # What the hub calls

    def doRead(self) -> None:
        if self._paused:
            self._update(reading=False)
            return
        try:
            data = self.socket.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._close(ConnectionLost)
            return
        protocol = self.protocol
        assert protocol is not None
        if data:
            protocol.dataReceived(data)
            return
        self._eof = True
        self._update(reading=False)
        readConnectionLost = getattr(protocol, "readConnectionLost", None)
        if readConnectionLost is None:
            self._close(ConnectionDone)
        else:
            readConnectionLost()

    def doWrite(self) -> None:
        try:
            sent = self.socket.send(self._buffer)
        except BlockingIOError:
            return
        except OSError:
            self._close(ConnectionLost)
            return
        self._buffer = self._buffer[sent:]
        if self._buffer:
            return
        self._update(writing=False)
        if self._closing:
            self._close(ConnectionDone)
        elif self._shutting:
            self._shutdownWrite()

    def connectionLost(self, reason: Failure) -> None:
        # The hub dropped the socket: a hang-up, an exception in the
        # protocol's code, or the reactor stopping.
        self.reading = self.writing = False
        if not self._done:
            self._done = True
            self.socket.close()
            if self.protocol is not None:
                self.protocol.connectionLost(reason)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "hub-client"

    # Internals

    def _startReading(self) -> None:
        if not self._eof:
            self._update(reading=True)

    def _update(
        self, *, reading: bool | None = None, writing: bool | None = None
    ) -> None:
        before = (self.reading, self.writing)
        if reading is not None:
            self.reading = reading
        if writing is not None:
            self.writing = writing
        if (self.reading, self.writing) != before:
            self._hub.update(self)

    def _shutdownWrite(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)

    def _close(self, why: type[Exception]) -> None:
        if self._done:
            return
        self._update(reading=False, writing=False)
        self._done = True
        self.socket.close()
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(why()))
