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

The connection's states are
L{gateway.protocols.mysql.states.CONNECTION_TRANSITIONS}; its server legs
(L{gateway.protocols.mysql.leg}) are dialed by the shared
L{gateway.connection.servertries.Dialer}; its refusals are the listener's
verdicts (L{gateway.rules.decision.decide}, through L{Wiring.choose}),
told to the client as MySQL C{ERR} packets.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.preread import IStage
from gateway.connection.relay import IRelay
from gateway.connection.relays import startRelay
from gateway.connection.servertries import Dialer, ServerTries
from gateway.connection.session import UpstreamRuntime
from gateway.connection.terminate import ITerminatedSession, TerminationStage
from gateway.connection.timers import Deadline, cancel, later
from gateway.core.transports import RelayTransport
from gateway.core.vocabulary import Action, Status
from gateway.protocols.mysql.leg import ServerLeg
from gateway.protocols.mysql.login import Unforwardable, serverLogin
from gateway.protocols.mysql.states import (
    CONNECTION_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    Machine,
)
from gateway.protocols.mysql.wiring import (
    ER_SECURE_TRANSPORT_REQUIRED,
    ER_UNKNOWN_ERROR,
    Wiring,
)
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.decision import Reject
from gateway.rules.lifecycle import ConnectionOwner, Event
from gateway.tls.transport import TLSTransport
from gateway.wire.clienthello import ClientHelloError
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.mysql import (
    CLIENT_PLUGIN_AUTH,
    CLIENT_SSL,
    NEED_MORE,
    ErrPacket,
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
    parseHandshakeResponse,
)

__all__ = ["MySQLConnection"]

_log = Logger()

