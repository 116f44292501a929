"""
TLS over a TCP transport, through pyOpenSSL memory BIOs.

Why not Twisted's C{TLSMemoryBIOProtocol}: it cannot half-close (a
C{close_notify} from the peer closes both directions at once), it hands the
ClientHello to OpenSSL only through its own protocol events, and it counts
nothing.  The gateway needs all three: the pre-read ClientHello fed in as is,
a C{close_notify} relayed as a half-close exactly as a FIN is in
passthrough, and the bytes on the wire for the access log.  What remains is
small: feed ciphertext in, take plaintext and ciphertext out.

L{TLSTransport} is the plaintext side's transport: the relay writes to it,
registers producers on it and half-closes it exactly as it does a TCP
transport, so one relay serves passthrough and termination.

Its record layer (L{IRecordLayer}) is chosen once per connection by
L{recordLayer}: OpenSSL's functions called directly where the fast paths
allow (L{gateway.fast.internals.DirectRecords}), pyOpenSSL's public API
otherwise (L{PublicRecords}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IPushProducer
from zope.interface import Interface, implementer

from gateway.core.records import IRecordLayer
from gateway.core.transports import RelayTransport
from gateway.fast.internals import UNKNOWN_TLS_ERROR, directRecords, halfClose, send
from gateway.rules.clientbytes import ClientBytes

#: Read size for the memory BIOs: large enough that one 64 KiB socket read
#: is usually one call, small enough that pyOpenSSL's per-call buffer
#: allocation stays cheap.
_CHUNK = 2**17


class ITLSEvents(Interface):
    """
    What a L{TLSTransport} reports to the session that owns it.
    """

    def tlsHandshakeDone() -> None:
        """
        The handshake completed.
        """

    def tlsHandshakeFailed(reason: str) -> None:
        """
        The handshake failed: C{reason} for the access log.
        """

    def tlsData(data: bytes) -> None:
        """
        Plaintext from the peer.
        """

    def tlsReadClosed() -> None:
        """
        The peer closed its side (close_notify, or the socket's FIN).
        """

    def tlsError(reason: str) -> None:
        """
        A TLS error after the handshake (a corrupt record, a bad KeyUpdate,
        an unexpected message): OpenSSL's alert has been sent and the
        connection is being closed.

        @param reason: OpenSSL's reason, for the access log.
        """


def describeError(error: BaseException) -> str:
    """
    A one-line reason from an OpenSSL error, for the access log.

    pyOpenSSL errors carry a list of C{(library, function, reason)} tuples;
    the reasons (C{no shared cipher}, C{unsupported protocol}, C{peer did
    not return a certificate}) are what an operator needs.  They never
    contain key material.
    """
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(item[-1]) for item in error.args[0] if item]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    if isinstance(error, SSL.SysCallError):
        return CLOSED_DURING_HANDSHAKE
    return str(error) or type(error).__name__


CLOSED_DURING_HANDSHAKE = "connection closed during the handshake"
"""The reason of a handshake the peer ended by closing its socket."""

_REJECTION_ALERTS = (
    "alert bad certificate",
    "alert unsupported certificate",
    "alert certificate revoked",
    "alert certificate expired",
    "alert certificate unknown",
    "alert unknown ca",
)


def clientGaveUp(reason: str) -> str | None:
    """
    Whether a failed server-side handshake was the client's choice, not
    the gateway's refusal: the client rejected the gateway's certificate
    (its alert, as OpenSSL names one it received: C{tlsv1 alert unknown
    ca}) or closed its socket in the middle.

    The access log keeps C{handshake_failed} for what the gateway refused
    (its TLS policy); a client that did not trust the certificate it was
    shown, as C{psql} with C{sslmode=verify-full} or a browser does, has
    nothing wrong with its hello and is logged C{client_closed}.

    @param reason: L{describeError}'s reason for the failure.
    @return: the reason to log, or L{None} when the gateway refused.
    """
    if reason == CLOSED_DURING_HANDSHAKE:
        return "client closed during the TLS handshake"
    if any(alert in reason for alert in _REJECTION_ALERTS):
        return f"client rejected the gateway's certificate ({reason})"
    return None


@implementer(IRecordLayer)
class PublicRecords:
    """
    The record layer through pyOpenSSL's public API: each call allocates
    its own buffer and says "no more data" with an exception; slower than
    the direct calls, and the same otherwise.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: SSL.Connection) -> None:
        self._connection = connection

    def feed(self, data: bytes) -> None:
        self._connection.bio_write(data)

    def _readPlaintext(self) -> tuple[list[bytes], bool, str | None]:
        chunks: list[bytes] = []
        recv = self._connection.recv
        while True:
            try:
                chunks.append(recv(_CHUNK))
            except SSL.WantReadError:
                return chunks, False, None
            except SSL.ZeroReturnError:
                return chunks, True, None
            except SSL.Error as e:
                return chunks, False, describeError(e) or UNKNOWN_TLS_ERROR

    def drain(self) -> bytes | None:
        """
        A memory BIO read returns everything it holds up to the size asked
        for, so a read shorter than L{_CHUNK} emptied it: only a full one
        needs another read (and the C{WantReadError} that ends it).
        """
        read = self._connection.bio_read
        try:
            data = read(_CHUNK)
        except SSL.WantReadError:
            return None
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        while True:
            try:
                chunk = read(_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _CHUNK:
                break
        return b"".join(chunks)

    def decrypt(self, data: bytes) -> tuple[bytes, bool, str | None, bytes | None]:
        if data:
            self.feed(data)
        chunks, ended, broken = self._readPlaintext()
        plaintext = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return plaintext, ended, broken, self.drain()

    def encrypt(self, data: bytes) -> bytes | None:
        self._connection.sendall(data)
        return self.drain()


def recordLayer(connection: SSL.Connection) -> IRecordLayer:
    """
    The record layer of C{connection}: the one place that chooses.
    """
    direct = directRecords(connection)
    return direct if direct is not None else PublicRecords(connection)


@implementer(IPushProducer)
class TLSTransport:
    """
    @ivar connection: the OpenSSL connection, for the access log (version,
        cipher, group, peer certificate) and for upstream verification.
    @ivar handshakeDone: the handshake completed; plaintext flows from now.
    @ivar _transport: the TCP transport carrying the ciphertext.
    @ivar _clientBytes: the connection owner's count of client bytes
        (L{gateway.rules.clientbytes}), into which the ciphertext written
        to the client is counted; L{None} on the upstream side.
    @ivar _readClosed: the peer's C{close_notify} (or its FIN) was reported.
    @ivar _writeClosed: we sent C{close_notify}; nothing may be written.
    """

    __slots__ = (
        "_clientBytes",
        "_events",
        "_failed",
        "_readClosed",
        "_records",
        "_transport",
        "_writeClosed",
        "connection",
        "handshakeDone",
    )

    def __init__(
        self,
        connection: SSL.Connection,
        transport: RelayTransport,
        events: ITLSEvents,
        clientBytes: ClientBytes | None = None,
    ) -> None:
        self.connection = connection
        self.handshakeDone = False
        self._transport = transport
        self._events = events
        self._clientBytes = clientBytes
        self._readClosed = False
        self._writeClosed = False
        self._failed = False
        self._records = recordLayer(connection)

    # ciphertext in

    def startHandshake(self) -> None:
        """
        Client side: send the ClientHello.
        """
        self._handshake()

    def ciphertextReceived(self, data: bytes) -> None:
        self.decryptTo(data, self._events.tlsData)

    def decryptTo(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        """
        Ciphertext from the peer: its plaintext to C{deliver}, everything
        else (the handshake, the peer's C{close_notify}, a broken record,
        what OpenSSL answers) as L{ciphertextReceived} does it.

        L{ciphertextReceived} gives the plaintext to the events' C{tlsData};
        a relay that reads the socket itself
        (L{gateway.connection.terminatedrelay}) gives its own sink, so a
        request's plaintext reaches the other side without passing through
        the stage and session that own the events.
        """
        if self.handshakeDone and not (self._failed or self._readClosed):
            # The relayed stream, the hot path: one call into the record
            # layer for the feed, the reads and what OpenSSL answers.
            plaintext, ended, broken, out = self._records.decrypt(data)
            if plaintext:
                deliver(plaintext)
            if out is not None:
                self._sendOut(out)
            if broken is not None:
                self._broken(broken)
            elif ended:
                self._reportReadClosed()
            return
        if self._failed:
            return
        if data:  # pyOpenSSL's bio_write refuses an empty write
            self._records.feed(data)
        if self.handshakeDone:
            # After the peer's close_notify nothing more is read.
            self._flush()
            return
        self._handshake()
        if self.handshakeDone:
            # Application data that came in the same read as the
            # handshake's end.
            self.decryptTo(b"", deliver)

    def ciphertextEnded(self) -> None:
        """
        The TCP peer sent FIN.  Without a C{close_notify} first this is a
        truncation in TLS terms, but clients do it all the time; the relay
        treats it as the end of the stream, as NGINX does.
        """
        if self.handshakeDone:
            self._reportReadClosed()
        elif not self._failed:
            self._fail(CLOSED_DURING_HANDSHAKE)

    def _handshake(self) -> None:
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as e:
            self._flush()  # the alert tells the peer why
            self._fail(describeError(e))
            return
        self.handshakeDone = True
        self._flush()
        self._events.tlsHandshakeDone()

    def _fail(self, reason: str) -> None:
        self._failed = True
        self._events.tlsHandshakeFailed(reason)

    def _broken(self, reason: str) -> None:
        """
        A corrupt record, a bad KeyUpdate or an unexpected message after
        the handshake: the stream cannot go on, and must not be taken for
        a clean end.  Send the alert OpenSSL queued, as any TLS server
        does, so the peer learns why (a reset would tell it nothing and
        could discard the alert), then close.

        The producer registered on the wire (the relay's other side) is
        taken off first: a paused one would be resumed instead of the
        close ever happening.
        """
        self._failed = True
        self._writeClosed = True
        self._flush()
        self._events.tlsError(reason)
        if getattr(self._transport, "producer", None) is not None:
            self._transport.unregisterProducer()
        self._transport.loseConnection()

    def _reportReadClosed(self) -> None:
        if not self._readClosed:
            self._readClosed = True
            self._events.tlsReadClosed()

    # ciphertext out

    def _flush(self) -> None:
        """
        Send what OpenSSL wrote to the memory BIO, in one C{send}.
        """
        data = self._records.drain()
        if data is not None:
            self._sendOut(data)

    def _sendOut(self, data: bytes) -> None:
        if self._clientBytes is not None:
            self._clientBytes.sent(len(data))
        send(self._transport, data)

    # the plaintext side's transport (what the relay calls)

    def write(self, data: bytes) -> None:
        if self._writeClosed or self._failed or not data:
            return
        out = self._records.encrypt(data)
        if out is not None:
            # _sendOut, written out: this runs once per relayed answer.
            if self._clientBytes is not None:
                self._clientBytes.sent(len(out))
            send(self._transport, out)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """
        Half-close: C{close_notify}, then FIN.  The peer may go on sending.
        """
        self._shutdownTLS()
        halfClose(self._transport)

    def loseConnection(self) -> None:
        self._shutdownTLS()
        self._transport.loseConnection()

    def abortConnection(self) -> None:
        self._writeClosed = True
        self._transport.abortConnection()

    def _shutdownTLS(self) -> None:
        if self._writeClosed or self._failed or not self.handshakeDone:
            return
        self._writeClosed = True
        try:
            self.connection.shutdown()
        except SSL.Error:
            return
        self._flush()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()  # type: ignore[attr-defined]

    @property
    def wire(self) -> RelayTransport:
        """
        The TCP transport that carries the ciphertext.
        """
        return self._transport

    def getPeer(self) -> Any:
        return self._transport.getPeer()

    def getHost(self) -> Any:
        return self._transport.getHost()
