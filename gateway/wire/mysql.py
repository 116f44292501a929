"""
Read and write the few MySQL (and MariaDB) protocol packets the gateway
must understand, without doing any I/O.

MySQL's server speaks first: it sends a greeting (C{HandshakeV10}) with its
capabilities and a random scramble; a client that wants TLS answers with an
C{SSLRequest} (the first 32 bytes of a login packet, with C{CLIENT_SSL}
set), starts TLS on the same socket, and sends its login
(C{HandshakeResponse41}) inside TLS.  The server then answers the login
with C{OK}, C{ERR}, or an authentication exchange (C{AuthSwitchRequest},
C{AuthMoreData}) that ends in C{OK} or C{ERR}.  After that come commands,
which the gateway relays without reading them.

L{PacketReader} cuts a byte stream into packets (a 3-byte little-endian
length, a 1-byte sequence number, the payload) and hands back the bytes
after the last packet asked for untouched: after an C{SSLRequest} they are
TLS records.  The other names parse and build single payloads.  The layouts
are those of the MySQL source's documentation ("Client/Server Protocol",
sections "Connection Phase Packets" and "Generic Response Packets") and of
MariaDB's ("Connection", "OK/ERR Packet"); the rules for which fields exist
are the capability flags, as in the servers' own parsers.

Like L{gateway.wire.clienthello}, this module answers with a value, L{NEED_MORE}
or a L{MySQLError}, never with C{IndexError}, C{struct.error} or
C{UnicodeDecodeError}; it must not import Twisted or OpenSSL.

Passwords: a login packet holds only a scramble-derived hash (or, after a
server's request for it, a cleartext password inside TLS); the gateway
never logs an auth response and its C{repr} hides it.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final, Literal

import attrs

from gateway.wire.clienthello import NEED_MORE, _NeedMore

__all__ = [
    "CLIENT_CONNECT_ATTRS",
    "CLIENT_CONNECT_WITH_DB",
    "CLIENT_PLUGIN_AUTH",
    "CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA",
    "CLIENT_PROTOCOL_41",
    "CLIENT_SECURE_CONNECTION",
    "CLIENT_SSL",
    "MAX_HANDSHAKE_PAYLOAD",
    "NEED_MORE",
    "AuthMoreData",
    "AuthSwitchRequest",
    "ErrPacket",
    "Greeting",
    "HandshakeResponse",
    "Malformed",
    "MySQLError",
    "NotMySQL",
    "OkPacket",
    "Packet",
    "PacketReader",
    "PacketTooLarge",
    "SSLRequest",
    "encodePacket",
    "errPacket",
    "nativePassword",
    "parseAuthReply",
    "parseClientStart",
    "parseGreeting",
]

CLIENT_LONG_PASSWORD: Final = 0x1
CLIENT_CONNECT_WITH_DB: Final = 0x8
CLIENT_PROTOCOL_41: Final = 0x200
CLIENT_SSL: Final = 0x800
CLIENT_SECURE_CONNECTION: Final = 0x8000
CLIENT_PLUGIN_AUTH: Final = 0x80000
CLIENT_CONNECT_ATTRS: Final = 0x100000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: Final = 0x200000

MAX_HANDSHAKE_PAYLOAD: Final = 64 * 1024
"""
Most bytes in one packet of the connection phase.  A greeting is under 100
bytes and a login under 1 KiB with its connection attributes (which the
servers cap at 64 KiB themselves); a larger one is not a MySQL peer, and
buffering it would let a client pin memory.
"""

_MAX_PAYLOAD: Final = 0xFFFFFF
"""A packet this long is continued in the next one: never in the login."""


class MySQLError(Exception):
    """
    The bytes are not the MySQL packets the gateway expects here.

    Every failure of this module is one of these, so the caller needs one
    C{except}; the message is for the operator, the slug for machines.

    @cvar reason: stable slug for access-log fields and metric labels.
    """

    reason = "malformed"


class Malformed(MySQLError):
    """
    A packet whose fields disagree with its length or its flags.
    """

    reason = "malformed"


class NotMySQL(MySQLError):
    """
    The peer does not speak the MySQL protocol 4.1+: a greeting that is not
    protocol version 10, a client packet without C{CLIENT_PROTOCOL_41}, a
    first packet whose sequence number is not the one the protocol gives it
    (a TLS ClientHello or an HTTP request read as a packet header).
    """

    reason = "not_mysql"


class PacketTooLarge(MySQLError):
    """
    A connection-phase packet longer than the reader's bound.
    """

    reason = "too_large"


@attrs.frozen
class Packet:
    """
    One MySQL packet.

    @ivar sequence: its sequence number (0-255, wrapping): each side numbers
        the packets of one exchange in turn, and a gateway that adds or
        drops a packet must renumber the rest.
    """

    sequence: int
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")


def encodePacket(sequence: int, payload: bytes) -> bytes:
    """
    The wire form of one packet (payloads up to 16 MiB - 1: the connection
    phase never needs the continuation packets longer ones are cut into).
    """
    if len(payload) >= _MAX_PAYLOAD:
        raise ValueError(f"a {len(payload)}-byte payload needs continuation packets")
    return struct.pack("<I", len(payload))[:3] + bytes([sequence & 0xFF]) + payload


class PacketReader:
    """
    Cut a byte stream into packets, one at a time, keeping what follows.

    @ivar _buffer: bytes fed and not yet returned as a packet.
    @ivar _maxPayload: bound on one packet's payload, checked as soon as
        its header is in, so a lying length is refused before its bytes.
    """

    def __init__(self, maxPayload: int = MAX_HANDSHAKE_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._maxPayload = maxPayload

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Packet | Literal[_NeedMore.NEED_MORE]:
        """
        @return: the next whole packet, or L{NEED_MORE}.
        @raise PacketTooLarge: its header announces more than the bound.
        """
        buffer = self._buffer
        if len(buffer) < 4:
            return NEED_MORE
        size = buffer[0] | buffer[1] << 8 | buffer[2] << 16
        if size > self._maxPayload:
            raise PacketTooLarge(
                f"a {size}-byte packet during the connection phase (at most "
                f"{self._maxPayload})"
            )
        if len(buffer) < 4 + size:
            return NEED_MORE
        packet = Packet(buffer[3], bytes(buffer[4 : 4 + size]))
        del buffer[: 4 + size]
        return packet

    def rest(self) -> bytes:
        """
        Take every byte fed and not returned as a packet (TLS records after
        an C{SSLRequest}; commands after the login).
        """
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


class _Cursor:
    """
    Reads the fields of one payload; running out is L{Malformed}, never
    C{IndexError}.
    """

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    @property
    def offset(self) -> int:
        return self._offset

    def atEnd(self) -> bool:
        return self._offset >= len(self._data)

    def take(self, count: int) -> bytes:
        end = self._offset + count
        if count < 0 or end > len(self._data):
            raise Malformed(f"truncated {self._what}")
        value = self._data[self._offset : end]
        self._offset = end
        return value

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def nulString(self, *, optional: bool = False) -> bytes:
        """
        A NUL-terminated string; with C{optional}, one that may also end
        the payload without its NUL (as servers accept it).
        """
        end = self._data.find(b"\0", self._offset)
        if end < 0:
            if not optional:
                raise Malformed(f"unterminated string in {self._what}")
            end = len(self._data)
            value = self._data[self._offset : end]
            self._offset = end
            return value
        value = self._data[self._offset : end]
        self._offset = end + 1
        return value

    def lenencInt(self) -> int:
        first = self.uint(1)
        if first < 0xFB:
            return first
        size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
        if size is None:
            raise Malformed(
                f"invalid length-encoded integer 0x{first:02x} in {self._what}"
            )
        return self.uint(size)

    def since(self, start: int, count: int) -> bytes:
        """
        Consume up to C{start + count} and return the bytes from C{start}.
        """
        self.take(start + count - self._offset)
        return self._data[start : start + count]

    def rest(self) -> bytes:
        value = self._data[self._offset :]
        self._offset = len(self._data)
        return value


def _lenencInt(value: int) -> bytes:
    if value < 0xFB:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@attrs.frozen
class Greeting:
    """
    A server's C{HandshakeV10}.

    @ivar scramble: the whole auth-plugin data (20 bytes for the usual
        plugins), without its trailing NUL: what the client hashes the
        password with, and why a greeting from one server cannot log a
        client in to another.
    @ivar capabilities: the server's capability flags (32 bits).
    @ivar payload: the payload as received: the gateway sends a client the
        server's own greeting, changing only the C{CLIENT_SSL} bit.
    @ivar _capabilityOffsets: where the two halves of the flags sit in
        C{payload}.
    """

    serverVersion: str
    connectionId: int
    scramble: bytes = attrs.field(repr=False)
    capabilities: int
    charset: int
    status: int
    authPlugin: str | None
    payload: bytes = attrs.field(repr=False)
    _capabilityOffsets: tuple[int, int] = attrs.field(repr=False)

    def withCapabilities(self, capabilities: int) -> bytes:
        """
        The payload with other capability flags, every other byte kept.
        """
        low, high = self._capabilityOffsets
        out = bytearray(self.payload)
        out[low : low + 2] = (capabilities & 0xFFFF).to_bytes(2, "little")
        if high >= 0:
            out[high : high + 2] = (capabilities >> 16 & 0xFFFF).to_bytes(2, "little")
        return bytes(out)


def parseGreeting(payload: bytes) -> Greeting:
    """
    Read a server's first packet.

    @raise NotMySQL: not a protocol 10 greeting (an C{ERR} packet is one:
        a server that refuses the gateway's address, with its message).
    @raise Malformed: a greeting that ends too early.
    """
    if payload[:1] == b"\xff":
        try:
            error = ErrPacket.parse(payload, protocol41=False)
        except MySQLError:
            raise NotMySQL("the server answered with an ERR packet") from None
        raise NotMySQL(f"the server refused the connection: {error.describe()}")
    cursor = _Cursor(payload, "greeting")
    version = cursor.uint(1)
    if version != 10:
        raise NotMySQL(f"protocol version {version} in the greeting (expected 10)")
    serverVersion = _text(cursor.nulString())
    connectionId = cursor.uint(4)
    scramble = cursor.take(8)
    cursor.take(1)
    low = cursor.offset
    capabilities = cursor.uint(2)
    charset = status = 0
    high = -1
    plugin: str | None = None
    if not cursor.atEnd():
        charset = cursor.uint(1)
        status = cursor.uint(2)
        high = cursor.offset
        capabilities |= cursor.uint(2) << 16
        dataLength = cursor.uint(1)
        cursor.take(10)  # reserved (MariaDB: its extended capabilities in 4)
        if capabilities & CLIENT_SECURE_CONNECTION:
            more = max(13, dataLength - 8)
            part = cursor.take(more)
            scramble += part[:-1] if part.endswith(b"\0") else part
        if capabilities & CLIENT_PLUGIN_AUTH:
            plugin = _text(cursor.nulString(optional=True))
    if not capabilities & CLIENT_PROTOCOL_41:
        raise NotMySQL("the server does not speak protocol 4.1 (CLIENT_PROTOCOL_41)")
    return Greeting(
        serverVersion,
        connectionId,
        scramble,
        capabilities,
        charset,
        status,
        plugin,
        payload,
        (low, high),
    )


@attrs.frozen
class SSLRequest:
    """
    A client's C{SSLRequest}: its next bytes are a TLS ClientHello.
    """

    capabilities: int
    maxPacketSize: int
    charset: int


@attrs.frozen
class HandshakeResponse:
    """
    A client's login (C{HandshakeResponse41}).

    @ivar reserved: the 23 bytes after the character set: zeros for MySQL,
        MariaDB's extended capabilities in the last 4 for a MariaDB client
        (one that leaves C{CLIENT_LONG_PASSWORD} clear); kept as sent.
    @ivar authResponse: the password hashed with the greeting's scramble:
        never logged.
    @ivar attributes: the connection attributes, as sent (with their
        length prefix), or empty without C{CLIENT_CONNECT_ATTRS}.
    """

    capabilities: int
    maxPacketSize: int
    charset: int
    reserved: bytes = attrs.field(repr=False)
    user: str
    authResponse: bytes = attrs.field(repr=False)
    database: str | None
    authPlugin: str | None
    attributes: bytes = attrs.field(repr=False, default=b"")

    def encode(self) -> bytes:
        """
        The payload again, in the layout the flags ask for.
        """
        flags = self.capabilities
        out = bytearray(
            struct.pack("<II", flags, self.maxPacketSize)
            + bytes([self.charset])
            + self.reserved
        )
        out += self.user.encode() + b"\0"
        if flags & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out += _lenencInt(len(self.authResponse)) + self.authResponse
        elif flags & CLIENT_SECURE_CONNECTION:
            if len(self.authResponse) > 255:
                raise ValueError("an auth response over 255 bytes needs LENENC")
            out += bytes([len(self.authResponse)]) + self.authResponse
        else:
            out += self.authResponse + b"\0"
        if flags & CLIENT_CONNECT_WITH_DB:
            out += (self.database or "").encode() + b"\0"
        if flags & CLIENT_PLUGIN_AUTH:
            out += (self.authPlugin or "").encode() + b"\0"
        if flags & CLIENT_CONNECT_ATTRS:
            out += self.attributes
        return bytes(out)

    def sslRequest(self) -> bytes:
        """
        The C{SSLRequest} a client would send before this login: its first
        32 bytes, with C{CLIENT_SSL} set.
        """
        return (
            struct.pack("<II", self.capabilities | CLIENT_SSL, self.maxPacketSize)
            + bytes([self.charset])
            + self.reserved
        )


def parseClientStart(payload: bytes) -> SSLRequest | HandshakeResponse:
    """
    Read a client's first packet: an C{SSLRequest} or a plaintext login.

    @raise NotMySQL: a client without C{CLIENT_PROTOCOL_41} (MySQL 4.0's
        clients; no TLS-capable client is one).
    @raise Malformed: fields disagree with the length or the flags.
    """
    cursor = _Cursor(payload, "login packet")
    capabilities = cursor.uint(4)
    if not capabilities & CLIENT_PROTOCOL_41:
        raise NotMySQL("the client does not speak protocol 4.1 (CLIENT_PROTOCOL_41)")
    maxPacketSize = cursor.uint(4)
    charset = cursor.uint(1)
    reserved = cursor.take(23)
    if cursor.atEnd():
        if not capabilities & CLIENT_SSL:
            raise Malformed("a 32-byte login packet without CLIENT_SSL")
        return SSLRequest(capabilities, maxPacketSize, charset)
    return _parseLoginRest(cursor, capabilities, maxPacketSize, charset, reserved)


def parseHandshakeResponse(payload: bytes) -> HandshakeResponse:
    """
    Read the login a client sends inside TLS (after its C{SSLRequest}).
    """
    start = parseClientStart(payload)
    if isinstance(start, SSLRequest):
        raise Malformed("a second SSLRequest inside TLS")
    return start


def _parseLoginRest(
    cursor: _Cursor,
    capabilities: int,
    maxPacketSize: int,
    charset: int,
    reserved: bytes,
) -> HandshakeResponse:
    user = _text(cursor.nulString())
    if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        authResponse = cursor.take(cursor.lenencInt())
    elif capabilities & CLIENT_SECURE_CONNECTION:
        authResponse = cursor.take(cursor.uint(1))
    else:
        authResponse = cursor.nulString(optional=True)
    database = None
    if capabilities & CLIENT_CONNECT_WITH_DB:
        database = _text(cursor.nulString(optional=True))
    plugin = None
    if capabilities & CLIENT_PLUGIN_AUTH:
        plugin = _text(cursor.nulString(optional=True))
    attributes = b""
    if capabilities & CLIENT_CONNECT_ATTRS and not cursor.atEnd():
        start = cursor.offset
        size = cursor.lenencInt()
        header = cursor.offset - start
        attributes = cursor.since(start, header + size)
    return HandshakeResponse(
        capabilities,
        maxPacketSize,
        charset,
        reserved,
        user,
        authResponse,
        database,
        plugin,
        attributes,
    )


@attrs.frozen
class OkPacket:
    """
    The server's C{OK}: the login succeeded (in the connection phase).
    """


@attrs.frozen
class ErrPacket:
    """
    An C{ERR} packet: an error code, a SQLSTATE and a message.
    """

    code: int
    sqlState: str
    message: str

    @classmethod
    def parse(cls, payload: bytes, *, protocol41: bool = True) -> ErrPacket:
        cursor = _Cursor(payload, "ERR packet")
        if cursor.uint(1) != 0xFF:
            raise Malformed("not an ERR packet")
        code = cursor.uint(2)
        sqlState = ""
        rest = cursor.rest()
        if protocol41 and rest[:1] == b"#":
            if len(rest) < 6:
                raise Malformed("truncated SQLSTATE in ERR packet")
            sqlState, rest = _text(rest[1:6]), rest[6:]
        return cls(code, sqlState, _text(rest))

    def encode(self) -> bytes:
        state = self.sqlState.encode("ascii", "replace")[:5].ljust(5, b"0")
        return (
            b"\xff"
            + struct.pack("<H", self.code)
            + b"#"
            + state
            + self.message.encode()
        )

    def describe(self) -> str:
        state = f" ({self.sqlState})" if self.sqlState else ""
        return f"{self.code}{state} {self.message}"


def errPacket(sequence: int, code: int, sqlState: str, message: str) -> bytes:
    """
    A whole C{ERR} packet, as the gateway's own refusals send it.
    """
    return encodePacket(sequence, ErrPacket(code, sqlState, message).encode())


@attrs.frozen
class AuthSwitchRequest:
    """
    The server asks the client to authenticate again with C{plugin} and
    C{data} (for the scramble-based plugins, the scramble to hash with).
    """

    plugin: str
    data: bytes = attrs.field(repr=False)

    @classmethod
    def parse(cls, payload: bytes) -> AuthSwitchRequest:
        cursor = _Cursor(payload, "AuthSwitchRequest")
        if cursor.uint(1) != 0xFE:
            raise Malformed("not an AuthSwitchRequest")
        plugin = _text(cursor.nulString(optional=True))
        data = cursor.rest()
        return cls(plugin, data[:-1] if data.endswith(b"\0") else data)

    def encode(self) -> bytes:
        return b"\xfe" + self.plugin.encode() + b"\0" + self.data + b"\0"


@attrs.frozen
class AuthMoreData:
    """
    More of an authentication exchange (C{caching_sha2_password}'s fast
    path answer, its request for the full password, a public key...).
    """

    data: bytes = attrs.field(repr=False)


AuthReply = OkPacket | ErrPacket | AuthSwitchRequest | AuthMoreData
"""What a server answers a login or an auth response with."""


def parseAuthReply(payload: bytes, *, protocol41: bool = True) -> AuthReply:
    """
    Classify a server packet of the authentication exchange by its first
    byte, as clients do.

    @raise Malformed: anything else (an empty packet, an unknown header).
    """
    first = payload[:1]
    if first == b"\x00":
        return OkPacket()
    if first == b"\xff":
        return ErrPacket.parse(payload, protocol41=protocol41)
    if first == b"\xfe":
        return AuthSwitchRequest.parse(payload)
    if first == b"\x01":
        return AuthMoreData(payload[1:])
    raise Malformed(
        f"server packet 0x{payload[0]:02x} during authentication"
        if payload
        else "empty server packet during authentication"
    )


def nativePassword(password: bytes, scramble: bytes) -> bytes:
    """
    The C{mysql_native_password} response: C{SHA1(password) XOR
    SHA1(scramble + SHA1(SHA1(password)))}, empty for an empty password.
    """
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()  # noqa: S324 - the protocol's hash
    stage2 = hashlib.sha1(stage1).digest()  # noqa: S324
    mix = hashlib.sha1(scramble[:20] + stage2).digest()  # noqa: S324
    return bytes(a ^ b for a, b in zip(stage1, mix, strict=True))
