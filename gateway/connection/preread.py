"""
The client-side protocol: pre-read the ClientHello, then hand off.

This protocol stays the client transport's protocol for the whole life of
the connection.  Until a complete ClientHello is buffered it feeds
L{ClientHelloReader}; then it asks its listener for the next stage (a
passthrough session, later a termination session) and forwards every
further transport event to it.  Parsing lives in L{gateway.wire.clienthello},
routing in L{gateway.core.routing}: this class only wires bytes and time to them.

On a listener with C{accept_proxy_protocol}, a L{ProxyHeaderReader} comes
first: the bytes after the header go on to the ClientHello reader, and the
listener is told the header (whose address is the client's from then on)
before any of them is parsed.  One C{preread_timeout} covers both: it
bounds everything a client must send before it is served.

What comes before the ClientHello, and whether one is read at all, is the
listener's protocol strategy's business (L{gateway.connection.strategy}): a preamble
(L{gateway.connection.strategy.IPreamble}) comes between the two readers, answered
as it asks, and the TLS bytes after it go on to the ClientHello reader; a
client that it says starts without TLS is handed to the listener's
C{handoffPlaintext} instead.  A strategy that reads no ClientHello has the
connection handed off (C{handoffAtAccept}) as soon as it is accepted, or
once its PROXY header is read.

A refusal on a connection that speaks TLS (from its first byte, or once
its preamble is over) sends the fatal alert a TLS server would
(L{gateway.wire.alerts}), then closes the way a server that wants its alert
read must: it half-closes (FIN after the alert) and reads, discarding, until
the client closes too or L{REFUSAL_LINGER} passes.  Closing at once with a
ClientHello still unread in the socket would make the kernel answer with a
reset, which can reach the client before it has read the alert; a refusal
at accept, before the client has even sent its hello, is the usual case.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

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

_log = Logger()

REFUSAL_LINGER = 2.0
"""
Seconds a refused connection that was sent an alert is kept reading
(discarding) after its FIN, waiting for the client to close.  A TLS client
closes as soon as it reads the alert; the bound is for one that does not.
"""


class IStage(Interface):
    """
    What the pre-read hands the connection to: it receives the client
    transport's events from then on.
    """

    def dataReceived(data: bytes) -> None:
        """
        The client's next bytes.
        """

    def readConnectionLost() -> None:
        """
        The client closed its side (half-close).
        """

    def connectionLost(reason: Failure) -> None:
        """
        The client connection is gone.
        """

    def shutdown() -> None:
        """
        The gateway stops: end the connection now.
        """


class Handoff(TypingProtocol):
    """
    The listener side of the pre-read: decide what happens to a connection.
    Each hook answers: L{None} to go on, a L{Reject} to refuse, or the
    L{IStage} the connection is handed to; none calls back into the
    protocol.
    """

    def accepted(self, protocol: PrereadProtocol) -> Reject | None:
        """
        A connection was just accepted: refuse it at once (address
        filtering, limits), or not.
        """

    def proxied(self, protocol: PrereadProtocol, header: ProxyHeader) -> Reject | None:
        """
        The connection's PROXY header was read (C{protocol.proxyHeader}):
        refuse the client it names, or not.
        """

    def handoff(
        self, protocol: PrereadProtocol, hello: ClientHello, buffered: bytes
    ) -> IStage | Reject: ...

    def handoffPlaintext(
        self, protocol: PrereadProtocol, start: object
    ) -> IStage | Reject:
        """
        The preamble said the client starts without TLS (C{start}: what
        L{gateway.connection.strategy.IPreamble.feed} returned).
        """

    def handoffAtAccept(
        self, protocol: PrereadProtocol, buffered: bytes
    ) -> IStage | Reject:
        """
        A connection that reads no ClientHello is ready to be served: at
        accept, or once its PROXY header was read (C{buffered}: what
        followed it).
        """

    def ended(self, protocol: PrereadProtocol) -> None:
        """
        The connection is over: log it (and call L{PrereadProtocol.logged}).
        """

    @property
    def strategy(self) -> IProtocolStrategy:
        """
        The listener's protocol: a connection's, unless it is given its own.
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
        listener: Handoff,
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
        Take the table's transition for C{event}, if it allows one, and
        record the status it gives (L{gateway.rules.lifecycle.apply}): the
        connection's own events and what its stage reports
        (L{gateway.rules.lifecycle.ConnectionOwner}).

        @param status: a refusal's, for a transition that records the
            verdict's.
        @return: whether it did; an event the table does not allow in the
            current state is logged as the bug it is (it raises under
            tests: L{gateway.core.strictness}).
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

    def connectionMade(self) -> None:
        self.clientBytes.socket = self.transport
        self._timer = later(self._clock, self._timeout, self._timedOut)
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

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self.record.bytesIn += len(data)
            self._next.dataReceived(data)
            return
        state = self.state
        if state is State.CLOSING or state is State.LOGGED:
            return  # refused: what it still sends is discarded
        self.record.bytesIn += len(data)
        if state is State.PROXY_HEADER:
            assert self._proxyReader is not None
            try:
                header = self._proxyReader.feed(data)
            except ProxyHeaderError as e:
                self._refuse(None, f"{e.reason}: {e}", BY_STATUS, Event.BAD_INPUT)
                return
            if header is HEADER_NEED_MORE:
                return
            self.proxyHeader, data = header
            refusal = self._listener.proxied(self, self.proxyHeader)
            if refusal is not None:
                self._refuse(refusal.status, refusal.reason, refusal.alert)
                return
            event = self._nextReading()
            if event is Event.SERVE:
                self._serve(data)
                return
            self.report(event)
            state = self.state
        if state is State.PREAMBLE:
            data = self._readPreamble(data)
            if not data:
                return
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

    def readConnectionLost(self) -> None:
        self._readClosed = True
        state = self.state
        if self._next is not None:
            self._next.readConnectionLost()
        elif state is State.CLOSING:
            self.report(Event.CLIENT_CLOSED)
            assert self.transport is not None
            self.transport.loseConnection()
        elif not self.record.bytesIn:
            # Nothing to route on, nothing malformed: the client left.
            self._refuse(
                None, "client closed before sending anything", None, Event.CLIENT_CLOSED
            )
        elif state is State.PROXY_HEADER:
            assert self._proxyReader is not None
            try:
                self._proxyReader.end()
            except ProxyHeaderError as e:
                self._refuse(None, f"{e.reason}: {e}", BY_STATUS, Event.BAD_INPUT)
        elif state is State.PREAMBLE:
            assert self._preamble is not None
            self._refuse(
                None, self._preamble.describeEnd(), BY_STATUS, Event.STOPPED_SHORT
            )
        else:
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

    def refuse(
        self,
        status: str,
        reason: str,
        *,
        alert: Alert = BY_STATUS,
    ) -> None:
        """
        End the connection before it reaches any upstream.

        @param alert: the TLS alert to send first if the client speaks TLS
            (by default the one for C{status}), or L{None} for none.
        """
        self._refuse(Status(status), reason, alert)

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
        self._timer = later(self._clock, REFUSAL_LINGER, self._lingerOver)
        loseWriteConnection()

    def _lingerOver(self) -> None:
        self._timer = None
        self.report(Event.TIME_OUT)
        assert self.transport is not None
        self.transport.loseConnection()

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

    def _timedOut(self) -> None:
        self._timer = None
        state = self.state
        if state is State.PROXY_HEADER:
            assert self._proxyReader is not None
            got = len(self._proxyReader.buffered)
            reason = (
                f"timeout: no complete PROXY header after {self._timeout:g}s"
                f" ({got} bytes)"
            )
        elif state is State.PREAMBLE:
            assert self._preamble is not None
            reason = self._preamble.describeTimeout(self._timeout)
        else:
            got = len(self._reader.buffered)
            hint = (
                ": the client sent nothing; if the server speaks first (MySQL,"
                " SMTP), use mode = tcp"
                if got == 0
                else ""
            )
            reason = (
                f"no complete ClientHello after {self._timeout:g}s ({got} bytes){hint}"
            )
        self._refuse(None, reason, BY_STATUS, Event.TIME_OUT)

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
        C{ErrorResponse}) to the client, counted as bytes out: the relay,
        which counts the rest, has not started.
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
