"""
After the route is chosen: reach an upstream, then relay.

A L{Session} connects to a server of the chosen upstream (retrying the next
one when a connect fails, while no upstream has sent a byte), optionally
opens the connection as the client's protocol does (an
L{gateway.connection.strategy.IUpstreamOpening}) and does a verified TLS
handshake with it, replays what the client already sent, and starts the
relay.  The client side is given to it as a transport: the
raw TCP transport in passthrough, the L{TLSTransport} of a terminated
connection otherwise; so the same code serves both modes.

The client stays paused while the upstream is being reached, so the gateway
buffers nothing but what it already had.  When the session is over on
every side it tells the connection's owner
(L{gateway.rules.lifecycle.ConnectionOwner.stageEnded}), which stamps the
end and has it logged; it counts no client byte in (the owner did).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.dialers import (
    AttemptProtocol,
    SplicedAttempt,
    Stoppable,
    chooseDialer,
)
from gateway.connection.relay import IRelay
from gateway.connection.relays import spliceUnavailable, startRelay, startSpliceRelay
from gateway.connection.servertries import ServerTries
from gateway.connection.strategy import IUpstreamOpening
from gateway.connection.terminate import ITerminatedSession
from gateway.connection.timers import Deadline, cancel, later
from gateway.connection.upstream import (
    IServerChooser,
    UpstreamTLSPolicy,
    localError,
)
from gateway.core.transports import RelayTransport, relayTransport
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.lifecycle import ConnectionOwner, Event
from gateway.tls.transport import ITLSEvents, TLSTransport

FailureNotice = bytes | Callable[[str], bytes]
"""
What a client is told when no server can take its connection: fixed bytes,
or a function of the last error (C{host:port: reason}) that gives them.
"""


@attrs.frozen
class UpstreamRuntime:
    """
    One C{[upstream:NAME]} of one configuration generation, as sessions use it.

    @ivar tries: C{next_upstream_tries}.
    @ivar tls: how to re-encrypt to its servers, or L{None} for plaintext.
    @ivar tcpOnly: every server is a TCP C{host:port} (none C{unix:}), so
        a passthrough connection to it can be spliced whichever server is
        picked: the hub may keep such a connection
        (L{gateway.connection.hubaccept}).
    """

    name: str
    chooser: IServerChooser
    tries: int
    tls: UpstreamTLSPolicy | None = None
    tcpOnly: bool = False


@attrs.frozen
class Timeouts:
    connect: float
    idle: float


@implementer(IHalfCloseableProtocol, ITLSEvents)
class UpstreamProtocol(AttemptProtocol):
    """
    The upstream side of a session.  With re-encryption it owns the TLS
    layer and reports the upstream as ready only once the handshake is done
    and the certificate verified: not one byte of the client's plaintext
    goes out before that.

    With an opening (L{gateway.connection.strategy.IUpstreamOpening}: a protocol
    whose upstream connection starts with an exchange before TLS, as
    the PostgreSQL strategy does), its request goes on the raw socket
    first (after the PROXY header, which must come first), then TLS only
    once the server's answer says so.  Any other answer makes the server
    unusable for this connection, like a refused connect: the session
    tries the next one.

    @ivar _answer: the opening, while its answer is awaited.
    @ivar _answerTimer: bounds that wait by C{connect_timeout}: a server
        that accepts and says nothing is as unusable as one that does not
        accept.
    """

    def __init__(
        self,
        session: Session,
        server: ServerConfig,
        tls: UpstreamTLSPolicy | None,
    ) -> None:
        self._session = session
        self.server = server
        self._tlsPolicy = tls
        self._tls: TLSTransport | None = None
        self._relay: IRelay | None = None
        self._answer: IUpstreamOpening | None = None
        self._answerTimer: Deadline | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        opening = self._session.opening
        self._session.sendProxyHeader(
            relayTransport(self.transport),
            raw=self._tlsPolicy is not None or opening is not None,
        )
        if opening is not None:
            self._answer = answer = opening()
            self._answerTimer = later(
                self._session.clock,
                self._session.timeouts.connect,
                self._answerTimedOut,
            )
            self.transport.write(answer.request)
            return
        self._secure()

    def _secure(self) -> None:
        """
        The raw connection is ready for what goes first: the relay (when
        the gateway does no TLS towards this server) or the gateway's TLS
        handshake.
        """
        assert self.transport is not None
        if self._tlsPolicy is None:
            self._relay = self._session.upstreamReady(
                self, relayTransport(self.transport), self.server
            )
            return
        self._tls = TLSTransport(
            self._tlsPolicy.connectionFor(self.server),
            self.transport,  # type: ignore[arg-type]
            self,
        )
        self._tls.startHandshake()

    def _readAnswer(self, data: bytes) -> None:
        assert self._answer is not None
        answer = self._answer.feed(data)
        if answer is None:
            return
        self._answer = None
        self._stopAnswerTimer()
        if isinstance(answer, str):
            self._unusable(answer)
            return
        self._secure()

    def _answerTimedOut(self) -> None:
        self._answerTimer = None
        assert self._answer is not None
        self._unusable(self._answer.describeTimeout(self._session.timeouts.connect))

    def _stopAnswerTimer(self) -> None:
        cancel(self._answerTimer)
        self._answerTimer = None

    def _unusable(self, reason: str) -> None:
        assert self.transport is not None
        self._answer = None
        self._stopAnswerTimer()
        self._session.upstreamRefused(self, reason)
        relayTransport(self.transport).abortConnection()

    # TLSEvents, with re-encryption

    def tlsHandshakeDone(self) -> None:
        assert self._tls is not None
        assert self._tlsPolicy is not None
        problem = self._tlsPolicy.verify(self._tls.connection, self.server)
        if problem is not None:
            self.tlsHandshakeFailed(problem)
            return
        self._relay = self._session.upstreamReady(self, self._tls, self.server)

    def tlsHandshakeFailed(self, reason: str) -> None:
        assert self.transport is not None
        self._session.upstreamRefused(self, f"TLS: {reason}")
        relayTransport(self.transport).abortConnection()

    def tlsData(self, data: bytes) -> None:
        assert self._relay is not None
        watcher = self._session.upstreamWatcher
        if watcher is not None:
            watcher(data)
        self._relay.upstreamData(data)

    def tlsReadClosed(self) -> None:
        if self._relay is not None:
            self._relay.upstreamReadClosed()

    def tlsError(self, reason: str) -> None:
        self._session.upstreamTLSError(self.server, reason)

    # transport events

    def dataReceived(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.ciphertextReceived(data)
        elif self._relay is not None:
            watcher = self._session.upstreamWatcher
            if watcher is not None:
                watcher(data)
            self._relay.upstreamData(data)
        elif self._answer is not None:
            self._readAnswer(data)

    def readConnectionLost(self) -> None:
        if self._tls is not None:
            self._tls.ciphertextEnded()
        elif self._relay is not None:
            self._relay.upstreamReadClosed()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopAnswerTimer()
        if self._relay is not None:
            self._relay.upstreamLost(reason)
        else:
            # Closed before it became ready (awaiting the opening's answer,
            # during the TLS handshake, or after a failed one, which the
            # session then ignores).
            self._session.upstreamRefused(self, reason.getErrorMessage())


@implementer(ITerminatedSession)
class Session:
    """
    @ivar relay: the relay, once the upstream is ready.
    @ivar opening: makes each upstream connection's opening (see
        L{UpstreamProtocol}), or L{None} for none: the client protocol's
        (L{gateway.connection.strategy.IProtocolStrategy.opening}).
    @ivar upstreamWatcher: called with each chunk of what the upstream sends
        the client, at the plaintext level, before it is relayed; L{None}
        when nothing watches (the usual case: the hot path pays one
        attribute read).  It may set this back to L{None} once it has seen
        what it wanted.  Chunks reach it only through the portable relay,
        so it is for terminated connections (the splice relay never shows
        a byte to Python).
    @ivar _relaySetting: the listener's C{relay} key, for
        L{gateway.connection.relays.startRelay}.
    @ivar _proxyHeader: builds the PROXY header for each upstream
        connection, or L{None} without C{proxy_protocol}.  Built when the
        connection is made, not before: a terminated connection's TLS
        facts exist only once its handshake is done.
    @ivar _client: the client's plaintext transport (raw TCP in
        passthrough, TLS in termination).
    @ivar _pending: client bytes to replay to the upstream before relaying
        (the ClientHello in passthrough; early plaintext in termination).
    @ivar _tries: the servers tried for this connection, and the tries
        left (L{gateway.connection.servertries.ServerTries}).
    @ivar _picked: the server of the current attempt or connection, until
        the chooser is told it is over (C{connectFailed} or C{released}),
        so its active-connection count is exact.
    @ivar _failureAlert: what the client is sent when no server can be
        reached, or L{None}: the TLS alert of a passthrough client
        (C{internal_error}), or a function of the last error giving the
        bytes (a terminated PostgreSQL client's C{ErrorResponse}).
    @ivar _attempt: the upstream connection being made (connecting or in
        its TLS handshake), so a client that leaves can cancel it and late
        reports from abandoned attempts can be told apart.
    @ivar _dialer: connects to each server tried, chosen once
        (L{gateway.connection.dialers.chooseDialer}).
    @ivar _clientBytes: counts what the session and its relay write to
        the client (L{gateway.rules.clientbytes}): the owner's count, or
        L{None} when the client is a TLS layer, which counts the
        ciphertext they become.  What the client sends is counted by the
        owner, as it receives it.
    @ivar _onEnd: called when the session is over, before its owner is
        told (L{ConnectionOwner.stageEnded}), which stamps the end and has
        the connection logged.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        client: RelayTransport,
        record: ConnectionRecord,
        owner: ConnectionOwner,
        upstream: UpstreamRuntime,
        clientKey: str,
        timeouts: Timeouts,
        *,
        clientBytes: ClientBytes | None,
        onEnd: Callable[[], None] | None = None,
        relay: str = "portable",
        proxyHeader: Callable[[], bytes] | None = None,
        opening: Callable[[], IUpstreamOpening] | None = None,
        failureAlert: FailureNotice | None = None,
    ) -> None:
        self.relay: IRelay | None = None
        self._failureAlert = failureAlert
        self.opening = opening
        self.upstreamWatcher: Callable[[bytes], None] | None = None
        self._relaySetting = relay
        self._proxyHeader = proxyHeader
        self._reactor = reactor
        self._clock = clock
        self._client = client
        self._record = record
        self._owner = owner
        self._upstream = upstream
        self._clientKey = clientKey
        self._timeouts = timeouts
        self._onEnd = onEnd
        self._ended = False
        self._clientBytes = clientBytes
        self._pending: list[bytes] = []
        self._tries = ServerTries(upstream.chooser, upstream.tries, clientKey)
        self._picked: ServerConfig | None = None
        self._connector: Stoppable | None = None
        self._attempt: AttemptProtocol | SplicedAttempt | None = None
        self._dialer = chooseDialer(
            reactor,
            clock,
            client,
            relay=relay,
            raw=upstream.tls is not None or opening is not None,
            timeout=timeouts.connect,
        )
        self._clientEOF = False
        self._clientGone = False

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    @property
    def server(self) -> ServerConfig | None:
        """
        The server of the current attempt or connection: once the upstream
        is ready, the one the relay talks to.
        """
        return self._picked

    def sendProxyHeader(self, upstream: RelayTransport, *, raw: bool) -> None:
        """
        Start a new upstream connection with the listener's PROXY protocol
        header (C{proxy_protocol}), if it has one.

        @param raw: the connection is about to start TLS, so the header is
            written on the raw transport now, before the handshake.
            Otherwise it goes ahead of the replayed client bytes rather
            than to the transport, so that a splice relay, which sends
            those first and itself, keeps it first as well.
        """
        if self._proxyHeader is None:
            return
        header = self._proxyHeader()
        if raw:
            upstream.write(header)
        else:
            self._pending.insert(0, header)

    def connect(self, pending: bytes = b"") -> None:
        if pending:
            self._pending.append(pending)
        self._client.pauseProducing()
        self._owner.report(Event.CONNECT)
        self._connectNext()

    def _connectNext(self) -> None:
        server = self._tries.next()
        if server is None:
            self._unavailable()
            return
        self._picked = server
        self._record.upstream = server.address
        self._attempt, self._connector = self._dialer.dial(self, server)

    # what the dialer reports (gateway.connection.dialers.DialingSession)

    def newAttempt(self, server: ServerConfig) -> UpstreamProtocol:
        """
        The protocol of a connection to C{server} that Twisted will carry.
        """
        return UpstreamProtocol(self, server, self._upstream.tls)

    def connectorDone(self) -> None:
        """
        The connect in progress completed; nothing is left to stop.
        """
        self._connector = None

    def splicedConnected(self, attempt: SplicedAttempt, sock: socket.socket) -> None:
        """
        The splice dialer connected the upstream socket: the splice relay
        takes it, as L{upstreamReady} starts a relay for a transport.
        """
        self._attempt = self._connector = None
        self._upstream.chooser.connectSucceeded(attempt.server)
        if self._clientGone:
            sock.close()
            self._finish()
            return
        if self._proxyHeader is not None:
            self._pending.insert(0, self._proxyHeader())
        pending, self._pending = self._pending, []
        why = spliceUnavailable(self._relaySetting, self._client, None)
        if why is not None:
            # Checked when the dialer was chosen (spliceHub), and nothing
            # is written to a passthrough client before its relay: a bug.
            sock.close()
            self._owner.report(
                Event.UPSTREAM_UNAVAILABLE, f"gateway error: cannot splice: {why}"
            )
            self._client.abortConnection()
            return
        self._owner.report(Event.CONNECTED)
        self.relay = relay = startSpliceRelay(
            self._relaySetting,
            self._reactor,
            self._clock,
            self._client,
            sock,
            self._record,
            self._owner,
            self._timeouts.idle,
            self._finish,
            pending,
        )
        if self._clientEOF:
            relay.clientReadClosed()

    def connectFailed(
        self, attempt: AttemptProtocol | SplicedAttempt, reason: Failure
    ) -> None:
        local = localError(reason)
        if local is None:
            self.upstreamRefused(attempt, reason.getErrorMessage())
            return
        if attempt is not self._attempt:
            return
        # The gateway's own resources ran out, not the server: it does not
        # count against the server, and no other server is tried.
        # The server is released, not failed; the client's close finishes.
        self._attempt = self._connector = None
        self._tries.failedLocally(attempt.server, local)
        if self._clientGone:
            self._finish()
            return
        self._unavailable()

    def _unavailable(self) -> None:
        """
        No server can take the connection: log it, tell the client in its
        own protocol if it has a way to hear it, and close.
        """
        self._owner.report(Event.UPSTREAM_UNAVAILABLE, self._tries.lastError)
        notice = self._failureAlert
        if callable(notice):
            notice = notice(self._tries.lastError)
        if notice is not None:
            # Nothing was relayed yet: the client still waits for the
            # server's first words, so it can be told instead.
            if self._clientBytes is not None:
                self._clientBytes.sent(len(notice))
            self._client.write(notice)
        self._client.loseConnection()

    def upstreamRefused(
        self, attempt: AttemptProtocol | SplicedAttempt, reason: str
    ) -> None:
        """
        The server of C{attempt} cannot take this connection (refused,
        timed out, closed or failed TLS verification before it was ready):
        try the next one.  Reports about an attempt already given up on are
        ignored.
        """
        if attempt is not self._attempt:
            return
        self._attempt = self._connector = None
        if self._clientGone:
            self._finish()
            return
        self._picked = None
        self._tries.failed(attempt.server, reason)
        self._connectNext()

    def upstreamTLSError(self, server: ServerConfig, reason: str) -> None:
        """
        The upstream broke TLS after the handshake (re-encryption): its
        connection is closing, and the relay ends both sides.
        """
        self._owner.report(Event.TLS_ERROR, f"upstream {server.address}: {reason}")
        self._record.extra.setdefault("closed_by", "upstream_tls_error")

    def upstreamReady(
        self, protocol: UpstreamProtocol, upstream: RelayTransport, server: ServerConfig
    ) -> IRelay:
        self._attempt = self._connector = None
        self._upstream.chooser.connectSucceeded(server)
        if self._clientGone:
            upstream.loseConnection()
            self.relay = discard = _Discard(self._finish)
            return discard
        pending, self._pending = self._pending, []
        self._owner.report(Event.CONNECTED)
        self.relay = startRelay(
            self._relaySetting,
            self._reactor,
            self._clock,
            self._client,
            upstream,
            self._record,
            self._owner,
            self._timeouts.idle,
            self._finish,
            pending,
            clientBytes=self._clientBytes,
            upstreamWatched=self.upstreamWatcher is not None,
        )
        if self._clientEOF:
            self.relay.clientReadClosed()
        return self.relay

    # client events (plaintext level)

    def clientData(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.clientData(data)
        else:
            self._pending.append(data)

    def clientReadClosed(self) -> None:
        if self.relay is not None:
            self.relay.clientReadClosed()
        else:
            self._clientEOF = True

    def clientLost(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.clientLost(reason)
            return
        self._clientGone = True
        attempt = self._attempt
        if attempt is None:
            self._finish()
        elif attempt.transport is None:
            # Still connecting: stop; the failed connect then finishes.
            assert self._connector is not None
            self._connector.stopConnecting()
        else:
            # Connected, TLS handshake in progress: its close finishes.
            relayTransport(attempt.transport).abortConnection()

    def shutdown(self) -> None:
        if self.relay is not None:
            self.relay.abort(Event.SHUT_DOWN, "gateway stopped")
        else:
            self._owner.report(Event.SHUT_DOWN, "gateway stopped")
            self._client.abortConnection()

    def _finish(self) -> None:
        if self._picked is not None:
            picked, self._picked = self._picked, None
            self._upstream.chooser.released(picked)
        if not self._ended:
            self._ended = True
            if self._onEnd is not None:
                self._onEnd()
            self._owner.stageEnded()


@implementer(IRelay)
class _Discard:
    """
    Stands in for the relay when the client left before the upstream
    became ready: the upstream connection is closed unused.  The client
    side is gone already, so its events cannot come.
    """

    def __init__(self, finish: Callable[[], None]) -> None:
        self._finish = finish

    def clientData(self, data: bytes) -> None:
        pass

    def clientReadClosed(self) -> None:
        pass

    def clientLost(self, reason: Failure) -> None:
        pass

    def abort(self, event: Event, reason: str) -> None:
        pass

    def upstreamData(self, data: bytes) -> None:
        pass

    def upstreamReadClosed(self) -> None:
        pass

    def upstreamLost(self, reason: Failure) -> None:
        self._finish()
