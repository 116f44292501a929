"""
The MySQL side of a C{protocol = mysql} listener, at run time.

L{gateway.wire.mysql} reads and writes the packets; this module decides what the
gateway does with them.  A MySQL client cannot start with a ClientHello:
the server speaks first, and TLS starts inside the protocol.  So a
C{protocol = mysql} connection goes, in order:

  1. B{greeting}: the gateway connects to a server of the greeting upstream
     (the listener's C{upstream}, or its C{default} route's, or its first
     route's), with retries and failover as for any upstream, reads its
     greeting and sends it to the client with C{CLIENT_SSL} set;
  2. B{SSLRequest}: the client asks for TLS (or, without
     C{allow_plaintext}, is refused with an C{ERR} packet if it logs in
     without it);
  3. B{ClientHello}: read, routed and answered by the gateway's own
     handshake (L{gateway.connection.terminate.TerminationStage}, certificate by SNI);
  4. B{login}: the client's C{HandshakeResponse41}, read inside TLS, goes to
     the server that sent the greeting, renumbered (the server never saw
     the client's C{SSLRequest}) and, with C{tls = on}, after the gateway's
     own C{SSLRequest} and verified TLS handshake to it.  When the route
     chose another upstream, the client's password hash is useless there
     (it was computed with the first server's scramble): the gateway sends
     the chosen server the login with an auth plugin name no account uses
     and no auth data, which makes the server answer with an
     C{AuthSwitchRequest} carrying its own scramble; the client computes
     its answer with it, so it logs in to the server it is talking to with
     its own password, whatever that server's plugin;
  5. B{authentication}: the packets of the exchange are relayed with their
     sequence numbers shifted, until the server's C{OK} or C{ERR} (which the
     client gets as the server wrote it: a wrong password is the server's
     own access-denied error);
  6. B{relay}: bytes both ways, unread, as for every terminated connection.

@var SWITCH_PLUGIN: the auth plugin name the gateway puts in a re-routed
    login: no server has a plugin by that name, so every server asks the
    client to switch to the account's own plugin.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IConnector,
    IHalfCloseableProtocol,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.preread import IStage
from gateway.connection.relay import IRelay
from gateway.connection.relays import startRelay
from gateway.connection.session import Timeouts, UpstreamRuntime
from gateway.connection.terminate import ITerminatedSession, TerminationStage
from gateway.connection.timers import Deadline, cancel, later
from gateway.connection.upstream import connectServer
from gateway.core.transports import RelayTransport, relayTransport
from gateway.core.vocabulary import Action, Status
from gateway.protocols.strategy import IProtocolStrategy
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.decision import deniedFingerprint, noRouteReason
from gateway.rules.lifecycle import ConnectionOwner, Event
from gateway.tls.transport import ITLSEvents, TLSTransport
from gateway.wire.clienthello import ClientHello, ClientHelloError, ClientHelloReader
from gateway.wire.mysql import (
    CLIENT_PLUGIN_AUTH,
    CLIENT_SSL,
    NEED_MORE,
    ErrPacket,
    Greeting,
    HandshakeResponse,
    MySQLError,
    OkPacket,
    Packet,
    PacketReader,
    SSLRequest,
    encodePacket,
    errPacket,
    parseAuthReply,
    parseClientStart,
    parseGreeting,
    parseHandshakeResponse,
)

__all__ = [
    "MYSQL",
    "SWITCH_PLUGIN",
    "MySQLConnection",
    "MySQLStrategy",
    "Refusal",
    "Wiring",
]

SWITCH_PLUGIN = "tlsgateway_reauthenticate"

ER_UNKNOWN_ERROR = 1105
"""The server's generic error code: for the gateway's own refusals."""

ER_SECURE_TRANSPORT_REQUIRED = 3159
"""MySQL's code for a plaintext login where TLS is required."""

_log = Logger()


@attrs.frozen
class Refusal:
    """
    The listener refuses a connection: C{status} and C{reason} for the
    access log.
    """

    status: str
    reason: str


