"""
A passthrough session: connect to the chosen upstream, replay the
pre-read bytes, then relay.

The client stays paused while the upstream connect is in progress, so the
gateway buffers nothing but the ClientHello it already had.  A connect that
fails is retried on the next server the chooser offers (until
C{next_upstream_tries}); this is safe because no upstream has sent a byte,
and the exact ClientHello is replayed to each.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import (
    IConnector,
    IHalfCloseableProtocol,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.accesslog import ConnectionRecord
from gateway.config import ServerConfig
from gateway.relay import IRelay, PortableRelay
from gateway.upstream import IServerChooser, connectServer


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(Protocol):
    """
    The upstream side of a session: forwards events to the session.
    """

    def __init__(self, session: PassthroughSession, server: ServerConfig) -> None:
        self._session = session
        self._server = server

    def connectionMade(self) -> None:
        self._session.upstreamConnected(self, self._server)

    def dataReceived(self, data: bytes) -> None:
        self._session.relay.upstreamData(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self._session.relay.upstreamReadClosed()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._session.relay.upstreamLost(reason)  # type: ignore[union-attr]


class PassthroughSession:
    """
    @ivar relay: the relay, once the upstream is connected.
    @ivar _pending: client bytes that arrived after the ClientHello but
        before the upstream connected (rare: TLS clients wait for the
        ServerHello), replayed after the ClientHello.
    @ivar _tried: servers that failed for this connection, so a retry
        goes elsewhere.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        client: ITCPTransport,
        record: ConnectionRecord,
        chooser: IServerChooser,
        buffered: bytes,
        *,
        clientKey: str,
        connectTimeout: float,
        idleTimeout: float,
        tries: int,
        ended: Callable[[], None],
    ) -> None:
        self.relay: IRelay | None = None
        self._reactor = reactor
        self._clock = clock
        self._client = client
        self._record = record
        self._chooser = chooser
        self._clientKey = clientKey
        self._pending = [buffered]
        self._connectTimeout = connectTimeout
        self._idleTimeout = idleTimeout
        self._triesLeft = tries
        self._tried: frozenset[ServerConfig] = frozenset()
        self._connector: IConnector | None = None
        self._clientEOF = False
        self._clientGone = False
        self._lastError = "no server available"
        self._ended = ended

    def start(self) -> None:
        self._record.action = "passthrough"
        self._client.pauseProducing()
        self._connectNext()

    def _connectNext(self) -> None:
        server = (
            self._chooser.pick(self._clientKey, self._tried)
            if self._triesLeft > 0
            else None
        )
        if server is None:
            self._giveUp()
            return
        self._triesLeft -= 1
        self._tried |= {server}
        self._record.upstream = server.address
        self._connector = connectServer(
            self._reactor,
            server,
            UpstreamProtocol(self, server),
            self._connectTimeout,
            lambda reason: self._connectFailed(server, reason),
        )

    def _connectFailed(self, server: ServerConfig, reason: Failure) -> None:
        self._connector = None
        if self._clientGone:
            # We cancelled the attempt ourselves: not the server's fault.
            self._finish()
            return
        self._chooser.connectFailed(server)
        self._lastError = f"{server.address}: {reason.getErrorMessage()}"
        self._connectNext()

    def _giveUp(self) -> None:
        self._record.fail("upstream_unavailable", self._lastError)
        self._client.loseConnection()

    def upstreamConnected(
        self, protocol: UpstreamProtocol, server: ServerConfig
    ) -> None:
        self._connector = None
        self._chooser.connectSucceeded(server)
        upstream = protocol.transport
        assert upstream is not None
        if self._clientGone:
            upstream.loseConnection()
            self.relay = _Discard(self._finish)
            return
        upstream.writeSequence(self._pending)
        self._pending = []
        self.relay = PortableRelay(
            self._client,
            upstream,  # type: ignore[arg-type]
            self._record,
            self._clock,
            self._idleTimeout,
            self._finish,
        )
        self._client.resumeProducing()
        if self._clientEOF:
            self.relay.clientReadClosed()

    # client transport events, forwarded by the pre-read protocol

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.clientData(data)
        else:
            self._record.bytesIn += len(data)
            self._pending.append(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.clientReadClosed()
        else:
            self._clientEOF = True

    def connectionLost(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.clientLost(reason)
            return
        self._clientGone = True
        if self._connector is not None:
            # The client left while we were connecting: stop the attempt;
            # clientConnectionFailed then finishes the record.
            self._connector.stopConnecting()
        else:
            self._finish()

    def shutdown(self) -> None:
        if self.relay is not None:
            self.relay.abort("shutdown", "gateway stopped")
        else:
            self._record.fail("shutdown", "gateway stopped")
            self._client.abortConnection()

    def _finish(self) -> None:
        self._record.ended = self._clock.seconds()
        self._ended()


class _Discard:
    """
    Stands in for the relay when the client left before the upstream
    connected: the upstream connection is closed unused.
    """

    def __init__(self, finish: Callable[[], None]) -> None:
        self._finish = finish

    def upstreamData(self, data: bytes) -> None:
        pass

    def upstreamReadClosed(self) -> None:
        pass

    def upstreamLost(self, reason: Failure) -> None:
        self._finish()
