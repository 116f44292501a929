"""
The PostgreSQL side of a C{protocol = postgres} listener, at run time.

L{gateway.wire.postgres} reads and writes the messages; this module decides what
the gateway does with them, in the places where the listener and its stages
need a decision:

  - before the ClientHello (L{ClientPreamble}, driven by
    L{gateway.connection.preread.PrereadProtocol}): answer C{SSLRequest} with C{S} and
    C{GSSENCRequest} with C{N}, let direct TLS through, and hand a client
    that starts without TLS (a startup message, a C{CancelRequest}) to the
    listener;
  - after a terminating handshake (L{StartupReader}, the session that
    L{gateway.connection.terminate.TerminationStage} drives): read the startup message
    inside TLS (its C{user} and C{database} go to the access log) before
    the upstream is chosen, so that a C{CancelRequest} sent inside TLS can
    still reach the server it is for;
  - while a terminated session runs (L{KeyWatcher}): learn its cancel key
    from the server's C{BackendKeyData}, so that the C{CancelRequest} a
    client later sends on a new connection (with no TLS and no server name
    to route by) reaches the server that issued the key
    (L{CancelRegistry}).

Only terminated sessions teach the registry: in passthrough the server's
messages are encrypted end to end, and a plaintext session
(C{allow_plaintext}) may be relayed by C{splice}, which never shows a byte
to Python.  Cancels the registry cannot place go where plaintext goes: to
the listener's C{upstream} or its C{default} route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.hooks import IServesPlaintext, ITerminates, ListenerContext
from gateway.connection.session import Session, UpstreamRuntime
from gateway.connection.strategy import (
    IPreamble,
    IProtocolStrategy,
    IUpstreamOpening,
    PreambleError,
)
from gateway.connection.terminate import ITerminatedSession
from gateway.connection.timers import Deadline, cancel, later
from gateway.connection.upstream import FirstServer
from gateway.core.vocabulary import Status
from gateway.protocols.tls import misdirectedPostgres
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.decision import Plaintext, Reject, Relay, decide
from gateway.rules.lifecycle import ConnectionOwner, Event
from gateway.tls.transport import TLSTransport
from gateway.wire.clienthello import _NeedMore
from gateway.wire.pgbackend import (
    CONNECTION_FAILURE,
    INVALID_AUTHORIZATION,
    BackendKeyDataScanner,
    SSLAnswerReader,
    SSLRefused,
    errorResponse,
)
from gateway.wire.postgres import (
    GSS_REFUSED,
    NEED_MORE,
    SSL_ACCEPTED,
    SSL_REQUEST,
    CancelKey,
    CancelRequest,
    DirectTLS,
    GSSENCRequest,
    NotPostgres,
    OutOfOrder,
    PostgresError,
    PreambleReader,
    SSLRequest,
    StartupMessage,
    cancelRequest,
)

if TYPE_CHECKING:
    from gateway.connection.preread import IStage, PrereadProtocol
    from gateway.wire.clienthello import ClientHello

__all__ = [
    "CANCEL_REASON",
    "NO_ROUTE_MESSAGE",
    "POSTGRES",
    "CancelOwner",
    "CancelRegistry",
    "ClientPreamble",
    "KeyWatcher",
    "OneServer",
    "PlaintextStart",
    "PostgresOpening",
    "PostgresPreamble",
    "PostgresStrategy",
    "StartupReader",
    "noteStartup",
    "plaintextRefused",
    "startTerminated",
    "upstreamUnreachable",
]

PlaintextStart = StartupMessage | CancelRequest
"""What a client that does not start TLS sends: the listener decides."""

CANCEL_REASON = "cancel request"
"""
The access log's C{reason} for a connection that carried a
C{CancelRequest}: its C{status} is C{ok} when it was forwarded, and nothing
else tells it from a session that ended at once.
"""

NO_ROUTE_MESSAGE = (
    "this gateway routes PostgreSQL connections by the server name of their "
    "TLS handshake, and has no default route for a client without TLS"
)
"""The C{ErrorResponse} text for a plaintext client with nowhere to go."""

_log = Logger()


def plaintextRefused() -> bytes:
    """
    The C{ErrorResponse} a plaintext client gets without C{allow_plaintext}.

    SQLSTATE 28000 and a FATAL severity, as PostgreSQL answers a connection
    that C{pg_hba.conf} refuses, so that drivers treat it the same way
    (libpq with C{sslmode=prefer} never gets here: it asked for TLS).
    """
    return errorResponse(
        "this gateway accepts PostgreSQL connections over TLS only: connect with "
        "sslmode=require or stronger (allow_plaintext is off)",
        INVALID_AUTHORIZATION,
    )


def upstreamUnreachable(upstream: str, error: str) -> bytes:
    """
    The C{ErrorResponse} a terminated client gets when no server of its
    upstream can be reached.

    SQLSTATE 08006 (C{connection_failure}) and FATAL, as libpq reports a
    server it cannot reach, so psql prints the cause instead of "SSL
    connection has been closed unexpectedly"; the message names the
    upstream and the last server's error, what an operator looks for first.
    """
    return errorResponse(
        f"tlsgateway: cannot reach upstream {upstream!r}: {error}",
        CONNECTION_FAILURE,
    )


def noteStartup(record: ConnectionRecord, startup: StartupMessage) -> None:
    """
    Put the database user and database name of a startup message in the
    access log (C{db_user}, C{db_name}).  Never the password: a startup
    message holds none, and the gateway reads nothing after it.
    """
    record.extra["db_user"] = startup.user
    record.extra["db_name"] = startup.database


class ClientPreamble:
    """
    What a C{protocol = postgres} client sends before TLS, answered.

    @ivar _received: bytes fed so far, for the reason of a client that
        leaves in the middle.
    """

    def __init__(self) -> None:
        self._reader = PreambleReader()
        self._received = 0

    def feed(
        self, data: bytes, answer: Callable[[bytes], None]
    ) -> bytes | PlaintextStart | Literal[_NeedMore.NEED_MORE]:
        """
        Take the client's next bytes; write to the client, through
        C{answer}, what the preamble asks for (C{N}, C{S}).

        @return: L{NEED_MORE}; or the TLS bytes received so far (empty
            after an C{SSLRequest}, as the client waits for the C{S}),
            which go to the ClientHello reader; or the plaintext start.
        @raise PostgresError: see L{PreambleReader.feed}.
        """
        self._received += len(data)
        event = self._reader.feed(data)
        while isinstance(event, GSSENCRequest):
            answer(GSS_REFUSED)
            event = self._reader.feed(b"")
        if event is NEED_MORE:
            return NEED_MORE
        if isinstance(event, SSLRequest):
            answer(SSL_ACCEPTED)
            return event.rest
        if isinstance(event, DirectTLS):
            return event.rest
        return event

    def refusal(self, error: PostgresError) -> bytes:
        """
        What to tell a client whose preamble L{feed} refused: an
        C{ErrorResponse} when it is a PostgreSQL client talking plaintext,
        which prints it; nothing to a peer that is not PostgreSQL at all or
        that already sent TLS, which could not read one.
        """
        if isinstance(error, NotPostgres | OutOfOrder):
            return b""
        return errorResponse(f"invalid startup packet: {error}")

    def describeEnd(self) -> str:
        """
        Why a client that closed during the preamble was refused.
        """
        if not self._received:
            return "client closed before sending anything"
        return (
            f"client closed after {self._received} bytes, before the end of its "
            f"PostgreSQL startup packet"
        )


@attrs.frozen
class CancelOwner:
    """
    Where a cancel key was issued: the server a terminated session was
    relayed to, and the upstream it belongs to (whose TLS settings a
    forwarded C{CancelRequest} keeps: a cancel key is a credential, and
    an operator who re-encrypts does not want it in the clear).
    """

    server: ServerConfig
    upstream: UpstreamRuntime = attrs.field(eq=False)

    def runtime(self) -> UpstreamRuntime:
        """
        An upstream that reaches exactly this server, once: a cancel for a
        dead server must fail, not go to another one where it means nothing.
        """
        return attrs.evolve(self.upstream, chooser=OneServer(self.server), tries=1)


class CancelRegistry:
    """
    The cancel keys of the running terminated sessions of a listener, and
    the server each came from.

    A key is added when its session's server sends C{BackendKeyData} and
    removed when the session ends, so the registry holds one entry per
    live terminated session.  Keys of two servers could only collide if
    both the process ID and the (random, 32 bits or more) secret did; the
    later one then wins while it lives.
    """

    def __init__(self) -> None:
        self._owners: dict[CancelKey, CancelOwner] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def add(self, key: CancelKey, owner: CancelOwner) -> None:
        self._owners[key] = owner

    def discard(self, key: CancelKey, owner: CancelOwner) -> None:
        """
        Forget C{key} if it still names C{owner}.
        """
        if self._owners.get(key) is owner:
            del self._owners[key]

    def get(self, key: CancelKey) -> CancelOwner | None:
        return self._owners.get(key)


class OneServer(FirstServer):
    """
    A chooser with one server and no accounting: the target of a forwarded
    C{CancelRequest}, a connection that lives for a round trip.  It is
    L{FirstServer} over that one server, so the two cannot drift apart.
    """

    def __init__(self, server: ServerConfig) -> None:
        self._servers = (server,)


class KeyWatcher:
    """
    Reads a terminated session's server messages until its
    C{BackendKeyData} went by, and keeps its key in the registry while the
    session lives.

    The scanner stops at the first C{ReadyForQuery} (L{BackendKeyDataScanner}),
    and the watcher then unhooks itself from the session, so a long
    session costs nothing after its first few messages.
    """

    def __init__(self, registry: CancelRegistry, upstream: UpstreamRuntime) -> None:
        self._registry = registry
        self._upstream = upstream
        self._scanner = BackendKeyDataScanner()
        self._session: Session | None = None
        self._keys: list[tuple[CancelKey, CancelOwner]] = []

    def watch(self, session: Session) -> None:
        self._session = session
        session.upstreamWatcher = self

    def __call__(self, data: bytes) -> None:
        session = self._session
        assert session is not None
        try:
            keys = self._scanner.feed(data)
        except PostgresError as e:
            # Not the PostgreSQL framing (a misconfigured upstream): relay
            # on, learn nothing.
            _log.debug("not watching for a cancel key: {error}", error=e)
            session.upstreamWatcher = None
            return
        server = session.server
        if server is not None:
            for key in keys:
                owner = CancelOwner(server, self._upstream)
                self._registry.add(key, owner)
                self._keys.append((key, owner))
        if self._scanner.done:
            session.upstreamWatcher = None

    def release(self) -> None:
        """
        The session ended: its keys cancel nothing any more.
        """
        keys, self._keys = self._keys, []
        for key, owner in keys:
            self._registry.discard(key, owner)


MakeSession = Callable[[UpstreamRuntime, Callable[[], None] | None], Session]
"""
Builds a session of the connection being served to an upstream; the
callable is also called when the session ends (or L{None}).
"""


def startTerminated(
    event: PlaintextStart,
    record: ConnectionRecord,
    registry: CancelRegistry,
    upstream: UpstreamRuntime,
    makeSession: MakeSession,
) -> Session:
    """
    Start the session of a terminated connection once its first message,
    read inside TLS, is known.

    A startup message goes to the route's upstream as is, and the session
    is watched for its cancel key.  A C{CancelRequest} (PostgreSQL 17's
    libpq encrypts cancels of encrypted connections) goes to the server
    that issued the key, or to the route's upstream if no session here
    knows it.
    """
    if isinstance(event, StartupMessage):
        noteStartup(record, event)
        watcher = KeyWatcher(registry, upstream)
        session = makeSession(upstream, watcher.release)
        watcher.watch(session)
        session.connect(event.raw + event.rest)
        return session
    record.reason = CANCEL_REASON
    owner = registry.get(event.key)
    session = makeSession(upstream if owner is None else owner.runtime(), None)
    session.connect(cancelRequest(event.key) + event.rest)
    return session


@implementer(ITerminatedSession)
class StartupReader:
    """
    The session a terminated C{protocol = postgres} connection starts with:
    it reads the client's first message inside TLS and only then starts
    the real L{Session} (L{startTerminated}), to which it hands every later
    event.

    A client sends its startup message right after the handshake, so
    waiting for it costs no round trip; the listener's C{preread_timeout}
    bounds the wait, as it bounds everything else a client must send
    before it is served.

    @ivar _client: the client's TLS layer: an C{ErrorResponse} for a
        malformed startup message goes inside TLS, where the client reads.
    @ivar _owner: the connection's owner: told the connection ended
        (L{ConnectionOwner.stageEnded}) from here only if no session was
        ever started (a session tells it otherwise).
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        record: ConnectionRecord,
        owner: ConnectionOwner,
        client: TLSTransport,
        start: Callable[[PlaintextStart], Session],
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._record = record
        self._owner = owner
        self._client = client
        self._start = start
        self._reader = PreambleReader(encrypted=True)
        self._session: Session | None = None
        self._timer: Deadline | None = None
        self._refused = False
        self._received = 0

    def connect(self) -> None:
        """
        The handshake is done: wait for the startup message.
        """
        self._timer = later(self._clock, self._timeout, self._timedOut)

    def clientData(self, data: bytes) -> None:
        if self._session is not None:
            self._session.clientData(data)
            return
        if self._refused:
            return
        self._received += len(data)
        try:
            event = self._reader.feed(data)
        except PostgresError as e:
            if not isinstance(e, NotPostgres | OutOfOrder):
                self._client.write(errorResponse(f"invalid startup packet: {e}"))
            self._refuse(Status.BAD_CLIENT_HELLO, f"postgres {e.reason}: {e}")
            return
        if event is NEED_MORE:
            return
        # Inside TLS the reader only yields these two (see _Stage.ENCRYPTED).
        assert isinstance(event, StartupMessage | CancelRequest)
        self._stopTimer()
        self._session = self._start(event)

    def clientReadClosed(self) -> None:
        if self._session is not None:
            self._session.clientReadClosed()
        elif not self._refused:
            # As libpq does when it rejects the certificate it was shown
            # (sslmode=verify-full) or is only probing: not a bad hello.
            self._refuse(*self._endedEarly("closed"))

    def clientLost(self, reason: Failure) -> None:
        self._stopTimer()
        if self._session is not None:
            self._session.clientLost(reason)
            return
        status, why = self._endedEarly("lost")
        self._owner.report(Event.REFUSE, why, status)
        self._owner.stageEnded()

    def shutdown(self) -> None:
        if self._session is not None:
            self._session.shutdown()
            return
        self._stopTimer()
        self._owner.report(Event.SHUT_DOWN, "gateway stopped")
        self._client.abortConnection()

    def _refuse(self, status: Status, reason: str) -> None:
        self._refused = True
        self._stopTimer()
        self._owner.report(Event.REFUSE, reason, status)
        self._client.loseConnection()

    def _endedEarly(self, how: str) -> tuple[Status, str]:
        """
        Why a client that closed (or lost) its connection before its
        startup packet was whole is refused: C{client_closed} if it sent
        nothing after the handshake, a truncated (bad) startup packet
        otherwise.
        """
        if self._received:
            return (
                Status.BAD_CLIENT_HELLO,
                f"client {how} after {self._received} bytes of its PostgreSQL"
                " startup packet",
            )
        return (
            Status.CLIENT_CLOSED,
            f"client {how} right after the TLS handshake, before its PostgreSQL"
            " startup packet",
        )

    def _timedOut(self) -> None:
        self._timer = None
        self._refuse(
            Status.PREREAD_TIMEOUT,
            f"no PostgreSQL startup packet {self._timeout:g}s after the TLS handshake",
        )

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None


