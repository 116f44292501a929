"""
PROXY protocol headers (HAProxy's C{proxy-protocol.txt}, versions 1 and 2):
built for upstreams, and read strictly from a load balancer in front.

A header is a L{ProxyHeader} value: L{encode} gives its bytes, and a
L{gateway.wire.proxyreader.ProxyHeaderReader} gives it back from a byte
stream cut anywhere, with three answers, as the ClientHello reader has:
C{(header, rest)} once the header is complete (C{rest} is what followed it:
the client's first bytes, which must reach the next stage unchanged),
L{NEED_MORE}, or a L{ProxyHeaderError} whose C{reason} names what was
wrong.

Why not C{twisted.protocols.haproxy}: its parsers cannot give that strict
answer, and bending them would be more code than this module.

  - "Need more" and "invalid" are mixed up.  C{V2Parser.feed} raises
    C{InvalidProxyHeader} while fewer than 16 bytes are buffered, and its
    wrapper picks v1 or v2 from the length of the I{first} chunk, so a
    valid header split by TCP is refused; C{V1Parser.feed} waits for 107
    bytes before it looks at them, so a client that sends a ClientHello
    with no header at all waits for the timeout instead of being refused
    at its first byte.
  - Invalid headers are accepted: v1 addresses are not checked (C{TCP4
    ::1 ...} and C{999.1.1.1} pass, a port of C{65536} or C{0443} too, an
    unparsable port raises a bare C{ValueError}), the 107-byte limit is not
    enforced when the CRLF is there, a lone CR or LF is not refused, v2
    families and transports outside the specification's list are looked up
    in a table with a C{KeyError}, and a v2 address block shorter than its
    family needs is not always noticed.
  - TLVs are not read at all, so C{PP2_TYPE_AUTHORITY}, C{PP2_TYPE_SSL}
    and the C{PP2_TYPE_CRC32C} check the specification requires of a
    receiver that supports it are out of reach, and there is no encoder.
  - It lives in Twisted: this module is one of the pure ones (no Twisted,
    no OpenSSL; C{tests/test_layering.py}), like L{gateway.wire.clienthello}.

What this reader accepts, and why:

  - The header must be the first bytes of the connection; the first byte
    already tells v1 (C{P}), v2 (CR) or neither, and a byte that breaks
    either signature is refused at once (the specification asks to abort
    "as soon as possible").  There is no guessing whether a header is
    present: the listener says so (C{accept_proxy_protocol}).
  - v1: C{PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n} with exactly one
    space between fields, canonical addresses of the announced family (no
    leading zeros in IPv4, hex groups only in IPv6: no embedded dotted
    quad, no zone), ports in [0..65535] without leading zeros, at most 107
    bytes including the CRLF, printable US-ASCII only; or C{PROXY
    UNKNOWN...\\r\\n}, whose rest of line is ignored as the specification
    says.
  - v2: version 2, command LOCAL or PROXY, and for PROXY one of the
    family/transport bytes the specification lists; the address block
    must be as long as its family needs.  TCP over IPv4/IPv6 gives
    addresses; UDP and UNIX fall back to "unspecified", as the
    specification allows (the real peer address is then the client's).
    The TLV vector must fill the block exactly (sub-TLVs of
    C{PP2_TYPE_SSL} too); C{PP2_TYPE_AUTHORITY} must be UTF-8, the SSL
    version and cipher US-ASCII, C{PP2_TYPE_UNIQUE_ID} at most 128 bytes,
    and a C{PP2_TYPE_CRC32C} must match.  LOCAL (a load balancer's own
    health check) discards the block, family included, as the
    specification says: the connection's real endpoints apply.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Iterator
from typing import Final

import attrs

__all__ = [
    "NEED_MORE",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "SIGNATURE_V2",
    "TLV",
    "V1_MAX_LENGTH",
    "BadProxyAddress",
    "BadProxyTLV",
    "Command",
    "NoProxyHeader",
    "ProxyAddress",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderTooLong",
    "ProxyHeaderTruncated",
    "SSLInfo",
    "UnsupportedProxyHeader",
    "authorityTLV",
    "connectionHeader",
    "crc32c",
    "encode",
    "sslTLV",
]

#: The 12 bytes every version 2 header starts with.
SIGNATURE_V2: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
#: The longest version 1 line, CRLF included ("PROXY UNKNOWN" with two
#: full-length IPv6 addresses and ports).
V1_MAX_LENGTH: Final = 107

PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
PP2_TYPE_NETNS: Final = 0x30

PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04

_MAX_UNIQUE_ID = 128

# v2 family/transport bytes the specification lists -> address block size.
_FAMILY_TCP4, _FAMILY_TCP6, _FAMILY_UNSPEC = 0x11, 0x21, 0x00
_ADDRESS_SIZES: Final = {
    0x00: 0,  # UNSPEC
    0x11: 12,  # TCP over IPv4
    0x12: 12,  # UDP over IPv4
    0x21: 36,  # TCP over IPv6
    0x22: 36,  # UDP over IPv6
    0x31: 216,  # UNIX stream
    0x32: 216,  # UNIX datagram
}


# --- errors ---------------------------------------------------------------------


class ProxyHeaderError(Exception):
    """
    The first bytes of a connection are not an acceptable PROXY header.

    @cvar reason: stable slug for access-log reasons and metric labels.
    """

    reason = "malformed"


class NoProxyHeader(ProxyHeaderError):
    """
    The connection does not start with a PROXY header at all (a client
    that reached the port directly, or a balancer not configured to send
    one), or it closed before sending anything.
    """

    reason = "missing"


class ProxyHeaderTruncated(ProxyHeaderError):
    """
    The connection ended in the middle of a header.
    """

    reason = "truncated"


class ProxyHeaderTooLong(ProxyHeaderError):
    """
    No CRLF within the 107 bytes a version 1 line may take.
    """

    reason = "too_long"


class UnsupportedProxyHeader(ProxyHeaderError):
    """
    A version, command, protocol or family/transport value the
    specification does not assign.
    """

    reason = "unsupported"


class BadProxyAddress(ProxyHeaderError):
    """
    An address or port that is not valid for the announced family.
    """

    reason = "bad_address"


class BadProxyTLV(ProxyHeaderError):
    """
    A version 2 TLV vector that does not add up, a value of the wrong form,
    or a checksum that does not match.
    """

    reason = "bad_tlv"


class _NeedMore(enum.Enum):
    NEED_MORE = "need-more"


#: The reader's answer while the header is incomplete.
NEED_MORE: Final = _NeedMore.NEED_MORE


# --- values ---------------------------------------------------------------------


class Command(enum.Enum):
    """
    The version 2 command.  Version 1 headers are always C{PROXY}.
    """

    LOCAL = 0x0
    PROXY = 0x1


def _canonicalHost(host: str) -> str:
    return str(ipaddress.ip_address(host))


def _validPort(instance: object, attribute: object, port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not in 0..65535")


@attrs.frozen
class ProxyAddress:
    """
    One end of a proxied TCP connection.

    @ivar host: the IP address in Python's canonical text form (an
        IPv4-mapped IPv6 address stays IPv6).
    """

    host: str = attrs.field(converter=_canonicalHost)
    port: int = attrs.field(validator=_validPort)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _validType(instance: object, attribute: object, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"TLV type {value} is not one byte")


def _validValue(instance: object, attribute: object, value: bytes) -> None:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV value of {len(value)} bytes is over 65535")


@attrs.frozen
class TLV:
    """
    One type-length-value item of a version 2 header (or of the value of a
    C{PP2_TYPE_SSL} item).
    """

    type: int = attrs.field(validator=_validType)
    value: bytes = attrs.field(validator=_validValue)

    def encode(self) -> bytes:
        return struct.pack("!BH", self.type, len(self.value)) + self.value


@attrs.frozen
class SSLInfo:
    """
    The value of a C{PP2_TYPE_SSL} TLV: what the sender knows of the
    client's TLS connection, when it terminated it.

    @ivar client: C{PP2_CLIENT_*} bits: TLS was used, a client certificate
        was sent on this connection, or on its TLS session.
    @ivar verify: zero when the client presented a certificate and it was
        verified; anything else otherwise.
    @ivar tlvs: the sub-TLVs, in order (C{PP2_SUBTYPE_SSL_VERSION}, ...).
    """

    client: int
    verify: int
    tlvs: tuple[TLV, ...] = ()

    def _text(self, kind: int) -> str | None:
        for tlv in self.tlvs:
            if tlv.type == kind:
                return tlv.value.decode("utf-8", "replace")
        return None

    @property
    def version(self) -> str | None:
        """C{PP2_SUBTYPE_SSL_VERSION}, such as C{TLSv1.3}."""
        return self._text(PP2_SUBTYPE_SSL_VERSION)

    @property
    def cipher(self) -> str | None:
        """C{PP2_SUBTYPE_SSL_CIPHER}, such as C{TLS_AES_256_GCM_SHA384}."""
        return self._text(PP2_SUBTYPE_SSL_CIPHER)

    @property
    def commonName(self) -> str | None:
        """C{PP2_SUBTYPE_SSL_CN}: the client certificate's common name."""
        return self._text(PP2_SUBTYPE_SSL_CN)

    def toTLV(self) -> TLV:
        value = struct.pack("!BI", self.client, self.verify)
        return TLV(PP2_TYPE_SSL, value + b"".join(t.encode() for t in self.tlvs))

    @classmethod
    def fromValue(cls, value: bytes) -> SSLInfo:
        """
        @raise BadProxyTLV: the value is shorter than its fixed part, its
            sub-TLVs do not fill it exactly, or a text sub-TLV is not
            US-ASCII (UTF-8 for the common name).
        """
        if len(value) < 5:
            raise BadProxyTLV(f"PP2_TYPE_SSL value of {len(value)} bytes, under 5")
        client, verify = struct.unpack("!BI", value[:5])
        tlvs = tuple(_readTLVs(value[5:], "PP2_TYPE_SSL sub-TLV"))
        for tlv in tlvs:
            if tlv.type == PP2_SUBTYPE_SSL_CN:
                _decode(tlv.value, "utf-8", "PP2_SUBTYPE_SSL_CN")
            elif tlv.type in (
                PP2_SUBTYPE_SSL_VERSION,
                PP2_SUBTYPE_SSL_CIPHER,
                PP2_SUBTYPE_SSL_SIG_ALG,
                PP2_SUBTYPE_SSL_KEY_ALG,
            ):
                _decode(tlv.value, "ascii", f"PP2_SSL sub-TLV 0x{tlv.type:02x}")
        return cls(client, verify, tlvs)


