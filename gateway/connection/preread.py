"""
The owner of a client connection: pre-read what routes it, hand it off,
and end it.

L{PrereadProtocol} stays the client transport's protocol for the whole
life of the connection, and is the one place that ends it: a stage tells
it when it is over (L{PrereadProtocol.stageEnded}) and it stamps the end
and has the listener log the record, once; it counts every client byte it
receives before passing it on (L{gateway.rules.clientbytes}).  Its state
moves through L{gateway.rules.lifecycle}'s table only, and until a stage
has the connection each client event (bytes, FIN, the deadline) goes to
the current state's handler (L{ON_DATA}, L{ON_FIN}, L{ON_DEADLINE}).

It reads, in turn: a PROXY header (C{accept_proxy_protocol}, whose
address is the client's from then on), the listener's protocol
strategy's preamble (L{gateway.connection.strategy.IPreamble}, answered as
it asks), and the ClientHello; one C{preread_timeout} bounds them all.
Parsing lives in L{gateway.wire}, decisions in its listener
(L{gateway.connection.handoff.Handoff}): this class wires bytes and time
to them.  A client the preamble says starts without TLS goes to
C{handoffPlaintext}; a strategy that reads no ClientHello has the
connection handed off (C{handoffAtAccept}) once its client is known.

A refusal on a connection that speaks TLS sends the fatal alert a TLS
server would (L{gateway.wire.alerts}), then half-closes and reads,
discarding, until the client closes too or L{REFUSAL_LINGER} passes:
closing at once with a ClientHello still unread would make the kernel
answer with a reset, which can reach the client before the alert.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.handoff import Handoff, IStage
from gateway.connection.strategy import IPreamble, IProtocolStrategy, PreambleError
from gateway.connection.timers import Deadline, cancel, later
from gateway.core import strictness
from gateway.core.strictness import ForbiddenEvent
from gateway.core.transports import relayTransport
from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.decision import BY_STATUS, Alert, Reject
from gateway.rules.lifecycle import Event, State, apply
from gateway.wire.alerts import STATUS_ALERTS, alertRecord, recordVersion
from gateway.wire.clienthello import NEED_MORE, ClientHello, ClientHelloError, NotTLS
from gateway.wire.ech import ECHError
from gateway.wire.echopen import ECHKeyring, Opened, openHello
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.proxyprotocol import NEED_MORE as HEADER_NEED_MORE
from gateway.wire.proxyprotocol import ProxyHeader, ProxyHeaderError
from gateway.wire.proxyreader import ProxyHeaderReader

__all__ = [
    "ON_DATA",
    "ON_DEADLINE",
    "ON_FIN",
    "REFUSAL_LINGER",
    "Handoff",
    "IStage",
    "PrereadProtocol",
]

_log = Logger()

REFUSAL_LINGER = 2.0
"""
Seconds a refused connection that was sent an alert is kept reading
(discarding) after its FIN, waiting for the client to close.  A TLS client
closes as soon as it reads the alert; the bound is for one that does not.
"""


@implementer(IHalfCloseableProtocol)
class PrereadProtocol(Protocol):
    """
    The one owner of a client connection: its state
    (L{gateway.rules.lifecycle.State}) moves through that module's table
    only.

    @ivar record: the connection's access-log record; every later stage
        writes into the same one.
    @ivar clientBytes: counts the client's bytes into the record
        (L{gateway.rules.clientbytes}): every byte received here, before
        the stage sees it; what reads or writes the client's socket
        directly is handed this.
    @ivar proxyHeader: the PROXY header the connection started with, once
        read (C{accept_proxy_protocol}).
    @ivar state: where the connection is (L{gateway.rules.lifecycle}).
    @ivar _proxyReader: reads that header (C{accept_proxy_protocol}).
    @ivar _preamble: reads the strategy's preamble; L{None} for a protocol
        without one.
    @ivar _next: the stage the connection was handed to (state C{decided}).
    @ivar _speaksTLS: the client's next bytes are TLS, so a refusal gets a
        TLS alert: from the start when the strategy says so (C{tls}),
        once the preamble is over, never when no ClientHello is read.
    @ivar _hello: the parsed ClientHello, once read: its version is the
        record version of an alert.
    @ivar _readClosed: the client's FIN has arrived.
    @ivar _ech: the listener's ECH keys (C{ech_keys}), or L{None}.
    @ivar echOpened: the decrypted ECH of a hello routed on its inner name
        (L{gateway.connection.echsplit}), for the stage that sends it on.
    """

    def __init__(
        self,
        listener: Handoff[PrereadProtocol],
        record: ConnectionRecord,
        clock: IReactorTime,
        timeout: float,
        maxSize: int,
        acceptProxy: bool = False,
        *,
        strategy: IProtocolStrategy | None = None,
        ech: ECHKeyring | None = None,
    ) -> None:
        self.record = record
        self.clientBytes = ClientBytes(record)
        self._ech = ech
        self.echOpened: Opened | None = None
        self.proxyHeader: ProxyHeader | None = None
        self.state = State.ACCEPTED
        self._proxyReader = ProxyHeaderReader() if acceptProxy else None
        if strategy is None:
            strategy = listener.strategy
        readHello = strategy.readsHello
        self._strategy = strategy
        self._preamble: IPreamble | None = strategy.preamble() if readHello else None
        self._listener = listener
        self._clock = clock
        self._timeout = timeout
        self._reader = ClientHelloReader(maxSize)
        self._timer: Deadline | None = None
        self._next: IStage | None = None
        self._speaksTLS = readHello and strategy.speaksTLSFirst
        self._hello: ClientHello | None = None
        self._readClosed = False

    def report(
        self, event: Event, reason: str | None = None, status: Status | None = None
    ) -> bool:
        """
        Take the table's transition for C{event} and record the status it
        gives (L{gateway.rules.lifecycle.apply}): the connection's own
        events and what its stage reports.

        @param status: a refusal's, for a transition that records the
            verdict's.
        @return: whether the table allows C{event} now (if not: L{_forbidden}).
        """
        target = apply(self.state, event, self.record, reason, status)
        if target is None:
            self._forbidden(event.value)
            return False
        self.state = target
        return True

    def _forbidden(self, event: str) -> None:
        """
        C{event} cannot happen in the current state: a bug.  It raises
        under tests (L{gateway.core.strictness}); in production it is
        logged, state and event named, and ignored.
        """
        if strictness.STRICT:
            raise ForbiddenEvent(
                f"event {event!r} is not allowed in state {self.state.value!r}"
            )
        _log.error(
            "listener {listener}: connection {client}: event {event!r} is not"
            " allowed in state {state!r}",
            listener=self.record.listener,
            client=self.record.client,
            event=event,
            state=self.state.value,
        )

    def stageEnded(self) -> None:
        """
        The stage is over on every side (client and upstream closed): stamp
        the end with the owner's clock and have the listener log the
        connection.  Once: a stage that reports its end twice is a bug
        (L{_forbidden}).
        """
        if self.record.ended is not None:
            self._forbidden("stage ended")
            return
        self._end()

    def _end(self) -> None:
        """
        The one place a connection's end is stamped and its record handed
        to the listener (which logs it and calls L{logged}).
        """
        self.record.ended = self._clock.seconds()
        self._listener.ended(self)

    def _nextReading(self) -> Event:
        """
        What the connection reads next, once its client is known.
        """
        if self._preamble is not None:
            return Event.EXPECT_PREAMBLE
        if self._strategy.readsHello:
            return Event.EXPECT_HELLO
        return Event.SERVE

    def makeConnection(self, transport: ITransport) -> None:
        """
        Start the connection, or, for one that already started, only take
        C{transport} as its own from now on: a connection pre-read in the
        hub whose socket the reactor adopted
        (L{gateway.connection.hubclient.HubClient.toReactor}).
        """
        if self.transport is not None:
            # The same socket: what writes to it counts as before.
            self.transport = self.clientBytes.socket = transport
            return
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def connectionMade(self) -> None:
        self.clientBytes.socket = self.transport
        self._timer = later(self._clock, self._timeout, self._deadline)
        refusal = self._listener.accepted(self)
        if refusal is not None:
            self._refuse(refusal.status, refusal.reason, refusal.alert)
            return
        if self._proxyReader is not None:
            self.report(Event.EXPECT_HEADER)
            return
        event = self._nextReading()
        if event is Event.SERVE:
            self._serve(b"")
        else:
            self.report(event)

    # The client's events go to the stage once there is one; until then
    # to the current state's handler (the tables at the end of the module).

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self.record.bytesIn += len(data)
            self._next.dataReceived(data)
            return
        handler = ON_DATA.get(self.state)
        if handler is None:
            self._forbidden("client data")
            return
        handler(self, data)

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if self._next is not None:
            self._next.readConnectionLost()
            return
        handler = ON_FIN.get(self.state)
        if handler is None:
            self._forbidden("client FIN")
            return
        handler(self)

    def _deadline(self) -> None:
        """
        The timer ran out: the pre-read's (C{preread_timeout}) or a
        refusal's linger (L{REFUSAL_LINGER}), as the state says.
        """
        self._timer = None
        handler = ON_DEADLINE.get(self.state)
        if handler is None:
            self._forbidden("deadline")
            return
        handler(self)

    # data, by state

    def _headerData(self, data: bytes) -> None:
        self.record.bytesIn += len(data)
        assert self._proxyReader is not None
        try:
            header = self._proxyReader.feed(data)
        except ProxyHeaderError as e:
            self._refuse(None, f"{e.reason}: {e}", BY_STATUS, Event.BAD_INPUT)
            return
        if header is HEADER_NEED_MORE:
            return
        self.proxyHeader, rest = header
        refusal = self._listener.proxied(self, self.proxyHeader)
        if refusal is not None:
            self._refuse(refusal.status, refusal.reason, refusal.alert)
            return
        event = self._nextReading()
        if event is Event.SERVE:
            self._serve(rest)
            return
        self.report(event)
        if event is Event.EXPECT_PREAMBLE:
            self._readPreambleThenHello(rest)
        else:
            self._readHello(rest)

    def _preambleData(self, data: bytes) -> None:
        self.record.bytesIn += len(data)
        self._readPreambleThenHello(data)

    def _helloData(self, data: bytes) -> None:
        self.record.bytesIn += len(data)
        self._readHello(data)

    def _discard(self, data: bytes) -> None:
        """
        Refused: what the client still sends is discarded, uncounted.
        """

    def _readPreambleThenHello(self, data: bytes) -> None:
        rest = self._readPreamble(data)
        if rest:
            self._readHello(rest)

    def _readHello(self, data: bytes) -> None:
        try:
            hello = self._reader.feed(data)
        except ClientHelloError as e:
            reason = f"{e.reason}: {e}"
            hint = (
                self._strategy.misdirected(self._reader.buffered)
                if isinstance(e, NotTLS)
                else None
            )
            if hint is not None:
                reason = f"{reason}: {hint}"
            # A peer that does not speak TLS (plaintext HTTP, SSLv2) gets no
            # TLS alert, as OpenSSL sends none to an HTTP request.
            self._refuse(
                None,
                reason,
                None if isinstance(e, NotTLS) else BY_STATUS,
                Event.BAD_INPUT,
            )
            return
        if hello is NEED_MORE:
            return
        self._stopTimer()
        self._hello = hello
        buffered = self._reader.buffered
        if hello.ech is not None:
            try:
                ech = openHello(self._ech, hello, buffered)
            except ECHError as e:
                self.record.ech, self.record.outerSni = "rejected", hello.serverName
                self._refuse(None, f"{e.reason}: {e}", e.alert, Event.BAD_INPUT)
                return
            self.record.ech, self.record.outerSni = ech.result, hello.serverName
            hello, buffered, self.echOpened = ech.hello, ech.buffered, ech.opened
        self.record.sni = hello.serverName
        self.record.alpn = hello.alpn
        self.record.hello = hello
        self.report(Event.SERVE)
        self._handTo(self._listener.handoff(self, hello, buffered))

    # the client's FIN, by state

    def _leftEarly(self) -> bool:
        """
        The client closed before sending a byte: nothing to route on,
        nothing malformed, it left.  Refuse it so.
        """
        if self.record.bytesIn:
            return False
        self._refuse(
            None, "client closed before sending anything", None, Event.CLIENT_CLOSED
        )
        return True

    def _finInHeader(self) -> None:
        if self._leftEarly():
            return
        assert self._proxyReader is not None
        try:
            self._proxyReader.end()
        except ProxyHeaderError as e:
            self._refuse(None, f"{e.reason}: {e}", BY_STATUS, Event.BAD_INPUT)

    def _finInPreamble(self) -> None:
        if self._leftEarly():
            return
        assert self._preamble is not None
        self._refuse(None, self._preamble.describeEnd(), BY_STATUS, Event.STOPPED_SHORT)

    def _finInHello(self) -> None:
        if self._leftEarly():
            return
        # A TLS server sends no alert to a client that stopped short.
        got = len(self._reader.buffered)
        self._refuse(
            None,
            f"client closed after {got} bytes, before a complete ClientHello"
            if got
            else "client closed before sending its ClientHello",
            None,
            Event.STOPPED_SHORT if got else Event.CLIENT_CLOSED,
        )

    def _finWhileClosing(self) -> None:
        self.report(Event.CLIENT_CLOSED)
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        if self.record.bytesIn or self.state is State.CLOSING:
            self.report(Event.LOST, "connection lost during pre-read")
        else:
            self.report(
                Event.CLIENT_CLOSED, "connection lost before the client sent anything"
            )
        self._end()

    def logged(self) -> None:
        """
        The listener wrote the connection's access-log line: the end.
        """
        self.report(Event.LOG)

    def refuse(self, status: Status, reason: str, *, alert: Alert = BY_STATUS) -> None:
        """
        End the connection before it reaches any upstream.

        @param alert: the TLS alert to send first if the client speaks TLS
            (by default the one for C{status}), or L{None} for none.
        """
        self._refuse(status, reason, alert)

    def _refuse(
        self,
        status: Status | None,
        reason: str,
        alert: Alert,
        event: Event = Event.REFUSE,
    ) -> None:
        """
        Take the refusing transition C{event}: with L{Event.REFUSE}, the
        verdict's C{status}; otherwise the one the table gives.  Then send
        the alert, if any, and close as a TLS server that wants its alert
        read does (see the module docstring).
        """
        if not self.report(event, reason, status):
            return
        status = self.record.status
        assert status is not None
        self._stopTimer()
        assert self.transport is not None
        description = STATUS_ALERTS.get(status) if alert is BY_STATUS else alert
        if description is None or not self._speaksTLS:
            self.transport.loseConnection()
            return
        record = alertRecord(
            description, recordVersion(self._hello, self._reader.buffered)
        )
        self.record.bytesOut += len(record)
        self.transport.write(record)
        loseWriteConnection = getattr(self.transport, "loseWriteConnection", None)
        if self._readClosed or loseWriteConnection is None:
            self.transport.loseConnection()
            return
        self._timer = later(self._clock, REFUSAL_LINGER, self._deadline)
        loseWriteConnection()

    def shutdown(self) -> None:
        """
        The gateway is stopping and the drain deadline has passed.
        """
        if self._next is not None:
            self._next.shutdown()
            return
        self._stopTimer()
        self.report(Event.SHUT_DOWN, "gateway stopped")
        assert self.transport is not None
        relayTransport(self.transport).abortConnection()

    # the deadline, by state

    def _headerTimedOut(self) -> None:
        assert self._proxyReader is not None
        got = len(self._proxyReader.buffered)
        reason = (
            f"timeout: no complete PROXY header after {self._timeout:g}s ({got} bytes)"
        )
        self._refuse(None, reason, BY_STATUS, Event.TIME_OUT)

    def _preambleTimedOut(self) -> None:
        assert self._preamble is not None
        reason = self._preamble.describeTimeout(self._timeout)
        self._refuse(None, reason, BY_STATUS, Event.TIME_OUT)

    def _helloTimedOut(self) -> None:
        got = len(self._reader.buffered)
        hint = (
            ": the client sent nothing; if the server speaks first (MySQL,"
            " SMTP), use mode = tcp"
            if got == 0
            else ""
        )
        reason = f"no complete ClientHello after {self._timeout:g}s ({got} bytes){hint}"
        self._refuse(None, reason, BY_STATUS, Event.TIME_OUT)

    def _lingerOver(self) -> None:
        self.report(Event.TIME_OUT)
        assert self.transport is not None
        self.transport.loseConnection()

    def _readPreamble(self, data: bytes) -> bytes:
        """
        Feed the preamble reader, answer what it asks to, and hand a client
        that starts without TLS to the listener.

        @return: the TLS bytes that followed the preamble, for the
            ClientHello reader (empty while the preamble is incomplete, or
            after a hand-off or refusal).
        """
        assert self._preamble is not None
        try:
            start = self._preamble.feed(data, self.answer)
        except PreambleError as e:
            if e.answer:
                self.answer(e.answer)
            self._refuse(None, e.reason, BY_STATUS, Event.BAD_INPUT)
            return b""
        if start is None:
            return b""
        if isinstance(start, bytes):
            self.report(Event.EXPECT_HELLO)
            self._speaksTLS = True
            return start
        self._stopTimer()
        self.report(Event.SERVE)
        self._handTo(self._listener.handoffPlaintext(self, start))
        return b""

    def answer(self, data: bytes) -> None:
        """
        Write a preamble's answer (PostgreSQL's C{S}, C{N}, an
        C{ErrorResponse}) to the client, counted as bytes out: the owner
        writes it to its own socket.
        """
        assert self.transport is not None
        self.record.bytesOut += len(data)
        self.transport.write(data)

    def _serve(self, buffered: bytes) -> None:
        self._stopTimer()
        self.report(Event.SERVE)
        self._handTo(self._listener.handoffAtAccept(self, buffered))

    def _handTo(self, answer: IStage | Reject) -> None:
        """
        Carry out a hand-off's answer (the connection is C{decided} while
        the hook runs, so that a stage it starts reports from there):
        refuse, or the stage has the connection from now on.
        """
        if isinstance(answer, Reject):
            self._refuse(answer.status, answer.reason, answer.alert)
            return
        self._next = answer

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None


# What the owner does with each client event before a stage has the
# connection, by state: one lookup per event.  A state missing from a
# table cannot meet that event (L{PrereadProtocol._forbidden}); tests
# check the tables against L{gateway.rules.lifecycle.TRANSITIONS}.

ON_DATA: Final[Mapping[State, Callable[[PrereadProtocol, bytes], None]]] = {
    State.PROXY_HEADER: PrereadProtocol._headerData,
    State.PREAMBLE: PrereadProtocol._preambleData,
    State.CLIENT_HELLO: PrereadProtocol._helloData,
    State.CLOSING: PrereadProtocol._discard,
    State.LOGGED: PrereadProtocol._discard,
}
"""The client's bytes (L{gateway.rules.lifecycle.Input.DATA})."""

ON_FIN: Final[Mapping[State, Callable[[PrereadProtocol], None]]] = {
    State.PROXY_HEADER: PrereadProtocol._finInHeader,
    State.PREAMBLE: PrereadProtocol._finInPreamble,
    State.CLIENT_HELLO: PrereadProtocol._finInHello,
    State.CLOSING: PrereadProtocol._finWhileClosing,
}
"""The client's FIN (L{gateway.rules.lifecycle.Input.FIN})."""

ON_DEADLINE: Final[Mapping[State, Callable[[PrereadProtocol], None]]] = {
    State.PROXY_HEADER: PrereadProtocol._headerTimedOut,
    State.PREAMBLE: PrereadProtocol._preambleTimedOut,
    State.CLIENT_HELLO: PrereadProtocol._helloTimedOut,
    State.CLOSING: PrereadProtocol._lingerOver,
}
"""
The timer: C{preread_timeout}, or a refusal's linger
(L{gateway.rules.lifecycle.Input.DEADLINE}).
"""