@implementer(IPreamble)
class PostgresPreamble(ClientPreamble):
    """
    L{ClientPreamble} as the generic pre-read drives it
    (L{gateway.connection.strategy.IPreamble}).
    """

    def feed(  # type: ignore[override]
        self, data: bytes, answer: Callable[[bytes], None]
    ) -> bytes | PlaintextStart | None:
        try:
            start = super().feed(data, answer)
        except PostgresError as e:
            raise PreambleError(f"postgres {e.reason}: {e}", self.refusal(e)) from e
        return None if start is NEED_MORE else start

    def describeTimeout(self, timeout: float) -> str:
        return f"no complete PostgreSQL startup packet after {timeout:g}s"


@implementer(IUpstreamOpening)
class PostgresOpening:
    """
    An upstream connection that carries TLS starts as a PostgreSQL
    client's does: an C{SSLRequest}, then TLS only once the server
    answered C{S}.  An C{S} followed by anything in the same read is
    refused: the server cannot have seen a ClientHello yet, so those bytes
    are not its handshake but something that answered in its place, a man
    in the middle injecting data that would reach the client (passthrough)
    or the gateway's TLS (re-encryption) as if the server had sent it: the
    CVE-2021-23222 class, which libpq fixed the same way.
    """

    request = SSL_REQUEST

    def __init__(self) -> None:
        self._reader = SSLAnswerReader()

    def feed(self, data: bytes) -> bool | str | None:
        try:
            answer = self._reader.feed(data)
        except PostgresError as e:
            return f"SSLRequest answer: {e}"
        if answer is NEED_MORE:
            return None
        if isinstance(answer, SSLRefused):
            return (
                "server refused the SSLRequest (N): is ssl off on it?"
                if answer.error is None
                else f"server answered the SSLRequest with an error: {answer.error}"
            )
        if answer.rest:
            return (
                f"server sent {len(answer.rest)} bytes after its S, before the"
                " TLS handshake: refused, as injected data (CVE-2021-23222)"
            )
        return True

    def describeTimeout(self, timeout: float) -> str:
        return f"no answer to the SSLRequest within {timeout:g}s"