@attrs.frozen
class Wiring:
    """
    What one C{protocol = mysql} connection needs from its listener.

    @ivar greetings: the upstreams whose servers may greet the client, in
        the order they are tried: the default route's (or C{upstream}, or
        the first route's) first, then the listener's other upstreams, so
        that one dead server never takes a whole listener down.
    @ivar choose: the upstream for a ClientHello (or, for a plaintext
        client, for L{None}: C{upstream} or the C{default} route), or a
        L{Refusal} (C{no_route}, C{denied}).
    @ivar contextFor: the termination context for a server name.
    @ivar describe: the handshake facts for the access log.
    @ivar proxyHeader: the PROXY header builder of an upstream connection
        (for a server name and client TLS connection known so far), or
        L{None} without C{proxy_protocol}.
    @ivar ended: the listener's end of the connection (logs it); called
        once.
    """

    reactor: IReactorTCP
    clock: IReactorTime
    timeouts: Timeouts
    prereadTimeout: float
    maxHello: int
    clientKey: str
    allowPlaintext: bool
    greetings: tuple[UpstreamRuntime, ...]
    choose: Callable[[ClientHello | None], UpstreamRuntime | Refusal]
    contextFor: Callable[[str | None], SSL.Context]
    describe: Callable[[SSL.Connection], dict[str, Any]]
    handshakeTimed: Callable[[float], None]
    proxyHeader: Callable[
        [str | None, SSL.Connection | None], Callable[[], bytes] | None
    ]
    ended: Callable[[], None]


class _State(enum.Enum):
    GREETING = "waiting for the server's greeting"
    REQUEST = "waiting for the client's SSLRequest"
    HELLO = "reading the client's ClientHello"
    HANDSHAKE = "in the client's TLS handshake"
    LOGIN = "waiting for the client's login"
    DIALING = "connecting to the routed server"
    AUTH = "relaying the authentication"
    RELAY = "relaying"
    OVER = "over"


class _Dialer:
    """
    Reach a server of one upstream that greets: connect, send the PROXY
    header, read the greeting; on failure (refused, timed out, closed, no
    MySQL greeting) try the next server, as L{gateway.connection.session.Session}
    does, while C{next_upstream_tries} lasts.
    """

    def __init__(
        self,
        connection: MySQLConnection,
        upstream: UpstreamRuntime,
        proxyHeader: Callable[[], bytes] | None,
    ) -> None:
        self._connection = connection
        self.upstream = upstream
        self._proxyHeader = proxyHeader
        self._triesLeft = upstream.tries
        self._tried: frozenset[ServerConfig] = frozenset()
        self._attempt: ServerLeg | None = None
        self._connector: IConnector | None = None
        self._lastError = "no server available"
        self._cancelled = False

    def start(self) -> None:
        wiring = self._connection.wiring
        server = (
            self.upstream.chooser.pick(wiring.clientKey, self._tried)
            if self._triesLeft > 0
            else None
        )
        if server is None:
            self._connection.dialFailed(self, self._lastError)
            return
        self._triesLeft -= 1
        self._tried |= {server}
        leg = self._attempt = ServerLeg(self, server, self._proxyHeader)
        self._connector = connectServer(
            wiring.reactor,
            server,
            leg,
            wiring.timeouts.connect,
            lambda reason: self.legFailed(leg, reason.getErrorMessage()),
        )

    def legFailed(self, leg: ServerLeg, reason: str) -> None:
        if leg is not self._attempt:
            return
        self._attempt = self._connector = None
        if self._cancelled:
            return
        self.upstream.chooser.connectFailed(leg.server)
        self._lastError = f"{leg.server.address}: {reason}"
        self.start()

    def legGreeted(self, leg: ServerLeg) -> None:
        self._attempt = self._connector = None
        self.upstream.chooser.connectSucceeded(leg.server)
        leg.owner = self._connection
        self._connection.greeted(self, leg)

    def released(self, leg: ServerLeg) -> None:
        self.upstream.chooser.released(leg.server)

    def cancel(self) -> None:
        self._cancelled = True
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        if attempt.transport is None:
            if self._connector is not None:
                self._connector.stopConnecting()
        else:
            relayTransport(attempt.transport).abortConnection()
        self._connector = None

    @property
    def wiring(self) -> Wiring:
        return self._connection.wiring


class _LegState(enum.Enum):
    GREETING = "greeting"
    GREETED = "greeted"
    SECURING = "securing"
    PACKETS = "packets"
    RELAY = "relay"
    CLOSED = "closed"


