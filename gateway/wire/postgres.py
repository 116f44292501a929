"""
Read and write the few PostgreSQL protocol messages the gateway must
understand, without doing any I/O.

A C{protocol = postgres} listener cannot start with the ClientHello reader:
a PostgreSQL client first sends an untagged "preamble" in the clear (an
C{SSLRequest}, perhaps a C{GSSENCRequest} before it, or a C{CancelRequest},
or a plain C{StartupMessage}), and only PostgreSQL 17's
C{sslnegotiation=direct} starts with a TLS record straight away.
L{PreambleReader} turns those first bytes into one event the gateway acts
on, and hands back the bytes that follow (the TLS records) as C{rest} for
L{gateway.wire.helloreader.ClientHelloReader}.  Towards the server, the gateway
sends an C{SSLRequest} of its own (L{SSL_REQUEST}) and reads the one-byte
answer, and learns the cancel keys from C{BackendKeyData}, with the readers
of L{gateway.wire.pgbackend}, so that a later C{CancelRequest} reaches the
server that issued the key.

The rules are the server's own (C{ProcessSSLStartup} and
C{ProcessStartupPacket} in C{src/backend/tcop/backend_startup.c}), so that
the gateway refuses exactly what PostgreSQL would refuse, and the message
layouts are those of the protocol documentation, chapter "Frontend/Backend
Protocol", sections "Message Formats" and "Message Flow: SSL Session
Encryption".  Protocol 3.2 (PostgreSQL 18) is accepted as well: its cancel
keys are 4 to 256 bytes instead of exactly 4, so keys are C{bytes} here.

Like L{gateway.wire.clienthello}, this module answers with an event, L{NEED_MORE}
or a L{PostgresError}, never with C{IndexError} or C{UnicodeDecodeError}; it
must not import Twisted or OpenSSL.

Passwords: the startup message holds none (authentication comes after it),
and the gateway reads nothing the client sends after the startup message, so
a C{PasswordMessage} never reaches this module and can never be logged.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

import attrs

from gateway.wire.clienthello import NEED_MORE, _NeedMore

__all__ = [
    "GSS_REFUSED",
    "MAX_STARTUP_LENGTH",
    "NEED_MORE",
    "SSL_ACCEPTED",
    "SSL_REQUEST",
    "BadLength",
    "CancelKey",
    "CancelRequest",
    "DirectTLS",
    "GSSENCRequest",
    "NotPostgres",
    "OutOfOrder",
    "PostgresError",
    "PreambleEvent",
    "PreambleReader",
    "SSLRequest",
    "StartupMessage",
    "StartupMessageTooLarge",
    "UnsupportedRequest",
    "cancelRequest",
    "looksLikePostgres",
    "parseStartupMessage",
]

# Request codes: a version number whose major half is 1234, which no
# protocol version will ever be ("Message Formats": CancelRequest,
# SSLRequest, GSSENCRequest).
_CANCEL_CODE: Final = 1234 << 16 | 5678  # 80877102
_SSL_CODE: Final = 1234 << 16 | 5679  # 80877103
_GSS_CODE: Final = 1234 << 16 | 5680  # 80877104
_REQUEST_MAJOR: Final = 1234
_PROTOCOL_MAJOR: Final = 3

MAX_STARTUP_LENGTH: Final = 10000
"""
Most bytes a startup packet may hold after its length word: the server's
C{MAX_STARTUP_PACKET_LENGTH}.  Longer packets are refused by PostgreSQL
itself, so the gateway need not buffer more.
"""

# Cancel keys: exactly 4 bytes in protocol 3.0, 4 to 256 bytes in 3.2.
_MIN_KEY: Final = 4
_MAX_KEY: Final = 256
_TLS_HANDSHAKE: Final = 0x16

SSL_REQUEST: Final = (8).to_bytes(4, "big") + _SSL_CODE.to_bytes(4, "big")
"""The C{SSLRequest} the gateway sends an upstream server before TLS."""

SSL_ACCEPTED: Final = b"S"
"""The gateway's answer to a client's C{SSLRequest}: go on with TLS."""

GSS_REFUSED: Final = b"N"
"""
The gateway's answer to a C{GSSENCRequest}: the gateway never does GSSAPI
encryption, and the client then sends an C{SSLRequest} or a startup message.
"""


class PostgresError(Exception):
    """
    The bytes are not the PostgreSQL messages the gateway expects here.

    Every failure of this module's readers is one of these, so the caller
    needs one C{except} to refuse the connection; the message is for the
    operator, the slug for machines.

    @cvar reason: stable slug for access-log fields and metric labels.
    """

    reason = "malformed"


class NotPostgres(PostgresError):
    """
    The peer does not speak PostgreSQL at all: a client whose first byte
    makes a length no startup packet can have (an HTTP request, say; a
    first byte 0x16 is direct TLS, not this), or a server that answered an
    C{SSLRequest} with something other than C{S}, C{N} or C{E}.  Kept apart
    because it means a misdirected peer rather than a broken driver.
    """

    reason = "not_postgres"


class BadLength(PostgresError):
    """
    A length field is impossible for its message (an C{SSLRequest} that is
    not 8 bytes, a cancel key shorter than 4 bytes...).
    """

    reason = "bad_length"


class StartupMessageTooLarge(PostgresError):
    """
    A startup packet longer than L{MAX_STARTUP_LENGTH}: PostgreSQL refuses
    these, and buffering them would let a client pin memory.
    """

    reason = "too_large"


class UnsupportedRequest(PostgresError):
    """
    A request code or protocol version that PostgreSQL does not accept:
    protocol 2.0 (dropped in PostgreSQL 14) or an unknown special request.
    """

    reason = "unsupported"


class OutOfOrder(PostgresError):
    """
    A request the server would not accept at this point of the preamble: a
    second C{GSSENCRequest}, an C{SSLRequest} inside TLS, a TLS record after
    a C{GSSENCRequest} (direct TLS must open the connection).
    """

    reason = "out_of_order"


@attrs.frozen
class CancelKey:
    """
    The key that lets a client cancel a query of one server process: sent by
    the server in C{BackendKeyData}, sent back in a C{CancelRequest}.

    Hashable, so the gateway can map keys to the server that issued them.

    @ivar processId: the server process ID.
    @ivar secretKey: 4 bytes in protocol 3.0, up to 256 in 3.2.  Left out of
        C{repr}: whoever holds it can cancel that session's queries.
    """

    processId: int
    secretKey: bytes = attrs.field(repr=False)


@attrs.frozen
class GSSENCRequest:
    """
    The client asks for GSSAPI encryption: answer L{GSS_REFUSED} and call
    L{PreambleReader.feed} again (with C{b""} if nothing new arrived), as
    the client goes on with an C{SSLRequest} or a startup message.
    """


@attrs.frozen
class SSLRequest:
    """
    The client asks for TLS the traditional way: answer L{SSL_ACCEPTED};
    the TLS handshake follows.

    @ivar rest: bytes after the request, the start of the ClientHello, for
        L{gateway.wire.helloreader.ClientHelloReader}.  A client must wait for
        the answer, so this is normally empty; any bytes here go to the TLS
        layer and are never read as plaintext (what CVE-2021-23214 was
        about), so they cannot smuggle a message in.
    """

    rest: bytes = b""


@attrs.frozen
class DirectTLS:
    """
    The connection starts with a TLS record (PostgreSQL 17
    C{sslnegotiation=direct}): nothing to answer.

    @ivar rest: every byte received, untouched, for the ClientHello reader.
    """

    rest: bytes


@attrs.frozen
class CancelRequest:
    """
    The client asks to cancel the query of the session that owns C{key}.
    Nothing is answered: the server closes the connection.

    @ivar rest: bytes after the request (a well-behaved client sends none).
    """

    key: CancelKey
    rest: bytes = b""


@attrs.frozen
class StartupMessage:
    """
    A startup packet: the connection goes on without encryption (or it was
    read inside TLS, see L{PreambleReader}).

    @ivar version: the protocol version, C{(3, 0)} or C{(3, 2)}.
    @ivar parameters: name/value pairs in the client's order, decoded as
        UTF-8 with replacement characters: they are for routing and for the
        log, while C{raw} keeps the exact bytes to forward.
    @ivar raw: the whole packet, length word included, as received.
    @ivar rest: bytes after the packet (a client waits for the server's
        authentication request, so normally none).
    """

    version: tuple[int, int]
    parameters: tuple[tuple[str, str], ...]
    raw: bytes = attrs.field(repr=False)
    rest: bytes = b""

    def get(self, name: str) -> str | None:
        """
        The value of parameter C{name}, or L{None}.  The last one wins if a
        client repeats a name, as it does in the server.
        """
        found = None
        for key, value in self.parameters:
            if key == name:
                found = value
        return found

    @property
    def user(self) -> str:
        """The C{user} parameter, which the server requires (checked here)."""
        return self.get("user") or ""

    @property
    def database(self) -> str:
        """The C{database} parameter; the server defaults it to the user."""
        return self.get("database") or self.user

    @property
    def applicationName(self) -> str | None:
        return self.get("application_name")


PreambleEvent = GSSENCRequest | SSLRequest | DirectTLS | CancelRequest | StartupMessage


class _Stage(enum.Enum):
    """
    Where the preamble is: which requests the server would accept next.

    The transitions (made in L{PreambleReader.feed} and C{_advance}, checked
    in C{_check}):
      - FIRST: anything; a C{GSSENCRequest} leads to AFTER_GSS, every other
        request ends the preamble (DONE).
      - AFTER_GSS: C{SSLRequest}, C{CancelRequest} or a startup message
        (the server's C{gss_done} flag: one GSSENCRequest only, and the
        direct-TLS check runs before the first packet only).
      - ENCRYPTED: inside TLS (C{ssl_done} and C{gss_done} both set):
        C{CancelRequest} or a startup message.
    """

    FIRST = "first"
    AFTER_GSS = "after-gss"
    ENCRYPTED = "encrypted"
    DONE = "done"


class PreambleReader:
    """
    Read what a PostgreSQL client sends before TLS (or instead of it).

    Fed the client's bytes as they arrive, it returns one event per request:
    L{GSSENCRequest} (answer L{GSS_REFUSED} and feed on), then exactly one
    of L{SSLRequest}, L{DirectTLS}, L{CancelRequest} or L{StartupMessage},
    which ends the preamble and carries the bytes that follow as C{rest}.
    After that last event the reader is spent: the caller has handed off.

    The gateway always accepts TLS, so an C{SSLRequest} always ends the
    preamble; the order rules are otherwise the server's (see L{_Stage}).
    Checks fire as soon as the bytes they look at arrive (the first byte,
    the length word, the request code), so a client that sends HTTP is
    refused at once, and the events and errors for a byte stream do not
    depend on how it was cut into C{feed} calls.  Once a L{PostgresError}
    has been raised, C{feed} raises it again.

    @ivar _encrypted: read inside TLS (after termination): only a startup
        message or a C{CancelRequest} may come, as in the server.
    @ivar _buffer: bytes of the request being read; at most one startup
        packet (L{MAX_STARTUP_LENGTH} plus its length word) is held, beyond
        whatever one C{feed} call brings.
    """

    def __init__(self, *, encrypted: bool = False) -> None:
        self._stage = _Stage.ENCRYPTED if encrypted else _Stage.FIRST
        self._buffer = bytearray()
        self._error: PostgresError | None = None

    def feed(self, data: bytes) -> PreambleEvent | Literal[_NeedMore.NEED_MORE]:
        """
        Take the next bytes the client sent.

        @return: the next event, or L{NEED_MORE} while the request is
            incomplete.  After a L{GSSENCRequest}, call again even with no
            new data: bytes already buffered are read then, not before the
            caller has answered.
        @raise PostgresError: the bytes are not a request PostgreSQL would
            accept here (L{NotPostgres}, L{BadLength},
            L{StartupMessageTooLarge}, L{UnsupportedRequest},
            L{OutOfOrder}, or malformed startup parameters).
        @raise RuntimeError: called again after the preamble ended.
        """
        if self._error is not None:
            raise self._error
        if self._stage is _Stage.DONE:
            raise RuntimeError("the preamble was already read; hand off instead")
        self._buffer += data
        try:
            event = self._advance()
        except PostgresError as e:
            self._error = e
            self._buffer.clear()
            raise
        if event is None:
            return NEED_MORE
        if not isinstance(event, GSSENCRequest):
            self._stage = _Stage.DONE
            self._buffer.clear()
        return event

    def _advance(self) -> PreambleEvent | None:
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] == _TLS_HANDSHAKE:
            if self._stage is _Stage.FIRST:
                return DirectTLS(bytes(buffer))
            raise OutOfOrder(
                "a TLS record after "
                + (
                    "TLS was set up"
                    if self._stage is _Stage.ENCRYPTED
                    else "a GSSENCRequest: direct TLS must open the connection, "
                    "and an SSLRequest must come first otherwise"
                )
            )
        if buffer[0] != 0:
            raise NotPostgres(_describeNotPostgres(buffer[0]))
        if len(buffer) < 4:
            return None
        length = int.from_bytes(buffer[:4], "big")
        if length - 4 < 4:
            raise BadLength(
                f"startup packet length {length} is shorter than the 8 bytes "
                f"of a length word and a version or request code"
            )
        if length - 4 > MAX_STARTUP_LENGTH:
            raise StartupMessageTooLarge(
                f"startup packet of {length} bytes; PostgreSQL accepts at most "
                f"{MAX_STARTUP_LENGTH + 4}"
            )
        if len(buffer) < 8:
            return None
        code = int.from_bytes(buffer[4:8], "big")
        self._check(code, length)
        if len(buffer) < length:
            return None
        packet = bytes(buffer[:length])
        rest = bytes(buffer[length:])
        if code == _GSS_CODE:
            self._stage = _Stage.AFTER_GSS
            del buffer[:length]
            return GSSENCRequest()
        if code == _SSL_CODE:
            return SSLRequest(rest)
        if code == _CANCEL_CODE:
            key = CancelKey(int.from_bytes(packet[8:12], "big"), packet[12:])
            return CancelRequest(key, rest)
        return attrs.evolve(parseStartupMessage(packet), rest=rest)

    def _check(self, code: int, length: int) -> None:
        """
        Check a request code against its length and against the stage, as
        soon as both are known.
        """
        if code in (_SSL_CODE, _GSS_CODE):
            name = "SSLRequest" if code == _SSL_CODE else "GSSENCRequest"
            if length != 8:
                raise BadLength(f"{name} of {length} bytes; it is always 8")
            if self._stage is _Stage.ENCRYPTED:
                raise OutOfOrder(f"{name} inside TLS")
            if code == _GSS_CODE and self._stage is _Stage.AFTER_GSS:
                raise OutOfOrder("a second GSSENCRequest")
        elif code == _CANCEL_CODE:
            if not 12 + _MIN_KEY <= length <= 12 + _MAX_KEY:
                raise BadLength(
                    f"CancelRequest of {length} bytes; it is {12 + _MIN_KEY} "
                    f"(protocol 3.0) to {12 + _MAX_KEY} bytes"
                )
        else:
            _checkVersion(code)


def looksLikePostgres(data: bytes) -> bool:
    """
    Whether the first bytes of a connection are a PostgreSQL client's
    opening packet (C{SSLRequest}, C{GSSENCRequest}, C{CancelRequest} or a
    protocol 3 startup message): what a listener that expects a TLS
    ClientHello can tell an operator who forgot C{protocol = postgres}.
    """
    if len(data) < 8:
        return False
    length = int.from_bytes(data[0:4], "big")
    code = int.from_bytes(data[4:8], "big")
    if code in (_SSL_CODE, _GSS_CODE):
        return length == 8
    if code == _CANCEL_CODE:
        return 12 <= length <= 8 + _MAX_KEY
    return code >> 16 == _PROTOCOL_MAJOR and 8 <= length <= MAX_STARTUP_LENGTH


def _checkVersion(code: int) -> None:
    major, minor = code >> 16, code & 0xFFFF
    if major == _REQUEST_MAJOR:
        raise UnsupportedRequest(f"unknown request code {major}/{minor} ({code})")
    if major != _PROTOCOL_MAJOR:
        raise UnsupportedRequest(
            f"unsupported frontend protocol {major}.{minor}: PostgreSQL speaks 3.x"
        )


def _describeNotPostgres(first: int) -> str:
    """
    Say what the first byte suggests, for the operator's log: only the first
    byte, so that the message does not depend on how the bytes were split.
    """
    where = (
        f"first byte 0x{first:02x} would make a startup packet of at least "
        f"{first << 24} bytes: not a PostgreSQL client"
    )
    if 0x20 < first < 0x7F:
        return f"{where}: plaintext starting with {chr(first)!r}, such as HTTP?"
    return where


def parseStartupMessage(packet: bytes) -> StartupMessage:
    """
    Parse a whole startup packet (length word included) as the server does.

    Exposed on its own for a terminated connection, whose startup message
    arrives inside TLS: the access log wants its C{user} and C{database}.

    @raise PostgresError: the packet is not a protocol 3 startup message
        whose NUL-terminated name/value pairs end with a NUL as its last
        byte, or it names no user (PostgreSQL refuses both).
    """
    if len(packet) < 8 or int.from_bytes(packet[:4], "big") != len(packet):
        raise BadLength(
            f"startup packet of {len(packet)} bytes does not match its length word"
        )
    code = int.from_bytes(packet[4:8], "big")
    _checkVersion(code)
    body = packet[8:]
    parameters: list[tuple[str, str]] = []
    offset = 0
    while True:
        end = body.find(b"\0", offset)
        if end < 0:
            raise PostgresError(
                "startup packet does not end with a NUL after its last parameter"
            )
        if end == offset:
            break
        valueEnd = body.find(b"\0", end + 1)
        if valueEnd < 0:
            raise PostgresError(
                f"startup parameter {_text(body[offset:end])!r} has no value"
            )
        parameters.append((_text(body[offset:end]), _text(body[end + 1 : valueEnd])))
        offset = valueEnd + 1
    if offset != len(body) - 1:
        raise PostgresError(
            "invalid startup packet layout: expected terminator as last byte"
        )
    message = StartupMessage((code >> 16, code & 0xFFFF), tuple(parameters), packet)
    if not message.user:
        raise PostgresError("no PostgreSQL user name specified in startup packet")
    return message


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def cancelRequest(key: CancelKey) -> bytes:
    """
    The C{CancelRequest} packet for C{key}, as a client sends it: what the
    gateway forwards to the server that issued the key.
    """
    return (
        (12 + len(key.secretKey)).to_bytes(4, "big")
        + _CANCEL_CODE.to_bytes(4, "big")
        + key.processId.to_bytes(4, "big")
        + key.secretKey
    )
