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
"""

from __future__ import annotations

from typing import Any, Protocol

from OpenSSL import SSL
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.accesslog import ConnectionRecord
from gateway.portable import PORTABLE
from gateway.relay import RelayTransport, halfClose, send

#: Read size for the memory BIOs: large enough that one 64 KiB socket read
#: is usually one call, small enough that pyOpenSSL's per-call buffer
#: allocation stays cheap.
_CHUNK = 2**17
#: The same for the direct calls, whose one buffer is allocated once: large
#: enough for what a 256 KiB relay read becomes (see
#: L{gateway.splicerelay._BULK_READ}) in one read.
_RAW_CHUNK = 2**19

# The data path, once the handshake is done, calls OpenSSL through the cffi
# binding pyOpenSSL itself uses (OpenSSL._util), on the SSL object and
# memory BIOs of the pyOpenSSL connection.  Each pyOpenSSL call allocates
# its own buffer, copies out of it, and turns "no more data" into an
# exception, which its own code then catches: measured on one small
# request and its answer, 7.3 us in this module, 2.7 us of it OpenSSL's.
# Calling the same four functions directly (SSL_read, SSL_write, BIO_read,
# BIO_write) with one reused buffer does the same work for 2.7 us.  The
# handshake, shutdown and everything else stay on pyOpenSSL's API: that
# is where its callbacks (certificate verification, ALPN, OCSP) run and
# report errors, and none of them runs after the handshake.  Should a
# pyOpenSSL release move these internals, L{_rawHandles} finds out and the
# public API is used instead, slower and otherwise the same.
try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _SSL_read = _lib.SSL_read
    _SSL_write = _lib.SSL_write
    _SSL_get_error = _lib.SSL_get_error
    _BIO_read = _lib.BIO_read
    _BIO_write = _lib.BIO_write
    _ERR_clear_error = _lib.ERR_clear_error
    _ERR_get_error = _lib.ERR_get_error
    _ERR_reason_error_string = _lib.ERR_reason_error_string
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
    #: One buffer for every connection: the reactor is single-threaded and
    #: every read is copied out of it at once.
    _BUFFER = _ffi.new("char[]", _RAW_CHUNK)
    _VIEW = _ffi.buffer(_BUFFER)
except (ImportError, AttributeError):  # pragma: no cover - older/newer pyOpenSSL
    _lib = None


# Two context settings pyOpenSSL has no call for, through the same binding
# and the context's C{SSL_CTX*} (C{Context._context}).  Each has a public
# fallback, used when either is missing from a pyOpenSSL release.


def _contextHandle(context: SSL.Context) -> Any:
    if _lib is None:
        return None
    return getattr(context, "_context", None)


def setGroups(context: SSL.Context, names: tuple[str, ...]) -> bool:
    """
    Set the key exchange groups a context offers and accepts, preferred
    first (C{SSL_CTX_set1_groups_list}, which the binding spells with its
    older name C{SSL_CTX_set1_curves_list}).

    Without the binding, a single elliptic curve still goes through the
    public C{Context.set_tmp_ecdh}, which OpenSSL 3 turns into that one
    group; anything else cannot be set.

    @return: whether OpenSSL took the list (it refuses a name it does not
        know, or one list with nothing usable in it).
    """
    handle = _contextHandle(context)
    setList = getattr(_lib, "SSL_CTX_set1_curves_list", None)
    if handle is not None and setList is not None:
        ok = bool(setList(handle, ":".join(names).encode("ascii")))
        _lib.ERR_clear_error()
        return ok
    if len(names) == 1:  # pragma: no cover - pyOpenSSL without the binding
        from cryptography.hazmat.primitives.asymmetric import ec

        curves: dict[str, ec.EllipticCurve] = {
            "secp256r1": ec.SECP256R1(),
            "prime256v1": ec.SECP256R1(),
            "p-256": ec.SECP256R1(),
            "secp384r1": ec.SECP384R1(),
            "p-384": ec.SECP384R1(),
            "secp521r1": ec.SECP521R1(),
            "p-521": ec.SECP521R1(),
        }
        curve = curves.get(names[0].lower())
        if curve is not None:
            context.set_tmp_ecdh(curve)
            return True
    return False  # pragma: no cover - pyOpenSSL without the binding


def refuseEarlyData(context: SSL.Context) -> bool:
    """
    Make sure a server context never accepts TLS 1.3 early data (0-RTT):
    C{SSL_CTX_set_max_early_data(ctx, 0)}, which is also what its tickets
    then announce, so clients do not even try.

    OpenSSL's default is already 0, and the gateway never calls
    C{SSL_read_early_data}, without which OpenSSL accepts none; this sets
    it explicitly so a changed default cannot open it.  Without the
    binding the default stays, which is the same value.

    @return: whether the setting was made explicitly.
    """
    handle = _contextHandle(context)
    setMax = getattr(_lib, "SSL_CTX_set_max_early_data", None)
    if handle is None or setMax is None:  # pragma: no cover - other pyOpenSSL
        return False
    return bool(setMax(handle, 0))


def _rawHandles(connection: SSL.Connection) -> tuple[Any, Any, Any] | None:
    """
    The connection's C{SSL*} and its two memory C{BIO*}s, for the direct
    calls, or L{None} to use pyOpenSSL's API (no binding, or a connection
    that is not on memory BIOs, or the fast paths off: L{gateway.portable}).
    """
    if _lib is None or PORTABLE:
        return None
    ssl = getattr(connection, "_ssl", None)
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    if ssl is None or into is None or out is None:
        return None
    return ssl, into, out


class TLSEvents(Protocol):
    """
    What a L{TLSTransport} reports to the session that owns it.
    """

    def tlsHandshakeDone(self) -> None: ...

    def tlsHandshakeFailed(self, reason: str) -> None: ...

    def tlsData(self, data: bytes) -> None: ...

    def tlsReadClosed(self) -> None: ...

    def tlsError(self, reason: str) -> None:
        """
        A TLS error after the handshake (a corrupt record, a bad KeyUpdate,
        an unexpected message): OpenSSL's alert has been sent and the
        connection is being closed.

        @param reason: OpenSSL's reason, for the access log.
        """


#: The reason logged when OpenSSL fails a record without saying why.
_UNKNOWN_TLS_ERROR = "TLS error after the handshake"


def _queuedReasons() -> str:
    """
    Empty OpenSSL's error queue (so nothing stays behind for the next
    connection's calls to find) and say what it held, as L{describeError}
    does for a pyOpenSSL exception.
    """
    reasons = []
    while code := _ERR_get_error():
        text = _ERR_reason_error_string(code)
        reasons.append(
            _ffi.string(text).decode("ascii", "replace")
            if text != _ffi.NULL
            else f"OpenSSL error {code:#x}"
        )
    return "; ".join(dict.fromkeys(reasons)) or _UNKNOWN_TLS_ERROR


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
        return "connection closed during the handshake"
    return str(error) or type(error).__name__


@implementer(IPushProducer)
class TLSTransport:
    """
    @ivar connection: the OpenSSL connection, for the access log (version,
        cipher, group, peer certificate) and for upstream verification.
    @ivar handshakeDone: the handshake completed; plaintext flows from now.
    @ivar _transport: the TCP transport carrying the ciphertext.
    @ivar _countOut: the record whose C{bytesOut} counts ciphertext written
        to the client, or L{None} on the upstream side.
    @ivar _readClosed: the peer's C{close_notify} (or its FIN) was reported.
    @ivar _writeClosed: we sent C{close_notify}; nothing may be written.
    """

    __slots__ = (
        "_countOut",
        "_events",
        "_failed",
        "_raw",
        "_readClosed",
        "_transport",
        "_writeClosed",
        "connection",
        "handshakeDone",
    )

    def __init__(
        self,
        connection: SSL.Connection,
        transport: RelayTransport,
        events: TLSEvents,
        countOut: ConnectionRecord | None = None,
    ) -> None:
        self.connection = connection
        self.handshakeDone = False
        self._transport = transport
        self._events = events
        self._countOut = countOut
        self._readClosed = False
        self._writeClosed = False
        self._failed = False
        self._raw = _rawHandles(connection)

    # ciphertext in

    def startHandshake(self) -> None:
        """
        Client side: send the ClientHello.
        """
        self._handshake()

    def ciphertextReceived(self, data: bytes) -> None:
        if self._failed:
            return
        raw = self._raw
        written = 0
        if raw is not None and type(data) is bytes:
            written = max(0, _BIO_write(raw[1], data, len(data)))
        if written < len(data):
            # No direct call, or it failed: pyOpenSSL raises as it always did.
            self.connection.bio_write(data[written:] if written else data)
        if not self.handshakeDone:
            self._handshake()
            if not self.handshakeDone:
                return
        self._readPlaintext()

    def ciphertextEnded(self) -> None:
        """
        The TCP peer sent FIN.  Without a C{close_notify} first this is a
        truncation in TLS terms, but clients do it all the time; the relay
        treats it as the end of the stream, as NGINX does.
        """
        if self.handshakeDone:
            self._reportReadClosed()
        elif not self._failed:
            self._fail("connection closed during the handshake")

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

    def _readPlaintext(self) -> None:
        """
        Decrypt everything the last ciphertext completed and hand it on in
        one piece.

        C{SSL_read} returns at most one record (16 KiB) per call, so a
        64 KiB socket read is four of them; delivered one by one, each
        would be a C{send} of its own upstream.  Joined, it is one.
        """
        if self._readClosed:
            self._flush()
            return
        chunks: list[bytes] = []
        ended = False
        broken: str | None = None
        raw = self._raw
        if raw is not None:
            ssl = raw[0]
            while True:
                count = _SSL_read(ssl, _BUFFER, _RAW_CHUNK)
                if count > 0:
                    chunks.append(_VIEW[:count])
                    continue
                error = _SSL_get_error(ssl, count)
                if error == _ZERO_RETURN:
                    ended = True
                elif error != _WANT_READ:
                    # What pyOpenSSL would raise as an SSL.Error.
                    broken = _queuedReasons()
                break
        else:
            recv = self.connection.recv
            while True:
                try:
                    chunks.append(recv(_CHUNK))
                except SSL.WantReadError:
                    break
                except SSL.ZeroReturnError:
                    ended = True
                    break
                except SSL.Error as e:
                    broken = describeError(e) or _UNKNOWN_TLS_ERROR
                    break
        if chunks:
            self._events.tlsData(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if broken is not None:
            self._broken(broken)
            return
        if ended:
            self._reportReadClosed()
        self._flush()

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

        A memory BIO read returns everything it holds up to the size asked
        for, so a read shorter than L{_CHUNK} emptied it: only a full one
        needs another read (and the C{WantReadError} that ends it).
        """
        raw = self._raw
        if raw is not None:
            out = raw[2]
            count = _BIO_read(out, _BUFFER, _RAW_CHUNK)
            if count <= 0:
                return
            data = _VIEW[:count]
            if count == _RAW_CHUNK:
                chunks = [data]
                while count == _RAW_CHUNK:
                    count = _BIO_read(out, _BUFFER, _RAW_CHUNK)
                    if count <= 0:
                        break
                    chunks.append(_VIEW[:count])
                data = b"".join(chunks)
        else:
            read = self.connection.bio_read
            try:
                data = read(_CHUNK)
            except SSL.WantReadError:
                return
            if len(data) == _CHUNK:
                chunks = [data]
                while True:
                    try:
                        chunk = read(_CHUNK)
                    except SSL.WantReadError:
                        break
                    chunks.append(chunk)
                    if len(chunk) < _CHUNK:
                        break
                data = b"".join(chunks)
        if self._countOut is not None:
            self._countOut.bytesOut += len(data)
        send(self._transport, data)

    # the plaintext side's transport (what the relay calls)

    def write(self, data: bytes) -> None:
        if self._writeClosed or self._failed or not data:
            return
        raw = self._raw
        if raw is not None and type(data) is bytes:
            # A memory BIO never fills, so one SSL_write takes it all; what
            # it does not (an error) goes to sendall, which raises as it
            # always did.
            written = _SSL_write(raw[0], data, len(data))
            if written != len(data):
                if written <= 0:
                    _ERR_clear_error()
                else:
                    data = data[written:]
                self.connection.sendall(data)
        else:
            self.connection.sendall(data)
        self._flush()

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