@implementer(IHalfCloseableProtocol, ITLSEvents)
class ServerLeg(Protocol):
    """
    One connection to one MySQL server: the greeting, then (on demand) the
    gateway's own C{SSLRequest} and verified TLS, then packets for the
    authentication, then the relay.

    @ivar owner: the connection this leg serves once it greeted (before
        that, its dialer decides what a failure means).
    @ivar greeting: the server's greeting, once read.
    """

    def __init__(
        self,
        dialer: _Dialer,
        server: ServerConfig,
        proxyHeader: Callable[[], bytes] | None,
    ) -> None:
        self._dialer = dialer
        self.server = server
        self._proxyHeader = proxyHeader
        self.owner: MySQLConnection | None = None
        self.greeting: Greeting | None = None
        self._state = _LegState.GREETING
        self._reader = PacketReader()
        self._timer: Deadline | None = None
        self._tls: TLSTransport | None = None
        self._secured: Callable[[], None] | None = None
        self._relay: IRelay | None = None

    @property
    def upstream(self) -> UpstreamRuntime:
        return self._dialer.upstream

    @property
    def encrypted(self) -> bool:
        """The gateway re-encrypts to this server (C{tls = on})."""
        return self.upstream.tls is not None

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._proxyHeader is not None:
            self.transport.write(self._proxyHeader())
        wiring = self._dialer.wiring
        self._timer = later(
            wiring.clock, wiring.timeouts.connect, self._greetingTimedOut
        )

    def _greetingTimedOut(self) -> None:
        self._timer = None
        self._unusable(f"no greeting within {self._dialer.wiring.timeouts.connect:g}s")

    def _unusable(self, reason: str) -> None:
        """
        This server cannot take the connection: before it greeted, the
        dialer tries the next; after, the connection fails.
        """
        self._stopTimer()
        state, self._state = self._state, _LegState.CLOSED
        if self.transport is not None:
            relayTransport(self.transport).abortConnection()
        if state is _LegState.GREETING:
            self._dialer.legFailed(self, reason)
        elif state is not _LegState.CLOSED and self.owner is not None:
            self.owner.legFailed(self, reason)

    def abort(self) -> None:
        """
        Close this leg unused (the client left, or was routed elsewhere).
        """
        self._stopTimer()
        self._state = _LegState.CLOSED
        self.owner = None
        if self.transport is not None:
            relayTransport(self.transport).abortConnection()

    def secure(self, sslRequest: bytes, then: Callable[[], None]) -> None:
        """
        Send the server the gateway's own C{SSLRequest}, do a verified TLS
        handshake, then call C{then}: nothing of the client's login goes
        out before that.
        """
        assert self.transport is not None
        tls = self.upstream.tls
        assert tls is not None
        self._state = _LegState.SECURING
        self._secured = then
        self.transport.write(encodePacket(1, sslRequest))
        self._tls = TLSTransport(
            tls.connectionFor(self.server),
            relayTransport(self.transport),
            self,
        )
        self._tls.startHandshake()

    def sendPacket(self, sequence: int, payload: bytes) -> None:
        self._writer.write(encodePacket(sequence, payload))

    @property
    def _writer(self) -> RelayTransport | TLSTransport:
        return self._tls if self._tls is not None else relayTransport(self.transport)

    def relayTo(self, relay: IRelay) -> None:
        """
        Hand this leg to the relay: what the server sent after the login's
        answer goes to it first.
        """
        self._state = _LegState.RELAY
        self._relay = relay
        rest = self._reader.rest()
        if rest:
            relay.upstreamData(rest)

    @property
    def transportForRelay(self) -> RelayTransport | TLSTransport:
        """The transport the relay writes to: the TLS layer when re-encrypting."""
        return self._writer

    # TLSEvents, with re-encryption

    def tlsHandshakeDone(self) -> None:
        tls = self.upstream.tls
        assert tls is not None
        assert self._tls is not None
        problem = tls.verify(self._tls.connection, self.server)
        if problem is not None:
            self._unusable(f"TLS: {problem}")
            return
        self._state = _LegState.PACKETS
        then, self._secured = self._secured, None
        if then is not None:
            then()

    def tlsHandshakeFailed(self, reason: str) -> None:
        self._unusable(f"TLS: {reason}")

    def tlsData(self, data: bytes) -> None:
        self._plaintext(data)

    def tlsReadClosed(self) -> None:
        if self._relay is not None:
            self._relay.upstreamReadClosed()
        else:
            self._unusable("the server closed the connection")

    def tlsError(self, reason: str) -> None:
        # The TLS layer sent the alert and closes the socket, which ends
        # the leg as any close does; the cause is recorded first.
        if self.owner is not None:
            self.owner.legTLSError(self, reason)

    # transport events

    def dataReceived(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.ciphertextReceived(data)
        else:
            self._plaintext(data)

    def _plaintext(self, data: bytes) -> None:
        state = self._state
        if state is _LegState.RELAY:
            assert self._relay is not None
            self._relay.upstreamData(data)
            return
        if state is _LegState.GREETED or state is _LegState.SECURING:
            self._unusable(
                f"the server sent {len(data)} bytes after its greeting, before "
                "the login"
                if state is _LegState.GREETED
                else "the server sent plaintext before its TLS handshake"
            )
            return
        if state is _LegState.CLOSED:
            return
        self._reader.feed(data)
        while self._state is _LegState.GREETING or self._state is _LegState.PACKETS:
            try:
                packet = self._reader.next()
            except MySQLError as e:
                self._unusable(f"mysql {e.reason}: {e}")
                return
            if packet is NEED_MORE:
                return
            if self._state is _LegState.GREETING:
                self._greeted(packet)
            else:
                assert self.owner is not None
                self.owner.serverPacket(self, packet)

    def _greeted(self, packet: Packet) -> None:
        self._stopTimer()
        try:
            if packet.sequence != 0:
                raise MySQLError(f"greeting with sequence number {packet.sequence}")
            greeting = parseGreeting(packet.payload)
        except MySQLError as e:
            self._unusable(f"not a MySQL greeting: {e}")
            return
        if self._reader.rest():
            self._unusable("the server sent bytes after its greeting, before the login")
            return
        self.greeting = greeting
        self._state = _LegState.GREETED
        self._dialer.legGreeted(self)

    def startPackets(self) -> None:
        """The login went out: read the server's answers packet by packet."""
        self._state = _LegState.PACKETS

    def readConnectionLost(self) -> None:
        if self._tls is not None:
            self._tls.ciphertextEnded()
        elif self._relay is not None:
            self._relay.upstreamReadClosed()
        else:
            self._unusable("the server closed the connection")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        if self.greeting is not None:
            self._dialer.released(self)
        if self._relay is not None:
            self._relay.upstreamLost(reason)
            return
        if self._state is not _LegState.CLOSED:
            self._unusable(reason.getErrorMessage())

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None


@implementer(ITerminatedSession)
class _TerminatedLogin:
    """
    The session a L{TerminationStage} drives: the connection's inside-TLS
    events, forwarded to the L{MySQLConnection} under their own names.
    """

    def __init__(self, connection: MySQLConnection) -> None:
        self._connection = connection

    def connect(self) -> None:
        self._connection.handshakeDone()

    def clientData(self, data: bytes) -> None:
        self._connection.clientPlaintext(data)

    def clientReadClosed(self) -> None:
        self._connection.clientReadClosed()

    def clientLost(self, reason: Failure) -> None:
        self._connection.clientLost(reason)

    def shutdown(self) -> None:
        self._connection.stop()


@implementer(IStage)
class MySQLConnection:
    """
    One client connection of a C{protocol = mysql} listener, from the
    greeting to the relay: the stage L{gateway.connection.preread.PrereadProtocol}
    hands the connection to as soon as it is accepted.

    @ivar _client: the client's plaintext side: the TLS layer once the
        handshake is done, the raw transport for a plaintext client.
    @ivar _offset: client sequence number minus server sequence number
        during the authentication: the client counted its C{SSLRequest},
        the server counts the gateway's (or none).
    @ivar _nextSequence: the sequence number of the next packet the
        gateway itself would write to the client (an C{ERR}).
    """

    def __init__(
        self,
        wiring: Wiring,
        transport: RelayTransport,
        record: ConnectionRecord,
        owner: ConnectionOwner,
    ) -> None:
        self.wiring = wiring
        self._transport = transport
        self._record = record
        self._owner = owner
        self._state = _State.GREETING
        self._early = b""
        self._reader = PacketReader()
        self._hello = ClientHelloReader(wiring.maxHello)
        self._serverName: str | None = None
        self._timer: Deadline | None = None
        self._dialer: _Dialer | None = None
        self._greetingLeg: ServerLeg | None = None
        self._leg: ServerLeg | None = None
        self._termination: TerminationStage | None = None
        self._client: RelayTransport | TLSTransport = transport
        self._target: UpstreamRuntime | None = None
        self._login: HandshakeResponse | None = None
        self._loginSequence = 0
        self._offset = 0
        self._nextSequence = 0
        self._relay: IRelay | None = None
        self._ended = False
        self._greetingsLeft = list(wiring.greetings)
        self._greetingErrors: list[str] = []

    # -- the client's raw transport (a preread Stage) ------------------------

    def start(self, buffered: bytes) -> None:
        self._owner.report(Event.CONNECT)
        self._early = buffered
        self._dialGreeting()

    def dataReceived(self, data: bytes) -> None:
        if self._termination is not None:
            self._termination.dataReceived(data)
            return
        if self._relay is not None:
            self._relay.clientData(data)
            return
        self._record.bytesIn += len(data)
        if self._state is _State.GREETING:
            self._early += data
        elif self._state is _State.REQUEST:
            self._readRequest(data)
        elif self._state is _State.HELLO:
            self._readHello(data)
        elif self._state in (_State.LOGIN, _State.AUTH, _State.DIALING):
            self._clientBytes(data)

    def readConnectionLost(self) -> None:
        if self._termination is not None:
            self._termination.readConnectionLost()
        else:
            self.clientReadClosed()

    def connectionLost(self, reason: Failure) -> None:
        if self._termination is not None:
            self._termination.connectionLost(reason)
        else:
            self.clientLost(reason)

    def shutdown(self) -> None:
        if self._termination is not None:
            self._termination.shutdown()
        else:
            self.stop()

    # -- greeting ------------------------------------------------------------

    def _dial(
        self, upstream: UpstreamRuntime, proxyHeader: Callable[[], bytes] | None
    ) -> None:
        self._dialer = _Dialer(self, upstream, proxyHeader)
        self._dialer.start()

    def _dialGreeting(self) -> None:
        """
        Dial the next upstream that may greet the client (its servers in
        turn, as the dialer does): any server of the listener's upstreams
        can, since the client is re-authenticated against the one its
        server name routes to.
        """
        upstream = self._greetingsLeft.pop(0)
        self._dial(upstream, self.wiring.proxyHeader(None, None))

    def dialFailed(self, dialer: _Dialer, reason: str) -> None:
        if dialer is not self._dialer:
            return
        self._dialer = None
        if self._state is _State.GREETING:
            self._greetingErrors.append(f"upstream {dialer.upstream.name}: {reason}")
            if self._greetingsLeft:
                self._dialGreeting()
                return
            names = ", ".join(repr(u.name) for u in self.wiring.greetings)
            self._refuse(
                Status.UPSTREAM_UNAVAILABLE,
                "; ".join(self._greetingErrors),
                f"tlsgateway: no MySQL server of upstream {names} is available",
                sequence=self._nextSequence,
            )
            return
        self._refuse(
            Status.UPSTREAM_UNAVAILABLE,
            reason,
            f"tlsgateway: no MySQL server of upstream {dialer.upstream.name!r} is"
            " available",
            sequence=self._nextSequence,
        )

    def greeted(self, dialer: _Dialer, leg: ServerLeg) -> None:
        if dialer is not self._dialer or self._state is _State.OVER:
            leg.abort()
            return
        self._dialer = None
        self._record.upstream = leg.server.address
        if self._state is _State.GREETING:
            self._greetingLeg = leg
            greeting = leg.greeting
            assert greeting is not None
            payload = greeting.withCapabilities(greeting.capabilities | CLIENT_SSL)
            self._writeClient(encodePacket(0, payload))
            self._state = _State.REQUEST
            self._startTimer(self._requestTimedOut)
            early, self._early = self._early, b""
            if early:
                self._readRequest(early)
            return
        assert self._state is _State.DIALING
        self._sendLogin(leg, switch=True)

    def _requestTimedOut(self) -> None:
        self._timer = None
        what = "SSLRequest" if self._state is _State.REQUEST else "ClientHello"
        self._refuse(
            Status.PREREAD_TIMEOUT,
            f"no complete {what} {self.wiring.prereadTimeout:g}s after the greeting",
        )

    # -- before TLS ------------------------------------------------------------

    def _readRequest(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            packet = self._reader.next()
            if packet is NEED_MORE:
                return
            if packet.sequence != 1:
                raise MySQLError(
                    f"first client packet with sequence number {packet.sequence}"
                )
            start = parseClientStart(packet.payload)
        except MySQLError as e:
            self._refuse(
                Status.BAD_CLIENT_HELLO,
                f"mysql {e.reason}: {e}",
                f"tlsgateway: bad handshake packet: {e}",
                sequence=2,
            )
            return
        if isinstance(start, SSLRequest):
            self._state = _State.HELLO
            rest = self._reader.rest()
            if rest:
                self._readHello(rest)
            return
        self._plaintextLogin(start, packet.sequence)

    def _plaintextLogin(self, login: HandshakeResponse, sequence: int) -> None:
        self._stopTimer()
        self._noteLogin(login)
        if not self.wiring.allowPlaintext:
            self._refuse(
                Status.PLAINTEXT_REFUSED,
                "client logged in without TLS (allow_plaintext is off)",
                "tlsgateway accepts MySQL connections over TLS only: connect with"
                " ssl-mode=REQUIRED or stronger (allow_plaintext is off)",
                sequence=sequence + 1,
                code=ER_SECURE_TRANSPORT_REQUIRED,
            )
            return
        self._record.action = Action.TCP
        choice = self.wiring.choose(None)
        if isinstance(choice, Refusal):
            self._refuse(
                choice.status,
                f"plaintext login: {choice.reason}",
                f"tlsgateway: {choice.reason}",
                sequence=sequence + 1,
            )
            return
        self._target = choice
        self._state = _State.LOGIN
        self._loginReceived(login, sequence)

    def _readHello(self, data: bytes) -> None:
        try:
            hello = self._hello.feed(data)
        except ClientHelloError as e:
            self._refuse(Status.BAD_CLIENT_HELLO, f"{e.reason}: {e}")
            return
        if hello is NEED_MORE:
            return
        self._stopTimer()
        record = self._record
        record.sni = self._serverName = hello.serverName
        record.alpn = hello.alpn
        record.hello = hello
        choice = self.wiring.choose(hello)
        if isinstance(choice, Refusal):
            self._refuse(choice.status, choice.reason)
            return
        self._target = choice
        record.action = Action.TERMINATE
        self._state = _State.HANDSHAKE
        wiring = self.wiring
        self._termination = TerminationStage(
            wiring.clock,
            self._transport,
            record,
            self._owner,
            wiring.contextFor(hello.serverName),
            self._terminated,
            wiring.prereadTimeout,
            wiring.describe,
            wiring.handshakeTimed,
        )
        self._termination.start(self._hello.buffered)

    def _terminated(self, tls: TLSTransport) -> _TerminatedLogin:
        self._client = tls
        return _TerminatedLogin(self)

    # -- inside TLS ------------------------------------------------------------

    def handshakeDone(self) -> None:
        self._state = _State.LOGIN
        self._startTimer(self._loginTimedOut)

    def _loginTimedOut(self) -> None:
        self._timer = None
        self._refuse(
            Status.PREREAD_TIMEOUT,
            f"no MySQL login {self.wiring.prereadTimeout:g}s after the TLS handshake",
        )

    def clientPlaintext(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.clientData(data)
        else:
            self._clientBytes(data)

    def _clientBytes(self, data: bytes) -> None:
        if self._state is _State.OVER:
            return
        self._reader.feed(data)
        while self._state in (_State.LOGIN, _State.AUTH):
            try:
                packet = self._reader.next()
            except MySQLError as e:
                self._refuse(Status.BAD_CLIENT_HELLO, f"mysql {e.reason}: {e}")
                return
            if packet is NEED_MORE:
                return
            if self._state is _State.AUTH:
                # An auth response: the server numbers it in its own count.
                assert self._leg is not None
                self._nextSequence = packet.sequence + 1
                self._authActive()
                self._leg.sendPacket(packet.sequence - self._offset, packet.payload)
                continue
            try:
                login = parseHandshakeResponse(packet.payload)
            except MySQLError as e:
                self._refuse(
                    Status.BAD_CLIENT_HELLO,
                    f"mysql {e.reason}: {e}",
                    f"tlsgateway: bad login packet: {e}",
                    sequence=packet.sequence + 1,
                )
                return
            self._stopTimer()
            self._noteLogin(login)
            self._loginReceived(login, packet.sequence)

    def _noteLogin(self, login: HandshakeResponse) -> None:
        """
        The database user and database name go to the access log
        (C{db_user}, C{db_name}), as for PostgreSQL; never the auth data.
        """
        self._record.extra["db_user"] = login.user
        self._record.extra["db_name"] = login.database or None

    def _loginReceived(self, login: HandshakeResponse, sequence: int) -> None:
        self._login = login
        self._loginSequence = sequence
        self._nextSequence = sequence + 1
        target = self._target
        greetingLeg, self._greetingLeg = self._greetingLeg, None
        assert target is not None
        if greetingLeg is not None and target.name == greetingLeg.upstream.name:
            self._sendLogin(greetingLeg, switch=False)
            return
        # The client hashed its password with the greeting server's
        # scramble: useless for any other server, which must send its own
        # (the routed one; or another of the same upstream when the
        # greeting server left before the login).
        if greetingLeg is not None:
            greetingLeg.abort()
        if not login.capabilities & CLIENT_PLUGIN_AUTH:
            self._refuse(
                Status.UPSTREAM_UNAVAILABLE,
                "client cannot switch auth plugins (no CLIENT_PLUGIN_AUTH), so it"
                f" cannot log in to upstream {target.name!r}",
                "tlsgateway: this client cannot re-authenticate to the routed server",
                sequence=self._nextSequence,
            )
            return
        self._state = _State.DIALING
        tls = (
            self._client.connection if isinstance(self._client, TLSTransport) else None
        )
        self._dial(target, self.wiring.proxyHeader(self._serverName, tls))

    def _sendLogin(self, leg: ServerLeg, *, switch: bool) -> None:
        login = self._login
        greeting = leg.greeting
        assert login is not None
        assert greeting is not None
        self._leg = leg
        self._record.upstream = leg.server.address
        if leg.encrypted and not greeting.capabilities & CLIENT_SSL:
            self._legUnavailable(
                leg, "the server does not offer TLS (CLIENT_SSL): is ssl off on it?"
            )
            return
        capabilities = login.capabilities
        if switch:
            if not greeting.capabilities & CLIENT_PLUGIN_AUTH:
                self._legUnavailable(leg, "the server cannot switch auth plugins")
                return
            capabilities &= greeting.capabilities | CLIENT_SSL
            login = attrs.evolve(login, authResponse=b"", authPlugin=SWITCH_PLUGIN)
        if leg.encrypted:
            capabilities |= CLIENT_SSL
        else:
            capabilities &= ~CLIENT_SSL
        login = attrs.evolve(login, capabilities=capabilities)
        upstreamSequence = 2 if leg.encrypted else 1
        self._offset = self._loginSequence - upstreamSequence
        self._state = _State.AUTH
        self._authActive()
        forwarded = login

        def send() -> None:
            leg.startPackets()
            leg.sendPacket(upstreamSequence, forwarded.encode())

        if leg.encrypted:
            leg.secure(forwarded.sslRequest(), send)
        else:
            send()

    def serverPacket(self, leg: ServerLeg, packet: Packet) -> None:
        if leg is not self._leg or self._state is not _State.AUTH:
            return
        try:
            reply = parseAuthReply(packet.payload)
        except MySQLError as e:
            self._legUnavailable(leg, f"during authentication: {e}")
            return
        sequence = packet.sequence + self._offset
        self._nextSequence = sequence + 1
        self._writeClient(encodePacket(sequence, packet.payload))
        self._authActive()
        if isinstance(reply, OkPacket | ErrPacket):
            self._stopTimer()
            if isinstance(reply, ErrPacket):
                self._record.reason = f"server refused the login: {reply.describe()}"
            self._startRelay(leg)

    def _startRelay(self, leg: ServerLeg) -> None:
        self._state = _State.RELAY
        wiring = self.wiring
        pending = self._reader.rest()
        client = self._client
        self._owner.report(Event.CONNECTED)
        self._relay = startRelay(
            "portable",
            wiring.reactor,
            wiring.clock,
            client,
            leg.transportForRelay,
            self._record,
            self._owner,
            wiring.timeouts.idle,
            self._end,
            [pending] if pending else [],
            countBytes=not isinstance(client, TLSTransport),
        )
        leg.relayTo(self._relay)

    # -- failures and ends -------------------------------------------------------

    def legFailed(self, leg: ServerLeg, reason: str) -> None:
        if leg is self._greetingLeg:
            # Before the login the greeting server is not needed yet (the
            # route may choose another; a server's own connect_timeout may
            # drop a slow client): the login then goes where the route
            # says, re-authenticated like a re-routed one.
            self._greetingLeg = None
            _log.debug(
                "greeting server {server} left before the login: {reason}",
                server=leg.server.address,
                reason=reason,
            )
        elif leg is self._leg:
            self._legUnavailable(leg, reason)

    def legTLSError(self, leg: ServerLeg, reason: str) -> None:
        """
        The server broke TLS after the handshake (re-encryption).
        """
        self._owner.report(Event.TLS_ERROR, f"upstream {leg.server.address}: {reason}")
        self._record.extra.setdefault("closed_by", "upstream_tls_error")

    def _legUnavailable(self, leg: ServerLeg, reason: str) -> None:
        if self._state is _State.OVER or self._relay is not None:
            return
        self._refuse(
            Status.UPSTREAM_UNAVAILABLE,
            f"{leg.server.address}: {reason}",
            f"tlsgateway: lost the MySQL server {leg.server.address}",
            sequence=self._nextSequence,
        )

    def clientReadClosed(self) -> None:
        if self._relay is not None:
            self._relay.clientReadClosed()
        elif self._state is not _State.OVER:
            self._refuse(self._leftStatus(), f"client closed while {self._state.value}")

    def clientLost(self, reason: Failure) -> None:
        self._stopTimer()
        if self._relay is not None:
            self._relay.clientLost(reason)
            return
        if self._state is not _State.OVER:
            self._owner.report(
                Event.REFUSE,
                f"connection lost while {self._state.value}",
                self._leftStatus(),
            )
        self._state = _State.OVER
        self._abortLegs()
        self._end()

    def _leftStatus(self) -> Status:
        """
        The status of a client that left before the relay: a ClientHello
        it stopped in the middle of is a bad one; otherwise it closed
        before sending anything to route on, or right after its TLS
        handshake (rejecting the certificate it was shown), and is
        C{client_closed}.
        """
        if self._state is _State.HELLO and self._hello.buffered:
            return Status.BAD_CLIENT_HELLO
        return Status.CLIENT_CLOSED

    def stop(self) -> None:
        """
        The drain deadline passed: end now.
        """
        if self._relay is not None:
            self._relay.abort(Event.SHUT_DOWN, "gateway stopped")
            return
        self._stopTimer()
        self._owner.report(Event.SHUT_DOWN, "gateway stopped")
        self._state = _State.OVER
        self._abortLegs()
        self._client.abortConnection()

    def _refuse(
        self,
        status: str,
        reason: str,
        message: str | None = None,
        *,
        sequence: int = 0,
        code: int = ER_UNKNOWN_ERROR,
    ) -> None:
        """
        End the connection before the relay: tell the client why in an
        C{ERR} packet it prints (when it is a MySQL client that can read
        one where it is), log C{status}, close the servers.
        """
        if self._state is _State.OVER:
            return
        self._stopTimer()
        self._state = _State.OVER
        self._owner.report(Event.REFUSE, reason, Status(status))
        self._abortLegs()
        if message is not None:
            self._writeClient(errPacket(sequence, code, "HY000", message))
        self._client.loseConnection()

    def _abortLegs(self) -> None:
        for leg in (self._greetingLeg, self._leg):
            if leg is not None:
                leg.abort()
        self._greetingLeg = self._leg = None
        if self._dialer is not None:
            dialer, self._dialer = self._dialer, None
            dialer.cancel()

    def _writeClient(self, data: bytes) -> None:
        if not isinstance(self._client, TLSTransport):
            self._record.bytesOut += len(data)
        self._client.write(data)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._record.ended = self.wiring.clock.seconds()
        self.wiring.ended()

    def _startTimer(
        self, expired: Callable[[], None], delay: float | None = None
    ) -> None:
        self._stopTimer()
        self._timer = later(
            self.wiring.clock,
            self.wiring.prereadTimeout if delay is None else delay,
            expired,
        )

    def _authActive(self) -> None:
        """
        A packet of the authentication went by: it may take a person's
        time (a PAM dialog), so it is bounded by C{idle_timeout}, as the
        relay after it is, counted from the last packet.
        """
        self._startTimer(self._authTimedOut, self.wiring.timeouts.idle)

    def _authTimedOut(self) -> None:
        self._timer = None
        self._refuse(
            Status.IDLE_TIMEOUT,
            f"authentication idle for {self.wiring.timeouts.idle:g}s",
            "tlsgateway: authentication timed out",
            sequence=self._nextSequence,
        )

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None


@implementer(IProtocolStrategy)
class MySQLStrategy:
    """
    C{protocol = mysql}: a MySQL client reads the server's greeting before
    it sends a byte, so nothing is pre-read: the connection is handed to
    its L{MySQLConnection} at accept (or once its PROXY header is read),
    which greets the client with the greeting upstream's server, then
    routes it by the ClientHello it sends inside the protocol.
    """

    name = "mysql"
    readsHello = False
    speaksTLSFirst = False

    def preamble(self) -> None:
        return None

    def misdirected(self, buffered: bytes) -> str | None:
        return None

    def opening(self, encrypted: bool) -> None:
        return None

    def terminated(
        self, listener: Any, protocol: Any, tls: Any, upstream: Any, hello: Any
    ) -> Any:
        raise NotImplementedError("a mysql connection is terminated by its stage")

    def openPlaintext(self, listener: Any, protocol: Any, start: object) -> Any:
        raise NotImplementedError("a mysql listener has no preamble")

    def listenerState(self) -> None:
        return None

    def openAtAccept(
        self, listener: Any, protocol: Any, buffered: bytes
    ) -> MySQLConnection:
        policy = listener.policy
        transport = protocol.transport
        assert transport is not None
        assert listener.tls is not None

        def choose(hello: ClientHello | None) -> Any:
            denied = deniedFingerprint(
                policy, protocol.record.ja4 if policy.denyJA4 else None
            )
            if denied is not None:
                return Refusal(denied.status, denied.reason)
            serverName = None if hello is None else hello.serverName
            relay = policy.route(serverName, () if hello is None else hello.alpn)
            if relay is None:
                return Refusal(
                    Status.NO_ROUTE,
                    noRouteReason(serverName)
                    if hello is not None
                    else "no default route for a client without TLS",
                )
            return listener.upstreams[relay.upstream]

        def proxyHeader(
            serverName: str | None, connection: SSL.Connection | None
        ) -> Callable[[], bytes] | None:
            return listener.proxyHeaderFor(  # type: ignore[no-any-return]
                protocol, serverName, connection
            )

        config = listener.config
        stage = MySQLConnection(
            Wiring(
                reactor=listener.reactor,
                clock=listener.clock,
                timeouts=listener.timeouts,
                prereadTimeout=config.preread_timeout,
                maxHello=config.preread_buffer_size,
                clientKey=listener.clientKeyOf(protocol),
                allowPlaintext=config.allow_plaintext,
                greetings=tuple(
                    listener.upstreams[name] for name in policy.greetings()
                ),
                choose=choose,
                contextFor=listener.tls.contextFor,
                describe=listener.tls.describe,
                handshakeTimed=listener.accessLog.handshake,
                proxyHeader=proxyHeader,
                ended=lambda: listener.ended(protocol),
            ),
            relayTransport(transport),
            protocol.record,
            protocol,
        )
        stage.start(buffered)
        return stage


MYSQL = MySQLStrategy()