_S = ConnectionState
_I = ConnectionInput


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
        self._machine = Machine(CONNECTION_TRANSITIONS, _S.GREETING)
        self._early = b""
        self._reader = PacketReader()
        self._hello = ClientHelloReader(wiring.maxHello)
        self._serverName: str | None = None
        self._timer: Deadline | None = None
        self._dialer: Dialer[ServerLeg] | None = None
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

    @property
    def state(self) -> ConnectionState:
        return self._machine.state

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
        if self.state is _S.GREETING:
            self._early += data
        elif self.state is _S.REQUEST:
            self._readRequest(data)
        elif self.state is _S.HELLO:
            self._readHello(data)
        elif self.state in (_S.LOGIN, _S.AUTH, _S.DIALING):
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
        """
        Reach a server of C{upstream} that greets, through the shared
        dialer: its servers in turn while C{next_upstream_tries} lasts.
        """
        wiring = self.wiring

        def attempt(server: ServerConfig) -> ServerLeg:
            return ServerLeg(
                self,
                dialer,
                upstream,
                server,
                proxyHeader,
                wiring.clock,
                wiring.timeouts.connect,
            )

        dialer: Dialer[ServerLeg] = Dialer(
            wiring.reactor,
            ServerTries(upstream.chooser, upstream.tries, wiring.clientKey),
            wiring.timeouts.connect,
            attempt,
            lambda reason: self._dialFailed(dialer, upstream, reason),
        )
        self._dialer = dialer
        dialer.start()

    def _dialGreeting(self) -> None:
        """
        Dial the next upstream that may greet the client (its servers in
        turn, as the dialer does): any server of the listener's upstreams
        can, since the client is re-authenticated against the one its
        server name routes to.
        """
        upstream = self._greetingsLeft.pop(0)
        self._dial(upstream, self.wiring.proxyHeader(None, None))

    def _dialFailed(
        self, dialer: Dialer[ServerLeg], upstream: UpstreamRuntime, reason: str
    ) -> None:
        if dialer is not self._dialer:
            return
        self._dialer = None
        if self.state is _S.GREETING:
            self._greetingErrors.append(f"upstream {upstream.name}: {reason}")
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
            f"tlsgateway: no MySQL server of upstream {upstream.name!r} is available",
            sequence=self._nextSequence,
        )

    def greeted(self, dialer: Dialer[ServerLeg], leg: ServerLeg) -> None:
        if dialer is not self._dialer or self.state is _S.OVER:
            leg.abort()
            return
        self._dialer = None
        self._record.upstream = leg.server.address
        if self.state is _S.GREETING:
            self._greetingLeg = leg
            greeting = leg.greeting
            assert greeting is not None
            payload = greeting.withCapabilities(greeting.capabilities | CLIENT_SSL)
            self._writeClient(encodePacket(0, payload))
            self._machine.move(_I.GREETED)
            self._startTimer(self._requestTimedOut)
            early, self._early = self._early, b""
            if early:
                self._readRequest(early)
            return
        assert self.state is _S.DIALING
        self._sendLogin(leg, switch=True)

    def _requestTimedOut(self) -> None:
        self._timer = None
        what = "SSLRequest" if self.state is _S.REQUEST else "ClientHello"
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
            self._machine.move(_I.SSL_REQUESTED)
            rest = self._reader.rest()
            if rest:
                self._readHello(rest)
            return
        self._plaintextLogin(start, packet.sequence)

    def _plaintextLogin(self, login: HandshakeResponse, sequence: int) -> None:
        self._stopTimer()
        self._noteLogin(login)
        choice = self.wiring.choose(None)
        if isinstance(choice, Reject) and choice.status is Status.PLAINTEXT_REFUSED:
            self._refuse(
                choice.status,
                choice.reason,
                "tlsgateway accepts MySQL connections over TLS only: connect with"
                " ssl-mode=REQUIRED or stronger (allow_plaintext is off)",
                sequence=sequence + 1,
                code=ER_SECURE_TRANSPORT_REQUIRED,
            )
            return
        self._record.action = Action.TCP
        if isinstance(choice, Reject):
            self._refuse(
                choice.status,
                choice.reason,
                f"tlsgateway: {choice.reason}",
                sequence=sequence + 1,
            )
            return
        self._target = choice
        self._machine.move(_I.PLAINTEXT_LOGIN)
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
        if isinstance(choice, Reject):
            self._refuse(choice.status, choice.reason)
            return
        self._target = choice
        record.action = Action.TERMINATE
        self._machine.move(_I.ROUTED)
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
        self._machine.move(_I.HANDSHAKE_DONE)
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
        if self.state is _S.OVER:
            return
        self._reader.feed(data)
        while self.state in (_S.LOGIN, _S.AUTH):
            try:
                packet = self._reader.next()
            except MySQLError as e:
                self._refuse(Status.BAD_CLIENT_HELLO, f"mysql {e.reason}: {e}")
                return
            if packet is NEED_MORE:
                return
            if self.state is _S.AUTH:
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
        self._machine.move(_I.REROUTED)
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
        try:
            forwarded = serverLogin(
                login, greeting, switch=switch, encrypted=leg.encrypted
            )
        except Unforwardable as e:
            self._legUnavailable(leg, str(e))
            return
        self._offset = self._loginSequence - forwarded.sequence
        self._machine.move(_I.LOGIN_SENT)
        self._authActive()

        def send() -> None:
            leg.startPackets()
            leg.sendPacket(forwarded.sequence, forwarded.login.encode())

        if leg.encrypted:
            leg.secure(forwarded.login.sslRequest(), send)
        else:
            send()

    def serverPacket(self, leg: ServerLeg, packet: Packet) -> None:
        if leg is not self._leg or self.state is not _S.AUTH:
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
        self._machine.move(_I.AUTHENTICATED)
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
            clientBytes=self._owner.clientBytes.forWritesTo(client),
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
        if self.state is _S.OVER or self._relay is not None:
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
        elif self.state is not _S.OVER:
            self._refuse(self._leftStatus(), f"client closed while {self.state.value}")

    def clientLost(self, reason: Failure) -> None:
        self._stopTimer()
        if self._relay is not None:
            self._relay.clientLost(reason)
            return
        if self.state is not _S.OVER:
            self._owner.report(
                Event.REFUSE,
                f"connection lost while {self.state.value}",
                self._leftStatus(),
            )
            self._machine.move(_I.END)
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
        if self.state is _S.HELLO and self._hello.buffered:
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
        if self.state is not _S.OVER:
            self._machine.move(_I.END)
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
        if self.state is _S.OVER:
            return
        self._stopTimer()
        self._machine.move(_I.END)
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
        counted = self._owner.clientBytes.forWritesTo(self._client)
        if counted is not None:
            counted.sent(len(data))
        self._client.write(data)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._owner.stageEnded()

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
