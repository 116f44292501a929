"""
Reassemble the TLS records that carry a connection's ClientHello, without
doing any I/O, and hand the whole message to the parser of
L{gateway.wire.clienthello}.

Two layers are reassembled separately, as RFC 8446 section 5.1 allows clients
to split them independently: TLS records (each a 5-byte header and at most
2^14 bytes of fragment) and, inside the concatenated fragments of the
handshake records, the 4-byte-header ClientHello message.  TCP may cut either
layer anywhere, so a short read is never an error here; an inconsistent
length always is.
"""

from __future__ import annotations

from typing import Final, Literal

from gateway.wire.clienthello import (
    NEED_MORE,
    BadLength,
    ClientHello,
    ClientHelloError,
    ClientHelloTooLarge,
    NotTLS,
    _NeedMore,
    _parseClientHello,
)

__all__ = ["ClientHelloReader"]

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_RECORD_HEADER: Final = 5
_HANDSHAKE_HEADER: Final = 4
# RFC 8446 5.1 and RFC 5246 6.2.1: a plaintext fragment is at most 2^14 bytes.
# (The 2^14 + 256 and + 2048 allowances are for protected records only.)
_MAX_FRAGMENT: Final = 2**14


class ClientHelloReader:
    """
    Reassemble TLS handshake records until one whole ClientHello is buffered.

    Records are reassembled, not read one at a time, because a client may
    split its ClientHello across records and TCP may split records anywhere;
    with a post-quantum key share, a default ClientHello from the OpenSSL that
    today's cryptography wheels bundle is about 1,570 bytes: over one Ethernet
    MTU, and a client with several key shares can exceed one record.

    The ClientHello must be the only handshake message in its records: a
    client sends nothing else before the server answers, and refusing bytes
    after it inside the last record means that C{buffered} up to the end of
    that record is exactly the ClientHello, with no message the gateway did
    not look at smuggled in behind it.  Bytes I{after} that record (a client
    that speaks early) are left alone, unparsed, in C{buffered}.

    Checks fire as soon as the bytes they look at arrive, and only the first
    C{maxSize} bytes are ever looked at, so the answer for a given byte
    stream does not depend on how it was cut into C{feed} calls.

    Once a L{ClientHello} has been returned, C{feed} appends to C{buffered}
    and returns the same hello again: the caller has handed off by then and
    the size bound no longer applies.  Once a L{ClientHelloError} has been
    raised, C{feed} raises the same error again and buffers nothing more.

    @ivar buffered: every byte fed so far, unmodified.  Kept because
        passthrough must send the upstream the exact ClientHello (it is in
        the handshake transcript) and termination must give the same bytes
        to OpenSSL; neither can read the socket again.
    @ivar _maxSize: bound on buffered bytes.  Without it a client that never
        finishes its hello pins memory (h11 bounds its buffer for the same
        reason).  It counts record headers too, as it bounds memory, not the
        message.
    @ivar _recordStart: offset in C{_buffer} of the header of the record being
        read; it is the next record's header once C{_recordEnd} is reached.
    @ivar _recordEnd: offset just past the current record's fragment, or
        L{None} while its header is incomplete.
    @ivar _position: offset of the next fragment byte not yet moved into
        C{_handshake}.
    @ivar _handshake: the handshake layer: fragments of the records so far,
        concatenated.
    @ivar _declared: sum of the fragment lengths of the record headers seen,
        to notice records that promise more than the ClientHello.
    @ivar _helloLength: length of the ClientHello body from its handshake
        header, once known.
    """

    # Slots: a reader lives as long as its connection (the pre-read keeps
    # it for C{buffered}), so its size is paid per idle connection.
    __slots__ = (
        "_buffer",
        "_declared",
        "_error",
        "_handshake",
        "_hello",
        "_helloLength",
        "_maxSize",
        "_position",
        "_recordEnd",
        "_recordStart",
    )

    def __init__(self, maxSize: int = 65536) -> None:
        if maxSize < 1:
            raise ValueError(f"maxSize must be positive, not {maxSize}")
        self._maxSize = maxSize
        self._buffer = bytearray()
        self._recordStart = 0
        self._recordEnd: int | None = None
        self._position = 0
        self._handshake = bytearray()
        self._declared = 0
        self._helloLength: int | None = None
        self._hello: ClientHello | None = None
        self._error: ClientHelloError | None = None

    @property
    def buffered(self) -> bytes:
        return bytes(self._buffer)

    def feed(self, data: bytes) -> ClientHello | Literal[_NeedMore.NEED_MORE]:
        """
        Take the next bytes the client sent.

        @return: the L{ClientHello} once it is complete, L{NEED_MORE} before.
            A connection that stops sending stays at L{NEED_MORE}: only the
            caller's timeout can tell a slow client from a dead one.
        @raise NotTLS: the bytes are not a TLS handshake record.
        @raise ClientHelloTooLarge: more than C{maxSize} bytes would be needed.
        @raise ClientHelloError: anything else malformed (L{BadLength} for
            inconsistent length fields).
        """
        if self._hello is not None:
            self._buffer += data
            return self._hello
        if self._error is not None:
            raise self._error
        self._buffer += data
        try:
            hello = self._advance()
        except ClientHelloError as e:
            self._error = e
            raise
        if hello is None:
            return NEED_MORE
        self._hello = hello
        # The handshake layer was only needed to parse: drop its copy of
        # the hello now rather than for the life of the connection.
        self._handshake.clear()
        return hello

    def _advance(self) -> ClientHello | None:
        """
        Walk the records as far as the bytes (up to C{maxSize}) allow.

        @return: the hello when its last record is complete, else L{None}.
        """
        limit = min(len(self._buffer), self._maxSize)
        while True:
            if self._recordEnd is None:
                header = bytes(
                    self._buffer[self._recordStart : self._recordStart + _RECORD_HEADER]
                )
                header = header[: max(0, limit - self._recordStart)]
                self._checkRecordHeader(header)
                if len(header) < _RECORD_HEADER:
                    break
                self._recordEnd = (
                    self._recordStart
                    + _RECORD_HEADER
                    + (int.from_bytes(header[3:5], "big"))
                )
                self._declared += self._recordEnd - self._recordStart - _RECORD_HEADER
                self._position = self._recordStart + _RECORD_HEADER
                if self._recordEnd > self._maxSize:
                    raise ClientHelloTooLarge(
                        f"ClientHello record ends at byte {self._recordEnd}, past "
                        f"the {self._maxSize}-byte pre-read limit"
                    )
                self._checkDeclared()
            take = min(limit, self._recordEnd) - self._position
            if take <= 0:
                break
            self._handshake += self._buffer[self._position : self._position + take]
            self._position += take
            self._checkHandshake()
            if self._position == self._recordEnd:
                self._recordStart, self._recordEnd = self._recordEnd, None
            if (
                self._helloLength is not None
                and len(self._handshake) == _HANDSHAKE_HEADER + self._helloLength
            ):
                # _checkDeclared has made sure that no record goes on past
                # the hello, so this byte also ended its record.
                return _parseClientHello(bytes(self._handshake[_HANDSHAKE_HEADER:]))
        if len(self._buffer) > self._maxSize:
            raise ClientHelloTooLarge(
                f"no complete ClientHello in the first {self._maxSize} bytes"
            )
        return None

    def _checkRecordHeader(self, header: bytes) -> None:
        """
        Check as much of a record header as has arrived.

        The first record gets L{NotTLS} and a hint, since a wrong first byte
        means a different protocol; a later one gets a plain
        L{ClientHelloError}, since the peer did start a TLS handshake.
        """
        first = self._recordStart == 0
        if header[:1]:
            contentType = header[0]
            if contentType != _HANDSHAKE:
                if first:
                    raise NotTLS(_describeNotTLS(contentType))
                raise ClientHelloError(
                    f"record of content type {contentType} at byte "
                    f"{self._recordStart} interleaved with the ClientHello's "
                    f"handshake records (RFC 8446 5.1)"
                )
        if header[1:2] and header[1] != 3:
            message = (
                f"record version 0x{header[1]:02x}xx at byte "
                f"{self._recordStart} is not TLS (0x03xx)"
            )
            raise NotTLS(message) if first else ClientHelloError(message)
        if len(header) == _RECORD_HEADER:
            length = int.from_bytes(header[3:5], "big")
            if length == 0:
                raise BadLength(
                    f"zero-length handshake record at byte {self._recordStart} "
                    f"(RFC 8446 5.1 forbids them)"
                )
            if length > _MAX_FRAGMENT:
                raise BadLength(
                    f"handshake record at byte {self._recordStart} is {length} "
                    f"bytes long; plaintext records hold at most {_MAX_FRAGMENT}"
                )

    def _checkHandshake(self) -> None:
        """
        Check the handshake header as soon as its bytes are in.
        """
        if self._helloLength is not None:
            return
        if self._handshake[0] != _CLIENT_HELLO:
            raise ClientHelloError(
                f"first handshake message has type {self._handshake[0]}, "
                f"not client_hello ({_CLIENT_HELLO})"
            )
        if len(self._handshake) < _HANDSHAKE_HEADER:
            return
        length = int.from_bytes(self._handshake[1:4], "big")
        self._helloLength = length
        message = _HANDSHAKE_HEADER + length
        records = -(-message // _MAX_FRAGMENT)
        if message + records * _RECORD_HEADER > self._maxSize:
            raise ClientHelloTooLarge(
                f"ClientHello of {length} bytes cannot fit in the "
                f"{self._maxSize}-byte pre-read limit"
            )
        self._checkDeclared()

    def _checkDeclared(self) -> None:
        """
        Refuse records that carry more than the ClientHello message.

        Checked when a record header or the hello length arrives, whichever
        is later, so it does not wait for bytes it will refuse.
        """
        if self._helloLength is None:
            return
        message = _HANDSHAKE_HEADER + self._helloLength
        if self._declared > message:
            raise BadLength(
                f"handshake records carry {self._declared} bytes but the "
                f"ClientHello message is {message}: a ClientHello must be "
                f"the only handshake message in its records"
            )


def _describeNotTLS(first: int) -> str:
    """
    Say what the first byte suggests, for the operator's log.

    Only the first byte is used, so that the message is the same however
    the connection's bytes were split.
    """
    if first & 0x80:
        return (
            f"first byte 0x{first:02x} has its high bit set: an SSLv2-style "
            f"ClientHello, which is not supported"
        )
    where = f"first byte 0x{first:02x} is not a TLS handshake record (type 22)"
    if 0x20 < first < 0x7F:
        return f"{where}: plaintext starting with {chr(first)!r}, such as HTTP?"
    return where
