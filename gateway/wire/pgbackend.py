"""
The PostgreSQL messages of the server's side ("backend" in the protocol
documentation) that the gateway reads or writes, without doing any I/O: the
one-byte answer to an C{SSLRequest} (L{SSLAnswerReader}), the cancel keys
of C{BackendKeyData} (L{BackendKeyDataScanner}), and C{ErrorResponse}, read
from a server (L{decodeErrorResponse}) or written to a client as the
gateway's refusal (L{errorResponse}).

What a client sends first, the preamble, is L{gateway.wire.postgres}'s;
the error family is shared with it.  Like it, this module must not import
Twisted or OpenSSL.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

from gateway.wire.clienthello import NEED_MORE, _NeedMore
from gateway.wire.postgres import (
    _MAX_KEY,
    _MIN_KEY,
    BadLength,
    CancelKey,
    NotPostgres,
    PostgresError,
    _text,
)

__all__ = [
    "CONNECTION_FAILURE",
    "INVALID_AUTHORIZATION",
    "PROTOCOL_VIOLATION",
    "BackendKeyDataScanner",
    "ErrorResponse",
    "SSLAccepted",
    "SSLAnswerReader",
    "SSLRefused",
    "decodeErrorResponse",
    "errorResponse",
]

_BACKEND_KEY_DATA: Final = ord("K")
_READY_FOR_QUERY: Final = ord("Z")
_ERROR_RESPONSE: Final = ord("E")
# An ErrorResponse that answers an SSLRequest comes from a server that failed
# before it read anything; it is a line of text, so this bound is generous.
_MAX_ERROR_LENGTH: Final = 16384

PROTOCOL_VIOLATION: Final = "08P01"
"""SQLSTATE C{protocol_violation}, the default code of L{errorResponse}."""

CONNECTION_FAILURE: Final = "08006"
"""
SQLSTATE C{connection_failure}: the gateway could not reach any server of
the upstream a terminated client was routed to.
"""

INVALID_AUTHORIZATION: Final = "28000"
"""
SQLSTATE C{invalid_authorization_specification}: what PostgreSQL itself
answers when C{pg_hba.conf} refuses a connection (e.g. a plaintext one).
"""


@attrs.frozen
class ErrorResponse:
    """
    A decoded ErrorResponse.

    @ivar fields: (field type, value) pairs in order, e.g. C{("M", "...")}
        ("Error and Notice Message Fields" in the protocol documentation).
    """

    fields: tuple[tuple[str, str], ...]

    def get(self, fieldType: str) -> str | None:
        return next((v for k, v in self.fields if k == fieldType), None)

    @property
    def severity(self) -> str | None:
        """C{V} (never localized) or else C{S}."""
        return self.get("V") or self.get("S")

    @property
    def code(self) -> str | None:
        """The SQLSTATE, C{C}."""
        return self.get("C")

    @property
    def message(self) -> str:
        return self.get("M") or ""

    def __str__(self) -> str:
        text = f"{self.severity}: {self.message}" if self.severity else self.message
        return f"{text} (SQLSTATE {self.code})" if self.code else text


def errorResponse(
    message: str, code: str = PROTOCOL_VIOLATION, severity: str = "FATAL"
) -> bytes:
    """
    An ErrorResponse message, as the gateway sends a client it refuses.

    PostgreSQL clients print such a message as they would the server's own,
    so an operator reads "FATAL: ..." in psql, not a bare disconnect.  The
    fields are C{S} and C{V} (severity, C{V} since PostgreSQL 9.6 and never
    localized), C{C} (SQLSTATE) and C{M}: the ones every server sends.

    @raise ValueError: a NUL in a field, a malformed SQLSTATE or a severity
        an ErrorResponse cannot carry: these are bugs of the caller.
    """
    if severity not in ("ERROR", "FATAL", "PANIC"):
        raise ValueError(f"ErrorResponse severity {severity!r}")
    if len(code) != 5 or not all(c.isdigit() or "A" <= c <= "Z" for c in code):
        raise ValueError(f"SQLSTATE {code!r} is not five digits or capitals")
    if "\0" in message:
        raise ValueError("a NUL in an ErrorResponse message")
    body = b"".join(
        kind + value.encode("utf-8") + b"\0"
        for kind, value in (
            (b"S", severity),
            (b"V", severity),
            (b"C", code),
            (b"M", message),
        )
    )
    body += b"\0"
    return b"E" + (4 + len(body)).to_bytes(4, "big") + body


def decodeErrorResponse(message: bytes) -> ErrorResponse:
    """
    Decode a whole ErrorResponse message (type byte and length included).

    @raise PostgresError: not an ErrorResponse, or its length or its
        NUL-terminated fields do not add up.
    """
    if message[:1] != b"E":
        raise PostgresError(f"message type {message[:1]!r} is not an ErrorResponse")
    if len(message) < 5 or int.from_bytes(message[1:5], "big") != len(message) - 1:
        raise BadLength(
            f"ErrorResponse of {len(message)} bytes does not match its length word"
        )
    body = message[5:]
    fields: list[tuple[str, str]] = []
    offset = 0
    while True:
        if offset >= len(body):
            raise PostgresError("ErrorResponse does not end with a NUL")
        kind = body[offset]
        if kind == 0:
            break
        end = body.find(b"\0", offset + 1)
        if end < 0:
            raise PostgresError("ErrorResponse field is not NUL-terminated")
        fields.append((chr(kind), _text(body[offset + 1 : end])))
        offset = end + 1
    if offset != len(body) - 1:
        raise BadLength("ErrorResponse has bytes after its terminating NUL")
    return ErrorResponse(tuple(fields))


@attrs.frozen
class SSLAccepted:
    """
    The server answered C{S}: start TLS.

    @ivar rest: bytes after the answer.  A server sends nothing more before
        the client's ClientHello, so any bytes here were injected (the
        CVE-2021-23222 class): the session refuses such a server rather
        than pass them on (L{gateway.connection.session.UpstreamProtocol}).
    """

    rest: bytes = b""


@attrs.frozen
class SSLRefused:
    """
    The server will not do TLS: it answered C{N} (C{error} is L{None}) or an
    ErrorResponse, which a server that failed before reading the request
    sends (C{error}).  Either way the gateway cannot go on.
    """

    error: ErrorResponse | None = None
    rest: bytes = b""


class SSLAnswerReader:
    """
    Read the server's answer to the gateway's L{SSL_REQUEST}.

    The answer is one byte, C{S} or C{N}, except from a server that fails
    before it reads the request (it could not start a backend process): it
    sends C{E} and an error, in the protocol 3 layout, or, from servers
    whose messages predate the startup packet's protocol version, as one
    NUL-terminated line of text (protocol 2's layout, which is what
    PostgreSQL's C{report_fork_failure_to_client} still writes).  A protocol
    3 length word starts with a zero byte and a line of text cannot, which
    tells the two apart.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._done = False
        self._error: PostgresError | None = None

    def feed(
        self, data: bytes
    ) -> SSLAccepted | SSLRefused | Literal[_NeedMore.NEED_MORE]:
        """
        Take the next bytes the server sent.

        @raise PostgresError: L{NotPostgres} for an answer that is not C{S},
            C{N} or C{E}; others for an error message that does not parse or
            exceeds 16 KiB.
        @raise RuntimeError: called again after the answer.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            raise RuntimeError("the SSLRequest answer was already read")
        self._buffer += data
        try:
            answer = self._advance()
        except PostgresError as e:
            self._error = e
            self._buffer.clear()
            raise
        if answer is None:
            return NEED_MORE
        self._done = True
        self._buffer.clear()
        return answer

    def _advance(self) -> SSLAccepted | SSLRefused | None:
        buffer = self._buffer
        if not buffer:
            return None
        first = buffer[0]
        if first == ord("S"):
            return SSLAccepted(bytes(buffer[1:]))
        if first == ord("N"):
            return SSLRefused(None, bytes(buffer[1:]))
        if first != _ERROR_RESPONSE:
            raise NotPostgres(
                f"server answered the SSLRequest with byte 0x{first:02x}, not "
                f"S, N or E: not a PostgreSQL server?"
            )
        if len(buffer) < 2:
            return None
        if buffer[1] == 0:
            if len(buffer) < 5:
                return None
            length = int.from_bytes(buffer[1:5], "big")
            if length < 5 or length > _MAX_ERROR_LENGTH:
                raise BadLength(f"ErrorResponse length {length} answering SSLRequest")
            if len(buffer) < 1 + length:
                return None
            error = decodeErrorResponse(bytes(buffer[: 1 + length]))
            return SSLRefused(error, bytes(buffer[1 + length :]))
        end = buffer.find(b"\0", 1)
        if end < 0:
            if len(buffer) > _MAX_ERROR_LENGTH:
                raise BadLength(
                    f"error text answering SSLRequest is over {_MAX_ERROR_LENGTH} bytes"
                )
            return None
        text = _text(bytes(buffer[1:end])).strip()
        return SSLRefused(ErrorResponse((("M", text),)), bytes(buffer[end + 1 :]))


class BackendKeyDataScanner:
    """
    Find the cancel key in what a server sends its client, as it passes.

    The gateway relays the server's plaintext (termination) and must not
    hold it up, so this walks the message framing (a type byte and a length
    word that counts itself) and keeps nothing but the header it is in the
    middle of, and the body of a C{BackendKeyData} (at most 260 bytes);
    other messages are skipped by count.  A server sends C{BackendKeyData}
    once, before its first C{ReadyForQuery}, so scanning stops there
    (L{done}): the rest of the session costs nothing.

    @ivar done: a C{ReadyForQuery} went by; no key can follow.
    """

    def __init__(self) -> None:
        self.done = False
        self._error: BadLength | None = None
        self._header = bytearray()
        self._skip = 0
        self._body: bytearray | None = None
        self._bodyLength = 0

    def feed(self, data: bytes) -> tuple[CancelKey, ...]:
        """
        Take the next bytes the server sent.

        @return: the keys whose C{BackendKeyData} ended in C{data}: usually
            none, once per session one.
        @raise BadLength: a length word smaller than itself, or a
            C{BackendKeyData} whose key is not 4 to 256 bytes.
        """
        if self._error is not None:
            raise self._error
        found: list[CancelKey] = []
        view = memoryview(data)
        offset = 0
        while offset < len(view) and not self.done:
            if self._skip:
                step = min(self._skip, len(view) - offset)
                self._skip -= step
                offset += step
            elif self._body is not None:
                step = min(self._bodyLength - len(self._body), len(view) - offset)
                self._body += view[offset : offset + step]
                offset += step
                if len(self._body) == self._bodyLength:
                    body = bytes(self._body)
                    self._body = None
                    found.append(CancelKey(int.from_bytes(body[:4], "big"), body[4:]))
            else:
                step = min(5 - len(self._header), len(view) - offset)
                self._header += view[offset : offset + step]
                offset += step
                if len(self._header) == 5:
                    kind, length = (
                        self._header[0],
                        int.from_bytes(self._header[1:], "big"),
                    )
                    self._header.clear()
                    try:
                        self._startMessage(kind, length)
                    except BadLength as e:
                        self._error = e
                        raise
        return tuple(found)

    def _startMessage(self, kind: int, length: int) -> None:
        if length < 4:
            raise BadLength(f"server message {chr(kind)!r} has length {length} < 4")
        if kind == _READY_FOR_QUERY:
            self.done = True
        elif kind == _BACKEND_KEY_DATA:
            if not 8 + _MIN_KEY <= length <= 8 + _MAX_KEY:
                raise BadLength(
                    f"BackendKeyData of length {length}; it is {8 + _MIN_KEY} "
                    f"(protocol 3.0) to {8 + _MAX_KEY}"
                )
            self._body = bytearray()
            self._bodyLength = length - 4
        else:
            self._skip = length - 4
