"""
The quarantine: every use of Twisted's and pyOpenSSL's private attributes.

The gateway's fast paths save system calls, Python frames and copies that
the public APIs of Twisted and pyOpenSSL cannot avoid, by reaching into
their internals.  Internals move between releases without notice, so all of
them are here, in this one module, and nowhere else in L{gateway}:

  - L{send} and L{halfClose}: a direct C{send}/C{shutdown} on an idle
    Twisted TCP transport instead of a reactor turn and two C{epoll_ctl}
    (C{tcp.Connection}'s C{_writeDisconnecting}, C{_aborting},
    C{_tempDataLen}, C{_closeWriteConnection}).
  - L{unsentBytes}: what a TCP transport still holds to send, which decides
    whether the splice relay may take its socket over.
  - L{DirectRecords} (L{directRecords}): the TLS data path through
    OpenSSL's functions directly, on
    the pyOpenSSL connection's C{SSL*} and memory C{BIO*}s (the cffi
    binding C{OpenSSL._util} and C{Connection._ssl}, C{_into_ssl},
    C{_from_ssl}), with one reused buffer.
  - L{setGroups}, L{refuseEarlyData}: two context settings pyOpenSSL has no
    call for (C{Context._context}).
  - L{sessionReused}, L{verifyErrorText}: two facts pyOpenSSL does not tell.
  - L{gateway.fast.hub}: the epoll hub nested in the reactor, and its
    reader of a Twisted TCP transport, a copy of C{tcp.Connection.doRead}
    calling C{transport._dataReceived} (a module of its own, beside this
    one, in the same quarantine).
  - L{acceptExclusively}: a worker's shared listening socket registered
    with C{EPOLLEXCLUSIVE} in the reactor's epoll set (C{_poller},
    C{_reads}, C{_writes}).
  - L{acceptor}: the hub's accept through the standard library's C
    C{socket._accept} (not Twisted's or pyOpenSSL's, but as private).

Each has a fallback on public APIs only, taken when the internal is missing
(another release) and whenever C{TLSGATEWAY_PORTABLE=1} is set
(L{gateway.fast.portable}, the one switch): then nothing here touches a private
attribute, and the fallbacks are what every connection runs on.  The rest
of the gateway calls the public functions of this module and never the
internals themselves.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from twisted.internet import tcp
from twisted.logger import Logger
from zope.interface import implementer

from gateway.core.records import IRecordLayer
from gateway.fast.portable import EPOLL, PORTABLE

if TYPE_CHECKING:
    from OpenSSL import SSL

    from gateway.core.transports import RelayTransport


_log = Logger()


# --- TCP transports ------------------------------------------------------


def hasInternals(cls: type, names: tuple[str, ...]) -> bool:
    """
    C{cls} (a Twisted transport class) has every one of C{names}, as a
    class attribute or as one that the C{__init__} or C{write} of a class
    in its MRO sets on the instance (which is how Twisted keeps
    C{_tempDataLen}): the check that turns a fast path off, at import, on
    a Twisted release that renamed what it uses.
    """
    known = set(dir(cls))
    for klass in cls.__mro__:
        for method in ("__init__", "write"):
            code = getattr(vars(klass).get(method), "__code__", None)
            known.update(getattr(code, "co_names", ()))
    return all(name in known for name in names)


#: Direct sends and half-closes (L{send}, L{halfClose}): the fast paths are
#: on and this Twisted has what they use.
DIRECT_TCP: Final = not PORTABLE and hasInternals(
    tcp.Connection,
    (
        "_writeDisconnecting",
        "_writeDisconnected",
        "_aborting",
        "_tempDataLen",
        "_closeWriteConnection",
    ),
)
#: Hub readers (L{gateway.fast.hub.HubReader}): epoll is there and wanted, and this
#: Twisted has what the copy of its C{doRead} uses.
HUB_READER: Final = EPOLL and hasInternals(
    tcp.Connection, ("_aborting", "_dataReceived")
)


def send(transport: RelayTransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when that is safe.

    Twisted's C{write} never sends: it queues, registers the socket for
    writability (an C{epoll_ctl}), sends on the reactor's next turn, and
    unregisters it (another C{epoll_ctl}).  For a relay that forwards a
    request per read, that is three system calls and a reactor turn per
    chunk instead of one C{send}; on a keep-alive TLS connection it was
    the largest cost after OpenSSL.  So on a TCP transport with nothing
    queued, this sends directly; what the kernel does not take (or an
    error) goes to C{write} as before, so ordering, backpressure
    (Twisted's buffer and producer pauses) and error reporting stay
    Twisted's.  Any other transport (TLS, tests) gets C{write}.
    """
    # idleTCP's test, written out: this runs twice per relayed request.
    if (
        DIRECT_TCP
        and isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._aborting
        and not transport._tempDataLen
        and not transport.dataBuffer
        and not transport.TLS
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Twisted's own send meets the error again, and reports it
            # through connectionLost as it always does.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def idleTCP(transport: object) -> bool:
    """
    C{transport} is a plain TCP transport, open, and has nothing queued:
    what Twisted would do on its next writable event can be done now.
    Never with the fast paths off (L{gateway.fast.portable}), nor on a Twisted
    without what this uses (L{DIRECT_TCP}).
    """
    return bool(
        DIRECT_TCP
        and isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._aborting
        and not transport._tempDataLen
        and not transport.dataBuffer
        and not transport.TLS
    )


def halfClose(transport: RelayTransport) -> None:
    """
    Send FIN on C{transport} (C{loseWriteConnection}), at once when nothing
    is queued before it.

    Twisted's C{loseWriteConnection} always registers for writability and
    shuts the socket down on the next reactor turn, after its buffer has
    drained: with an empty buffer, two C{epoll_ctl} and a turn for a
    C{shutdown}.  This does what that turn would do (the C{shutdown} and
    the protocol's C{writeConnectionLost}) now, and marks the transport
    write-closed as Twisted does, so that a later C{loseConnection} closes
    it at once too; with bytes still queued it is Twisted's, unchanged.
    """
    if not (isinstance(transport, tcp.Connection) and idleTCP(transport)):
        transport.loseWriteConnection()
        return
    transport._writeDisconnecting = True
    transport._writeDisconnected = True
    transport._closeWriteConnection()


# --- OpenSSL ------------------------------------------------------------


#: Read size of the direct calls, whose one buffer is allocated once: large
#: enough for what a 256 KiB relay read (L{_BULK_READ}) becomes in one read.
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
# pyOpenSSL release move these internals, L{directRecords} finds out and the
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

#: The direct OpenSSL calls on the data path (L{directRecords}): the fast
#: paths are on and this pyOpenSSL has the binding.
DIRECT_TLS: Final = not PORTABLE and _lib is not None


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
    if len(names) == 1:
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
    return False


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
    if handle is None or setMax is None:
        return False
    return bool(setMax(handle, 0))


#: The reason logged when OpenSSL fails a record without saying why.
UNKNOWN_TLS_ERROR: Final = "TLS error after the handshake"


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
    return "; ".join(dict.fromkeys(reasons)) or UNKNOWN_TLS_ERROR


def directRecords(connection: SSL.Connection) -> DirectRecords | None:
    """
    The direct record layer of C{connection}, or L{None} to use pyOpenSSL's
    API (no binding, a connection that is not on memory BIOs, or the fast
    paths off: L{gateway.fast.portable}).
    """
    if not DIRECT_TLS:
        return None
    ssl = getattr(connection, "_ssl", None)
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    if ssl is None or into is None or out is None:
        return None
    return DirectRecords(connection, ssl, into, out)


@implementer(IRecordLayer)
class DirectRecords:
    """
    The TLS data path through OpenSSL's functions directly, on the
    pyOpenSSL connection's C{SSL*} and its two memory C{BIO*}s.  What a
    direct call does not take (an error) goes to pyOpenSSL's API, which
    raises as it always did.
    """

    __slots__ = ("_connection", "_into", "_out", "_ssl")

    def __init__(
        self, connection: SSL.Connection, ssl: Any, into: Any, out: Any
    ) -> None:
        self._connection = connection
        self._ssl = ssl
        self._into = into
        self._out = out

    def feed(self, data: bytes) -> None:
        if type(data) is not bytes:
            self._connection.bio_write(data)
            return
        count: int = _BIO_write(self._into, data, len(data))
        if count < len(data):
            self._connection.bio_write(data[count:] if count > 0 else data)

    def drain(self) -> bytes | None:
        """
        A read shorter than the buffer emptied the BIO.
        """
        out = self._out
        count = _BIO_read(out, _BUFFER, _RAW_CHUNK)
        if count <= 0:
            return None
        data: bytes = _VIEW[:count]
        if count == _RAW_CHUNK:
            chunks = [data]
            while count == _RAW_CHUNK:
                count = _BIO_read(out, _BUFFER, _RAW_CHUNK)
                if count <= 0:
                    break
                chunks.append(_VIEW[:count])
            data = b"".join(chunks)
        return data

    def decrypt(self, data: bytes) -> tuple[bytes, bool, str | None, bytes | None]:
        """
        C{BIO_write}, C{SSL_read} until it wants more, C{BIO_read}: a
        relay's read in one Python call (L{feed} and L{drain} written out,
        since each call is a measurable share of a small request).
        """
        if data:
            if type(data) is not bytes:
                self._connection.bio_write(data)
            else:
                fed: int = _BIO_write(self._into, data, len(data))
                if fed < len(data):
                    self._connection.bio_write(data[fed:] if fed > 0 else data)
        ssl = self._ssl
        count = _SSL_read(ssl, _BUFFER, _RAW_CHUNK)
        if count > 0:
            plaintext: bytes = _VIEW[:count]
            count = _SSL_read(ssl, _BUFFER, _RAW_CHUNK)
            if count > 0:
                chunks = [plaintext]
                while count > 0:
                    chunks.append(_VIEW[:count])
                    count = _SSL_read(ssl, _BUFFER, _RAW_CHUNK)
                plaintext = b"".join(chunks)
        else:
            plaintext = b""
        error = _SSL_get_error(ssl, count)
        ended = error == _ZERO_RETURN
        broken = _queuedReasons() if error != _WANT_READ and not ended else None
        count = _BIO_read(self._out, _BUFFER, _RAW_CHUNK)
        if count <= 0:
            return plaintext, ended, broken, None
        out: bytes = _VIEW[:count]
        if count == _RAW_CHUNK:
            out += self.drain() or b""
        return plaintext, ended, broken, out

    def encrypt(self, data: bytes) -> bytes | None:
        """
        C{SSL_write} then C{BIO_read}, in one call from the TLS layer: a
        memory BIO never fills, so one C{SSL_write} takes it all.  What a
        direct call does not take (an error) goes to pyOpenSSL's
        C{sendall}, which raises as it always did.
        """
        if type(data) is not bytes:
            self._connection.sendall(data)
            return self.drain()
        written = _SSL_write(self._ssl, data, len(data))
        if written != len(data):
            if written <= 0:
                _ERR_clear_error()
                self._connection.sendall(data)
            else:
                self._connection.sendall(data[written:])
        count = _BIO_read(self._out, _BUFFER, _RAW_CHUNK)
        if count <= 0:
            return None
        out: bytes = _VIEW[:count]
        if count == _RAW_CHUNK:
            out += self.drain() or b""
        return out


def sessionReused(connection: SSL.Connection) -> bool:
    """
    The connection's handshake resumed a session (C{SSL_session_reused}),
    which pyOpenSSL does not tell.  Without the binding: L{False}, so a resumed session's certificate is reported as
    the session's and this connection's both (the PROXY v2 SSL TLV).
    """
    if _lib is None:
        return False
    ssl = getattr(connection, "_ssl", None)
    if ssl is None:  # pragma: no cover - another pyOpenSSL
        return False
    return bool(_lib.SSL_session_reused(ssl))


def verifyErrorText(number: int) -> str:
    """
    OpenSSL's words for a certificate verification error number
    (C{X509_verify_cert_error_string}); without the binding, the number
    alone.
    """
    describe = getattr(_lib, "X509_verify_cert_error_string", None)
    if describe is None:
        return f"verification error {number}"
    return bytes(_ffi.string(describe(number))).decode("ascii", "replace")


def hasUnsentBytes(transport: tcp.Connection) -> bool:
    """
    C{transport} still holds bytes to send: Twisted's buffer
    (C{dataBuffer} past C{offset}) or the writes not yet joined into it
    (C{_tempDataLen}).  Where a Twisted release has no C{_tempDataLen},
    the answer is yes (it cannot be told), which keeps the splice relay
    off that connection.
    """
    temporary = getattr(transport, "_tempDataLen", None)
    if temporary is None:
        return True
    return bool(len(transport.dataBuffer) - transport.offset + temporary)


# --- shared listening sockets ---------------------------------------------


def acceptor(
    listening: socket.socket,
) -> Callable[[], tuple[socket.socket, Any]]:
    """
    C{listening.accept}, without what it does per call that the hub does
    not need: C{socket.accept} converts the listening socket's family and
    type to enums for every connection it makes (ten Python calls, a
    tenth of what the hub's accept of a connection runs), so this takes
    the descriptor from the C method C{_accept} and makes the socket from
    the family read once.

    Fallback (the fast paths off, or a Python without C{_accept}):
    C{listening.accept} itself.
    """
    raw = getattr(listening, "_accept", None)
    if PORTABLE or raw is None:
        return listening.accept
    family = int(listening.family)
    kind = socket.SOCK_STREAM
    make = socket.socket

    def accept() -> tuple[socket.socket, Any]:
        fd, address = raw()
        return make(family, kind, 0, fd), address

    return accept


#: C{EPOLLEXCLUSIVE} (Linux 4.5 and later), where Python has it.
_EXCLUSIVE: Final[int] = getattr(select, "EPOLLEXCLUSIVE", 0)


def acceptExclusively(reactor: object, port: object) -> bool:
    """
    Wake only one of the processes sharing C{port}'s listening socket per
    new connection, as NGINX does with C{EPOLLEXCLUSIVE}; say whether it
    was done.

    With C{workers > 1} every worker's reactor watches the same listening
    socket, and by default the kernel wakes them all for each connection:
    one accepts it, the others find nothing (C{accept4} fails with
    C{EAGAIN}), each after a full reactor turn.  C{EPOLLEXCLUSIVE} can only
    be given when a descriptor is added to an epoll set, and Twisted's
    C{addReader} does not give it, so the port's registration in the
    reactor's own epoll set (C{EPollReactor._poller}, C{_reads},
    C{_writes}) is made again with it.  Twisted's later C{stopReading}
    unregisters it as usual; a C{startReading} after that registers it
    without the flag, which costs wake-ups, never connections.

    Fallback (no epoll, the fast paths off, another reactor or release):
    nothing is done, and every worker wakes as before.
    """
    if PORTABLE or not _EXCLUSIVE:
        return False
    poller = getattr(reactor, "_poller", None)
    reads = getattr(reactor, "_reads", None)
    writes = getattr(reactor, "_writes", None)
    fileno = getattr(port, "fileno", None)
    if (
        not isinstance(poller, select.epoll)
        or not isinstance(reads, set)
        or not isinstance(writes, set)
        or fileno is None
    ):
        return False
    fd = fileno()
    if fd not in reads or fd in writes:
        return False
    try:
        poller.unregister(fd)
    except OSError:
        return False
    try:
        poller.register(fd, select.EPOLLIN | _EXCLUSIVE)
    except OSError:
        # A kernel without the flag: put back what Twisted had.
        poller.register(fd, select.EPOLLIN)
        return False
    return True
