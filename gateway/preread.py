"""
The client-side protocol: pre-read the ClientHello, then hand off.

This protocol stays the client transport's protocol for the whole life of
the connection.  Until a complete ClientHello is buffered it feeds
L{ClientHelloReader}; then it asks its listener for the next stage (a
passthrough session, later a termination session) and forwards every
further transport event to it.  Parsing lives in L{gateway.clienthello},
routing in L{gateway.routing}: this class only wires bytes and time to them.

On a listener with C{accept_proxy_protocol}, a L{ProxyHeaderReader} comes
first: the bytes after the header go on to the ClientHello reader, and the
listener is told the header (whose address is the client's from then on)
before any of them is parsed.  One C{preread_timeout} covers both: it
bounds everything a client must send before it is served.

What comes before the ClientHello, and whether one is read at all, is the
listener's protocol strategy's business (L{gateway.strategy}): a preamble
(L{gateway.strategy.IPreamble}) comes between the two readers, answered
as it asks, and the TLS bytes after it go on to the ClientHello reader; a
client that it says starts without TLS is handed to the listener's
C{handoffPlaintext} instead.  A strategy that reads no ClientHello has the
connection handed off (C{handoffAtAccept}) as soon as it is accepted, or
once its PROXY header is read.

A refusal on a connection that speaks TLS (from its first byte, or once
its preamble is over) sends the fatal alert a TLS server would
(L{gateway.alerts}), then closes the way a server that wants its alert
read must: it half-closes (FIN after the alert) and reads, discarding, until
the client closes too or L{REFUSAL_LINGER} passes.  Closing at once with a
ClientHello still unread in the socket would make the kernel answer with a
reset, which can reach the client before it has read the alert; a refusal
at accept, before the client has even sent its hello, is the usual case.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.accesslog import ConnectionRecord
from gateway.alerts import STATUS_ALERTS, alertRecord, recordVersion
from gateway.clienthello import (
    NEED_MORE,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    NotTLS,
)
from gateway.decision import BY_STATUS, Alert
from gateway.ja4 import ja4
from gateway.proxyprotocol import NEED_MORE as HEADER_NEED_MORE
from gateway.proxyprotocol import ProxyHeader, ProxyHeaderError, ProxyHeaderReader
from gateway.relay import relayTransport
from gateway.strategy import IPreamble, IProtocolStrategy, PreambleError
from gateway.timers import cancel
from gateway.tlsstrategy import TLS
from gateway.vocabulary import Status

REFUSAL_LINGER = 2.0
"""
Seconds a refused connection that was sent an alert is kept reading
(discarding) after its FIN, waiting for the client to close.  A TLS client
closes as soon as it reads the alert; the bound is for one that does not.
"""


class Stage(TypingProtocol):
    """
    What the pre-read hands the connection to: it receives the client
    transport's events from then on.
    """

    def dataReceived(self, data: bytes) -> None: ...

    def readConnectionLost(self) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...

    def shutdown(self) -> None: ...


class Handoff(TypingProtocol):
    """
    The listener side of the pre-read: decide what happens to a connection.
    """

    def accepted(self, protocol: PrereadProtocol) -> None:
        """
        A connection was just accepted; the listener may refuse it at once
        (C{protocol.refuse}: address filtering, limits).
        """

    def proxied(self, protocol: PrereadProtocol, header: ProxyHeader) -> None:
        """
        The connection's PROXY header was read (C{protocol.proxyHeader});
        the listener may refuse the client it names.
        """

    def handoff(
        self, protocol: PrereadProtocol, hello: ClientHello, buffered: bytes
    ) -> Stage | None: ...

    def handoffPlaintext(
        self, protocol: PrereadProtocol, start: object
    ) -> Stage | None:
        """
        The preamble said the client starts without TLS (C{start}: what
        L{gateway.strategy.IPreamble.feed} returned).
        """

    def handoffAtAccept(
        self, protocol: PrereadProtocol, buffered: bytes
    ) -> Stage | None:
        """
        A connection that reads no ClientHello is ready to be served: at
        accept, or once its PROXY header was read (C{buffered}: what
        followed it).
        """

    def ended(self, protocol: PrereadProtocol) -> None: ...


@implementer(IHalfCloseableProtocol)
class PrereadProtocol(Protocol):
    """
    @ivar record: the connection's access-log record; every later stage
        writes into the same one.
    @ivar proxyHeader: the PROXY header the connection started with, once
        read (C{accept_proxy_protocol}).
    @ivar _proxyReader: reads that header; L{None} when the listener does
        not expect one, or once it was read.
    @ivar _preamble: reads the strategy's preamble; L{None} for a protocol
        without one, or once TLS started.
    @ivar _readHello: a ClientHello is expected at all (the strategy's
        C{readsHello}).
    @ivar _next: the stage the connection was handed to, or L{None} while
        still pre-reading (or after a refusal).
    @ivar _handedOff: the pre-read is over, whether or not a stage took it;
        bytes that still arrive are not parsed again.
    @ivar _speaksTLS: the client's next bytes are TLS, so a refusal gets a
        TLS alert: from the start when the strategy says so (C{tls}),
        once the preamble is over, never when no ClientHello is read.
    @ivar _hello: the parsed ClientHello, once read: its version is the
        record version of an alert.
    @ivar _lingering: a refusal's alert is sent and the write side closed;
        waiting for the client to close (see the module docstring).
    @ivar _readClosed: the client's FIN has arrived.
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
        strategy: IProtocolStrategy = TLS,
    ) -> None:
        self.record = record
        self.proxyHeader: ProxyHeader | None = None
        self._proxyReader = ProxyHeaderReader() if acceptProxy else None
        readHello = strategy.readsHello
        self._strategy = strategy
        self._preamble: IPreamble | None = strategy.preamble() if readHello else None
        self._readHello = readHello
        self._listener = listener
        self._clock = clock
        self._timeout = timeout
        self._reader = ClientHelloReader(maxSize)
        self._timer: IDelayedCall | None = None
        self._next: Stage | None = None
        self._handedOff = False
        self._speaksTLS = readHello and strategy.speaksTLSFirst
        self._hello: ClientHello | None = None
        self._lingering = False
        self._readClosed = False

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._timedOut)
        self._listener.accepted(self)
        if not self._readHello and not self._handedOff and self._proxyReader is None:
            self._handOffTCP(b"")

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if self._handedOff:
            return
        self.record.bytesIn += len(data)
        if self._proxyReader is not None:
            try:
                header = self._proxyReader.feed(data)
            except ProxyHeaderError as e:
                self.refuse(Status.BAD_PROXY_HEADER, f"{e.reason}: {e}")
                return
            if header is HEADER_NEED_MORE:
                return
            self._proxyReader = None
            self.proxyHeader, data = header
            self._listener.proxied(self, self.proxyHeader)
            if self._handedOff:  # refused for the address in the header
                return
            if not self._readHello:
                self._handOffTCP(data)
                return
        if self._preamble is not None:
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
            self.refuse(
                Status.BAD_CLIENT_HELLO,
                reason,
                alert=None if isinstance(e, NotTLS) else BY_STATUS,
            )
            return
        if hello is NEED_MORE:
            return
        self._stopTimer()
        self._handedOff = True
        self._hello = hello
        self.record.sni = hello.serverName
        self.record.alpn = hello.alpn
        self.record.ja4 = ja4(hello)
        self._next = self._listener.handoff(self, hello, self._reader.buffered)

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if self._next is not None:
            self._next.readConnectionLost()
        elif self._lingering:
            assert self.transport is not None
            self.transport.loseConnection()
        elif self._handedOff:
            pass
        elif self._proxyReader is not None:
            try:
                self._proxyReader.end()
            except ProxyHeaderError as e:
                self.refuse(Status.BAD_PROXY_HEADER, f"{e.reason}: {e}")
        elif self._preamble is not None:
            self.refuse(Status.BAD_CLIENT_HELLO, self._preamble.describeEnd())
        else:
            # A TLS server sends no alert to a client that stopped short.
            got = len(self._reader.buffered)
            self.refuse(
                Status.BAD_CLIENT_HELLO,
                f"client closed after {got} bytes, before a complete ClientHello"
                if got
                else "client closed before sending anything",
                alert=None,
            )

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        if not self._handedOff:
            self.record.fail(
                Status.BAD_CLIENT_HELLO
                if self._proxyReader is None
                else Status.BAD_PROXY_HEADER,
                "connection lost during pre-read",
            )
        self.record.ended = self._clock.seconds()
        self._listener.ended(self)

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
        self._stopTimer()
        self._handedOff = True
        self.record.fail(status, reason)
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
        self._lingering = True
        self._timer = self._clock.callLater(REFUSAL_LINGER, self._lingerOver)
        loseWriteConnection()

    def _lingerOver(self) -> None:
        self._timer = None
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
        self._handedOff = True
        self.record.fail(Status.SHUTDOWN, "gateway stopped")
        assert self.transport is not None
        relayTransport(self.transport).abortConnection()

    def _timedOut(self) -> None:
        self._timer = None
        if self._proxyReader is not None:
            got = len(self._proxyReader.buffered)
            self.refuse(
                Status.BAD_PROXY_HEADER,
                f"timeout: no complete PROXY header after {self._timeout:g}s"
                f" ({got} bytes)",
            )
            return
        if self._preamble is not None:
            self.refuse(
                Status.PREREAD_TIMEOUT, self._preamble.describeTimeout(self._timeout)
            )
            return
        got = len(self._reader.buffered)
        hint = (
            ": the client sent nothing; if the server speaks first (MySQL,"
            " SMTP), use mode = tcp"
            if got == 0
            else ""
        )
        self.refuse(
            Status.PREREAD_TIMEOUT,
            f"no complete ClientHello after {self._timeout:g}s ({got} bytes){hint}",
        )

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
            self.refuse(Status.BAD_CLIENT_HELLO, e.reason)
            return b""
        if start is None:
            return b""
        self._preamble = None
        if isinstance(start, bytes):
            self._speaksTLS = True
            return start
        self._stopTimer()
        self._handedOff = True
        self._next = self._listener.handoffPlaintext(self, start)
        return b""

    def answer(self, data: bytes) -> None:
        """
        Write a preamble's answer (PostgreSQL's C{S}, C{N}, an
        C{ErrorResponse}) to the client, counted as bytes out: the relay, which counts the rest,
        has not started.
        """
        assert self.transport is not None
        self.record.bytesOut += len(data)
        self.transport.write(data)

    def _handOffTCP(self, buffered: bytes) -> None:
        self._stopTimer()
        self._handedOff = True
        self._next = self._listener.handoffAtAccept(self, buffered)

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None