def _sameFamily(source: ProxyAddress | None, destination: ProxyAddress | None) -> bool:
    if source is None or destination is None:
        return source is None and destination is None
    return source.ip.version == destination.ip.version


@attrs.frozen
class ProxyHeader:
    """
    A PROXY protocol header.

    @ivar version: 1 (text) or 2 (binary).
    @ivar command: L{Command.LOCAL} (version 2 only) for a connection the
        balancer made for itself, such as a health check: the connection's
        real endpoints apply.
    @ivar source: the client, or L{None} when the header carries no usable
        address (LOCAL, v1 C{UNKNOWN}, v2 UNSPEC, UDP or UNIX); the
        receiver then uses the connection's real peer.
    @ivar destination: the address the client connected to, or L{None}
        with C{source}.
    @ivar tlvs: version 2 TLVs, in order (a CRC32C TLV included, as read).
    """

    version: int = 2
    command: Command = Command.PROXY
    source: ProxyAddress | None = None
    destination: ProxyAddress | None = None
    tlvs: tuple[TLV, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"PROXY protocol version {self.version} is not 1 or 2")
        if not _sameFamily(self.source, self.destination):
            raise ValueError("source and destination must both be set, same family")
        if self.command is Command.LOCAL and (self.source or self.tlvs):
            # The receiver discards a LOCAL header's block, family included.
            raise ValueError("a LOCAL header carries no addresses and no TLVs")
        if self.version == 1 and (self.tlvs or self.command is Command.LOCAL):
            raise ValueError("version 1 has no TLVs and no LOCAL command")

    @property
    def authority(self) -> str | None:
        """C{PP2_TYPE_AUTHORITY}: the server name the client asked for."""
        for tlv in self.tlvs:
            if tlv.type == PP2_TYPE_AUTHORITY:
                return tlv.value.decode("utf-8", "replace")
        return None

    @property
    def ssl(self) -> SSLInfo | None:
        """C{PP2_TYPE_SSL}: the client's TLS connection, as the sender saw it."""
        for tlv in self.tlvs:
            if tlv.type == PP2_TYPE_SSL:
                return SSLInfo.fromValue(tlv.value)
        return None


