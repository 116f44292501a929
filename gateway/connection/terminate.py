"""
The termination stage: the gateway does the TLS handshake itself.

The pre-read ClientHello goes into OpenSSL as the first bytes of the
connection (nothing is lost and nothing is read twice), with the context
that was chosen for the server name already known from the pre-read: no
servername callback, so no code runs inside the handshake that could fail
open to a default certificate.  Once the handshake is done the session
connects upstream and relays plaintext.
"""

from __future__ import annotations

from collections.abc import Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.connection.preread import IStage
from gateway.connection.timers import Deadline, cancel, later
from gateway.core.transports import RelayTransport
from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord, ExtraFields
from gateway.rules.lifecycle import ConnectionOwner, Event
from gateway.tls.transport import ITLSEvents, TLSTransport, clientGaveUp


class ITerminatedSession(Interface):
    """
    What the stage drives once the handshake is done: a
    L{gateway.connection.session.Session}, or what the protocol strategy reads first
    (L{gateway.connection.strategy.ITerminates.terminated}), such as
    the L{gateway.protocols.postgres.StartupReader} that reads the startup message
    before it starts one.
    """

    def connect() -> None:
        """
        The handshake is done: start (connect upstream, or read first).
        """

    def clientData(data: bytes) -> None:
        """
        The client's next plaintext.
        """

    def clientReadClosed() -> None:
        """
        The client closed its side (inside TLS, or the socket's).
        """

    def clientLost(reason: Failure) -> None:
        """
        The client connection is gone.
        """

    def shutdown() -> None:
        """
        The gateway stops: end the connection now.
        """


class HandshakeStage:
    """
    What a stage that does the gateway's own TLS handshake with the client
    shares (L{TerminationStage}, L{gateway.connection.challenge.ChallengeStage}):
    the client's TLS layer over its socket, fed the pre-read bytes first
    and everything after, and the handshake's deadline, which ends the
    connection as C{handshake_failed} in the words of L{_timeoutReason}.

    @ivar _tls: the client's TLS layer, whose events come to the stage.
    @ivar _timer: the handshake deadline, once started.
    """

    def __init__(
        self,
        clock: IReactorTime,
        transport: RelayTransport,
        record: ConnectionRecord,
        owner: ConnectionOwner,
        context: SSL.Context,
        timeout: float,
    ) -> None:
        self._clock = clock
        self._transport = transport
        self._record = record
        self._owner = owner
        self._timeout = timeout
        connection = SSL.Connection(context, None)
        connection.set_accept_state()
        self._tls = TLSTransport(
            connection,
            transport,
            self,  # type: ignore[arg-type]
            clientBytes=owner.clientBytes,
        )
        self._timer: Deadline | None = None

    def start(self, buffered: bytes) -> None:
        self._owner.report(Event.HANDSHAKE)
        self._timer = later(self._clock, self._timeout, self._timedOut)
        self._tls.ciphertextReceived(buffered)

    def dataReceived(self, data: bytes) -> None:
        self._tls.ciphertextReceived(data)

    def _timeoutReason(self) -> str:
        """
        The access log's C{reason} when the handshake is not done in time.
        """
        return f"handshake timeout: not done after {self._timeout:g}s"

    def _timedOut(self) -> None:
        self._timer = None
        self._owner.report(Event.HANDSHAKE_FAILED, self._timeoutReason())
        self._transport.abortConnection()

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None


@implementer(IStage, ITLSEvents)
class TerminationStage(HandshakeStage):
    """
    The handshake, then the session, which the TLS layer gives plaintext
    to.  The handshake's deadline is the listener's C{preread_timeout},
    which bounds everything a client must send before it is served.

    @ivar _handshakeStarted: reactor time the handshake began, for the
        handshake-duration histogram.
    """

    def __init__(
        self,
        clock: IReactorTime,
        transport: RelayTransport,
        record: ConnectionRecord,
        owner: ConnectionOwner,
        context: SSL.Context,
        makeSession: Callable[[TLSTransport], ITerminatedSession],
        handshakeTimeout: float,
        describe: Callable[[SSL.Connection], ExtraFields],
        handshakeTimed: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        super().__init__(clock, transport, record, owner, context, handshakeTimeout)
        self._describe = describe
        self._handshakeTimed = handshakeTimed
        self._session = makeSession(self._tls)
        self._handshakeStarted = clock.seconds()

    # client transport events

    def readConnectionLost(self) -> None:
        self._tls.ciphertextEnded()

    def connectionLost(self, reason: Failure) -> None:
        self._stopTimer()
        self._session.clientLost(reason)

    def shutdown(self) -> None:
        self._stopTimer()
        self._session.shutdown()

    # TLS events

    def tlsHandshakeDone(self) -> None:
        self._stopTimer()
        self._handshakeTimed(self._clock.seconds() - self._handshakeStarted)
        self._record.extra.update(self._describe(self._tls.connection))
        self._owner.report(Event.HANDSHAKE_DONE)
        self._session.connect()

    def tlsHandshakeFailed(self, reason: str) -> None:
        self._stopTimer()
        gaveUp = clientGaveUp(reason)
        if gaveUp is None:
            self._owner.report(Event.HANDSHAKE_FAILED, reason)
        else:
            self._owner.report(Event.REFUSE, gaveUp, Status.CLIENT_CLOSED)
        self._transport.loseConnection()

    def tlsData(self, data: bytes) -> None:
        self._session.clientData(data)

    def tlsReadClosed(self) -> None:
        self._session.clientReadClosed()

    def tlsError(self, reason: str) -> None:
        # The TLS layer sent the alert and closes the socket; the session
        # sees the client go as it sees any close, and the first cause
        # recorded is this one.
        self._owner.report(Event.TLS_ERROR, reason)
        self._record.extra.setdefault("closed_by", "client_tls_error")
