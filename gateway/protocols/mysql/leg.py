"""
One connection from the gateway to one MySQL server: its greeting, then (on
demand) the gateway's own C{SSLRequest} and verified TLS, then the packets
of the authentication, then the relay.

Legs are dialed by the shared L{gateway.connection.servertries.Dialer} (the
same retry and failover rule as every upstream connection): a leg reports
a server that does not greet as a failed attempt, and the dialer tries the
next one.  Its states are L{gateway.protocols.mysql.states.LEG_TRANSITIONS}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.relay import IRelay
from gateway.connection.servertries import Dialer
from gateway.connection.session import UpstreamRuntime
from gateway.connection.timers import Deadline, cancel, later
from gateway.core.transports import RelayTransport, relayTransport
from gateway.protocols.mysql.states import (
    LEG_TRANSITIONS,
    LegInput,
    LegState,
    Machine,
)
from gateway.tls.transport import ITLSEvents, TLSTransport
from gateway.wire.mysql import (
    NEED_MORE,
    Greeting,
    MySQLError,
    Packet,
    PacketReader,
    encodePacket,
    parseGreeting,
)

__all__ = ["LegOwner", "ServerLeg"]


class LegOwner(TypingProtocol):
    """
    What a leg tells the client connection it serves, once its server
    greeted (before that, its dialer decides what a failure means).
    """

    def greeted(self, dialer: Dialer[ServerLeg], leg: ServerLeg) -> None: ...

    def legFailed(self, leg: ServerLeg, reason: str) -> None: ...

    def legTLSError(self, leg: ServerLeg, reason: str) -> None: ...

    def serverPacket(self, leg: ServerLeg, packet: Packet) -> None: ...


@implementer(IHalfCloseableProtocol, ITLSEvents)
class ServerLeg(Protocol):
    """
    One connection to one MySQL server.

    @ivar greeting: the server's greeting, once read.
    """

    def __init__(
        self,
        owner: LegOwner,
        dialer: Dialer[ServerLeg],
        upstream: UpstreamRuntime,
        server: ServerConfig,
        proxyHeader: Callable[[], bytes] | None,
        clock: IReactorTime,
        connectTimeout: float,
    ) -> None:
        self._owner = owner
        self._dialer = dialer
        self.upstream = upstream
        self.server = server
        self._proxyHeader = proxyHeader
        self._clock = clock
        self._connectTimeout = connectTimeout
        self.greeting: Greeting | None = None
        self._machine = Machine(LEG_TRANSITIONS, LegState.GREETING)
        self._reader = PacketReader()
        self._timer: Deadline | None = None
        self._tls: TLSTransport | None = None
        self._secured: Callable[[], None] | None = None
        self._relay: IRelay | None = None

    @property
    def state(self) -> LegState:
        return self._machine.state

    @property
    def encrypted(self) -> bool:
        """The gateway re-encrypts to this server (C{tls = on})."""
        return self.upstream.tls is not None

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._proxyHeader is not None:
            self.transport.write(self._proxyHeader())
        self._timer = later(self._clock, self._connectTimeout, self._greetingTimedOut)

    def _greetingTimedOut(self) -> None:
        self._timer = None
        self._unusable(f"no greeting within {self._connectTimeout:g}s")

    def _unusable(self, reason: str) -> None:
        """
        This server cannot take the connection: before it greeted, the
        dialer tries the next; after, the connection fails.
        """
        self._stopTimer()
        state = self.state
        self._machine.move(LegInput.CLOSE)
        if self.transport is not None:
            relayTransport(self.transport).abortConnection()
        if state is LegState.GREETING:
            self._dialer.failed(self, reason)
        elif state is not LegState.CLOSED:
            self._owner.legFailed(self, reason)

    def abort(self) -> None:
        """
        Close this leg unused (the client left, or was routed elsewhere).
        """
        self._stopTimer()
        self._machine.move(LegInput.CLOSE)
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
        self._machine.move(LegInput.SECURE)
        self._secured = then
        self.transport.write(encodePacket(1, sslRequest))
        self._tls = TLSTransport(
            tls.connectionFor(self.server),
            relayTransport(self.transport),
            self,
        )
        self._tls.startHandshake()

    def startPackets(self) -> None:
        """The login goes out: read the server's answers packet by packet."""
        self._machine.move(LegInput.LOGIN_SENT)

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
        self._machine.move(LegInput.RELAY)
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
        self._machine.move(LegInput.SECURED)
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
        if self.state is not LegState.CLOSED:
            self._owner.legTLSError(self, reason)

    # transport events

    def dataReceived(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.ciphertextReceived(data)
        else:
            self._plaintext(data)

    def _plaintext(self, data: bytes) -> None:
        state = self.state
        if state is LegState.RELAY:
            assert self._relay is not None
            self._relay.upstreamData(data)
            return
        if state is LegState.GREETED:
            self._unusable(
                f"the server sent {len(data)} bytes after its greeting, before "
                "the login"
            )
            return
        if state is LegState.SECURING:
            self._unusable("the server sent plaintext before its TLS handshake")
            return
        if state is LegState.CLOSED:
            return
        self._reader.feed(data)
        while self.state is LegState.GREETING or self.state is LegState.PACKETS:
            try:
                packet = self._reader.next()
            except MySQLError as e:
                self._unusable(f"mysql {e.reason}: {e}")
                return
            if packet is NEED_MORE:
                return
            if self.state is LegState.GREETING:
                self._greeted(packet)
            else:
                self._owner.serverPacket(self, packet)

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
        if not self._dialer.succeeded(self):
            self.abort()
            return
        self.greeting = greeting
        self._machine.move(LegInput.GREETED)
        self._owner.greeted(self._dialer, self)

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
            self._dialer.tries.released(self.server)
        if self._relay is not None:
            self._relay.upstreamLost(reason)
            return
        if self.state is not LegState.CLOSED:
            self._unusable(reason.getErrorMessage())

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None