def authorityTLV(serverName: str) -> TLV:
    """C{PP2_TYPE_AUTHORITY} for a server name (SNI)."""
    return TLV(PP2_TYPE_AUTHORITY, serverName.encode("utf-8"))


def sslTLV(
    version: str | None,
    cipher: str | None,
    *,
    certificateOnConnection: bool = False,
    certificateOnSession: bool = False,
    verified: bool = False,
    commonName: str | None = None,
) -> TLV:
    """
    C{PP2_TYPE_SSL} for a connection the sender terminated.

    @param certificateOnConnection: the client sent a certificate in this
        handshake (C{PP2_CLIENT_CERT_CONN}).
    @param certificateOnSession: the TLS session, perhaps resumed, has a
        client certificate (C{PP2_CLIENT_CERT_SESS}).
    @param verified: that certificate was verified: C{verify} is then 0,
        else 1, as the specification says.
    """
    client = PP2_CLIENT_SSL
    if certificateOnConnection:
        client |= PP2_CLIENT_CERT_CONN
    if certificateOnSession or certificateOnConnection:
        client |= PP2_CLIENT_CERT_SESS
    hasCertificate = bool(client & PP2_CLIENT_CERT_SESS)
    tlvs = []
    if version is not None:
        tlvs.append(TLV(PP2_SUBTYPE_SSL_VERSION, version.encode("ascii")))
    if commonName is not None:
        tlvs.append(TLV(PP2_SUBTYPE_SSL_CN, commonName.encode("utf-8")))
    if cipher is not None:
        tlvs.append(TLV(PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii")))
    verify = 0 if hasCertificate and verified else 1
    return SSLInfo(client, verify, tuple(tlvs)).toTLV()


def connectionHeader(
    version: int,
    source: ProxyAddress | None,
    destination: ProxyAddress | None,
    tlvs: Iterable[TLV] = (),
) -> ProxyHeader:
    """
    The header a sender writes for one relayed connection.

    Mixed families (an IPv4 client on an IPv6 socket's other end) are sent
    as IPv6, the IPv4 side as an IPv4-mapped address, as HAProxy does; a
    missing end (a UNIX socket client) makes the whole header "unknown".
    Version 1 drops the TLVs: it has none.
    """
    if source is None or destination is None:
        source = destination = None
    elif source.ip.version != destination.ip.version:
        source, destination = _mapped(source), _mapped(destination)
    return ProxyHeader(
        version, Command.PROXY, source, destination, tuple(tlvs) if version == 2 else ()
    )


def _mapped(address: ProxyAddress) -> ProxyAddress:
    if address.ip.version == 6:
        return address
    return ProxyAddress(f"::ffff:{address.host}", address.port)


# --- encoding -------------------------------------------------------------------


def _v6Text(host: str) -> str:
    # Version 1 wants hex groups only; some Pythons write IPv4-mapped
    # addresses with a dotted quad.
    address = ipaddress.IPv6Address(host)
    text = address.compressed
    return address.exploded if "." in text else text


def encode(header: ProxyHeader, *, checksum: bool = False) -> bytes:
    """
    The header's bytes, to be written before anything else.

    @param checksum: (version 2) append a C{PP2_TYPE_CRC32C} TLV computed
        over the whole header.
    """
    if header.version == 1:
        if checksum:
            raise ValueError("version 1 has no checksum")
        return _encodeV1(header)
    return _encodeV2(header, checksum)


def _encodeV1(header: ProxyHeader) -> bytes:
    source, destination = header.source, header.destination
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source.ip.version == 4:
        family, hosts = "TCP4", (source.host, destination.host)
    else:
        family = "TCP6"
        hosts = (_v6Text(source.host), _v6Text(destination.host))
    line = f"PROXY {family} {hosts[0]} {hosts[1]} {source.port} {destination.port}\r\n"
    return line.encode("ascii")


def _encodeV2(header: ProxyHeader, checksum: bool) -> bytes:
    source, destination = header.source, header.destination
    if header.command is Command.LOCAL or source is None or destination is None:
        family, block = _FAMILY_UNSPEC, b""
    else:
        family = _FAMILY_TCP4 if source.ip.version == 4 else _FAMILY_TCP6
        block = (
            source.ip.packed
            + destination.ip.packed
            + struct.pack("!HH", source.port, destination.port)
        )
    block += b"".join(tlv.encode() for tlv in header.tlvs)
    if checksum:
        block += TLV(PP2_TYPE_CRC32C, b"\x00" * 4).encode()
    if len(block) > 0xFFFF:
        raise ValueError(f"a version 2 header of {len(block)} bytes is too large")
    data = (
        SIGNATURE_V2
        + struct.pack("!BBH", 0x20 | header.command.value, family, len(block))
        + block
    )
    if checksum:
        data = data[:-4] + struct.pack("!I", crc32c(data))
    return data


# --- TLVs and text in them -------------------------------------------------------


def _decode(value: bytes, encoding: str, what: str) -> str:
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise BadProxyTLV(f"{what} is not {encoding.upper()}") from None


def _readTLVs(data: bytes, what: str) -> Iterator[TLV]:
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            raise BadProxyTLV(f"{what} header cut at offset {offset}")
        kind = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 3], "big")
        end = offset + 3 + length
        if end > len(data):
            raise BadProxyTLV(
                f"{what} 0x{kind:02x} of {length} bytes overruns the header"
            )
        yield TLV(kind, data[offset + 3 : end])
        offset = end


# --- CRC32C (Castagnoli, RFC 4960 appendix B) --------------------------------------


def _crcTable() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crcTable()


def crc32c(data: bytes) -> int:
    """
    The CRC32C of C{data}, for C{PP2_TYPE_CRC32C}.  Headers are short, so
    a table in pure Python is fast enough and needs no extension module.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