def _registryOf(listener: ListenerContext) -> CancelRegistry:
    """
    The cancel keys of a postgres listener: its strategy state, made by
    L{PostgresStrategy.listenerState}.
    """
    registry = listener.strategyState
    assert isinstance(registry, CancelRegistry), "a postgres listener's state"
    return registry


@implementer(IProtocolStrategy, ITerminates, IServesPlaintext)
class PostgresStrategy:
    """
    C{protocol = postgres}: the preamble before the ClientHello, a client
    that starts without TLS, the startup message read inside a terminated
    connection, and the C{SSLRequest} that opens every upstream
    connection that carries TLS.
    """

    name = "postgres"
    readsHello = True
    speaksTLSFirst = False

    def preamble(self) -> PostgresPreamble:
        return PostgresPreamble()

    def misdirected(self, buffered: bytes) -> str | None:
        return misdirectedPostgres(buffered)

    def opening(self, encrypted: bool) -> type[PostgresOpening] | None:
        return PostgresOpening if encrypted else None

    def terminated(
        self,
        listener: ListenerContext,
        protocol: PrereadProtocol,
        tls: TLSTransport,
        upstream: UpstreamRuntime,
        hello: ClientHello,
    ) -> StartupReader:
        record = protocol.record

        def start(event: PlaintextStart) -> Session:
            return startTerminated(
                event,
                record,
                _registryOf(listener),
                upstream,
                lambda target, onEnd: listener.session(
                    protocol,
                    tls,
                    target,
                    hello.serverName,
                    tls.connection,
                    opening=self.opening(target.tls is not None),
                    onEnd=onEnd,
                    failureAlert=lambda error: upstreamUnreachable(target.name, error),
                ),
            )

        return StartupReader(
            listener.clock,
            listener.config.preread_timeout,
            record,
            protocol,
            tls,
            start,
        )

    def openPlaintext(
        self, listener: ListenerContext, protocol: PrereadProtocol, start: object
    ) -> IStage | Reject:
        """
        A client that starts without TLS: a startup message (refused unless
        C{allow_plaintext}) or a C{CancelRequest}.

        Neither carries a server name, so both go to C{upstream} or the
        C{default} route, except a cancel whose key a terminated session of
        this listener learnt: that goes to the server that issued it.  The
        upstream is the one the route's action would use, so a plaintext
        client on a terminating route to a C{tls = on} upstream is
        encrypted towards it like a terminated one.  The client side is
        plain TCP, so the access log says C{tcp}.
        """
        record = protocol.record
        startup = isinstance(start, StartupMessage)
        owner = None
        if isinstance(start, StartupMessage):
            noteStartup(record, start)
            pending = start.raw + start.rest
        else:
            assert isinstance(start, CancelRequest)
            record.reason = CANCEL_REASON
            pending = cancelRequest(start.key) + start.rest
            owner = _registryOf(listener).get(start.key)
        if owner is not None:
            upstream = owner.runtime()
        else:
            verdict = decide(
                listener.policy,
                Plaintext(startup, record.reason or "plaintext startup message"),
                "",
            )
            if isinstance(verdict, Reject):
                if verdict.status is Status.PLAINTEXT_REFUSED:
                    protocol.answer(plaintextRefused())
                elif startup:
                    protocol.answer(errorResponse(NO_ROUTE_MESSAGE))
                return verdict
            assert isinstance(verdict, Relay)
            upstream = listener.upstreamFor(verdict)
        return listener.relayTCP(protocol, upstream, pending, self)

    def listenerState(self) -> CancelRegistry:
        """
        The cancel keys of the listener's terminated sessions: shared by
        the factories that serve its name across reloads.
        """
        return CancelRegistry()


POSTGRES = PostgresStrategy()
