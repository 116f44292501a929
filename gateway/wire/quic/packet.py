"""
QUIC packet headers, read without decrypting anything: the long header
(RFC 9000 section 17.2, RFC 9369 section 3.2 for v2's packet types), the
Destination Connection ID of a short header, and the Version Negotiation
packet a server answers unknown versions with.

Connection IDs are all the flows need to find a datagram's flow, and all
the reader needs to derive the Initial keys; the rest of a header is
version specific, so only v1 and v2 are read beyond the invariants of RFC
8999.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from gateway.wire.quic.errors import QuicError, UnsupportedVersion

__all__ = [
    "MAX_CONNECTION_ID",
    "MIN_INITIAL_DATAGRAM",
    "QUIC_V1",
    "QUIC_V2",
    "SUPPORTED_VERSIONS",
    "LongHeader",
    "PacketType",
    "encodeVarint",
    "isLongHeader",
    "longHeaders",
    "longPacketTypeBits",
    "parseLongHeader",
    "readVarint",
    "shortHeaderDCID",
    "versionNegotiation",
]

#: RFC 9000.
QUIC_V1: Final = 0x00000001
#: RFC 9369.
QUIC_V2: Final = 0x6B3343CF
#: The versions whose Initial packets the gateway reads, in the order a
#: Version Negotiation packet lists them.
SUPPORTED_VERSIONS: tuple[int, ...] = (QUIC_V1, QUIC_V2)
#: RFC 9000 section 17.2: v1 and v2 connection IDs are at most 20 bytes
#: (RFC 8999 allows 255 for other versions).
MAX_CONNECTION_ID: Final = 20
#: RFC 9000 section 14.1: the smallest UDP payload that may carry a
#: client's Initial.
MIN_INITIAL_DATAGRAM: Final = 1200

_LONG_HEADER: Final = 0x80
_VERSION_NEGOTIATION: Final = 0
#: The first byte of the Version Negotiation packets we send: the unused
#: bits are free, and RFC 9000 17.2.1 asks for 0x40 set so that QUIC can
#: share a port with protocols that demultiplex on it (RFC 7983).
_VN_FIRST_BYTE: Final = 0xC0


class PacketType(enum.Enum):
    """
    The long header packet types, by meaning: their two type bits differ
    between v1 and v2 (RFC 9369 section 3.2), so the bits are decoded with
    the version first.
    """

    INITIAL = "initial"
    ZERO_RTT = "0rtt"
    HANDSHAKE = "handshake"
    RETRY = "retry"
    VERSION_NEGOTIATION = "version_negotiation"


_TYPES: Final = {
    QUIC_V1: (
        PacketType.INITIAL,
        PacketType.ZERO_RTT,
        PacketType.HANDSHAKE,
        PacketType.RETRY,
    ),
    QUIC_V2: (
        PacketType.RETRY,
        PacketType.INITIAL,
        PacketType.ZERO_RTT,
        PacketType.HANDSHAKE,
    ),
}


@attrs.frozen
class LongHeader:
    """
    One long-header packet of a datagram, as far as it can be read without
    keys.

    @ivar version: the packet's version; 0 for Version Negotiation.
    @ivar packetType: what the packet is.
    @ivar dcid: Destination Connection ID.
    @ivar scid: Source Connection ID.
    @ivar token: an Initial's token (empty unless the client answers a
        Retry or presents a NEW_TOKEN token); a Retry's token (without its
        integrity tag); empty for the other types.
    @ivar length: the packet's length within the datagram, header included:
        the next coalesced packet starts that many bytes further.
    @ivar offset: where the packet starts in the datagram.
    @ivar headerLength: the bytes before the (protected) packet number, for
        the types that have one.
    @ivar versions: the versions a Version Negotiation packet lists.
    """

    version: int
    packetType: PacketType
    dcid: bytes
    scid: bytes
    token: bytes
    length: int
    offset: int = 0
    headerLength: int = 0
    versions: tuple[int, ...] = ()


def encodeVarint(value: int) -> bytes:
    """
    A QUIC variable-length integer (RFC 9000 section 16), shortest form.
    """
    if value < 0:
        raise ValueError(f"varint {value} is negative")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value < 1 << 62:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint {value} needs more than 62 bits")


def longPacketTypeBits(version: int, packetType: PacketType) -> int:
    """
    The two type bits of a long header of C{packetType} in C{version}.

    @raise KeyError: a version other than v1 and v2.
    @raise ValueError: a type without type bits (Version Negotiation).
    """
    return _TYPES[version].index(packetType)


def readVarint(data: bytes, i: int, end: int, field: str) -> tuple[int, int]:
    """
    Read a variable-length integer (RFC 9000 section 16) at C{data[i]}.

    @return: the value and the offset after it.
    @raise QuicError: it runs past C{end}.
    """
    if i >= end:
        raise QuicError(f"{field} is missing")
    size = 1 << (data[i] >> 6)
    if i + size > end:
        raise QuicError(f"{field} needs {size} bytes, {end - i} left")
    value = data[i] & 0x3F
    for j in range(i + 1, i + size):
        value = (value << 8) | data[j]
    return value, i + size


def isLongHeader(datagram: bytes) -> bool:
    """
    Tell whether a datagram starts with a long header (RFC 8999 5.1): its
    first bit, the only one every version agrees on.
    """
    return bool(datagram) and bool(datagram[0] & _LONG_HEADER)


def _connectionID(datagram: bytes, i: int, which: str) -> tuple[bytes, int]:
    if i >= len(datagram):
        raise QuicError(f"length of the {which} connection ID is missing")
    size = datagram[i]
    if i + 1 + size > len(datagram):
        raise QuicError(f"{which} connection ID of {size} bytes runs past the datagram")
    return datagram[i + 1 : i + 1 + size], i + 1 + size


def parseLongHeader(datagram: bytes, offset: int = 0) -> LongHeader:
    """
    Read the long header of the packet at C{datagram[offset:]}.

    @raise UnsupportedVersion: the version is neither v1, v2 nor 0 (Version
        Negotiation); it carries the connection IDs a reply needs.
    @raise QuicError: a short header, or a header that is cut short, has
        connection IDs too long for its version, or a length past the
        datagram.
    """
    end = len(datagram)
    if offset >= end or not datagram[offset] & _LONG_HEADER:
        raise QuicError("not a long header")
    if offset + 5 > end:
        raise QuicError("long header cut short in its version")
    first = datagram[offset]
    version = int.from_bytes(datagram[offset + 1 : offset + 5], "big")
    dcid, i = _connectionID(datagram, offset + 5, "destination")
    scid, i = _connectionID(datagram, i, "source")
    if version == _VERSION_NEGOTIATION:
        count, left = divmod(end - i, 4)
        if left or not count:
            raise QuicError(f"Version Negotiation list of {end - i} bytes")
        versions = tuple(
            int.from_bytes(datagram[j : j + 4], "big") for j in range(i, end, 4)
        )
        return LongHeader(
            version,
            PacketType.VERSION_NEGOTIATION,
            dcid,
            scid,
            b"",
            end - offset,
            offset,
            versions=versions,
        )
    if version not in _TYPES:
        raise UnsupportedVersion(version, dcid, scid)
    if len(dcid) > MAX_CONNECTION_ID or len(scid) > MAX_CONNECTION_ID:
        raise QuicError(
            f"connection IDs of {len(dcid)} and {len(scid)} bytes; "
            f"QUIC allows {MAX_CONNECTION_ID}"
        )
    packetType = _TYPES[version][(first >> 4) & 3]
    token = b""
    if packetType is PacketType.RETRY:
        # A Retry runs to the end of the datagram and ends with a 16-byte
        # integrity tag (RFC 9001 5.8).
        if end - i < 16:
            raise QuicError("Retry packet shorter than its integrity tag")
        return LongHeader(
            version,
            packetType,
            dcid,
            scid,
            datagram[i : end - 16],
            end - offset,
            offset,
        )
    if packetType is PacketType.INITIAL:
        size, i = readVarint(datagram, i, end, "token length")
        if i + size > end:
            raise QuicError(f"token of {size} bytes runs past the datagram")
        token = datagram[i : i + size]
        i += size
    length, i = readVarint(datagram, i, end, "packet length")
    if i + length > end:
        raise QuicError(
            f"{packetType.value} packet of {length} bytes runs past the datagram"
        )
    return LongHeader(
        version, packetType, dcid, scid, token, i + length - offset, offset, i - offset
    )


def longHeaders(datagram: bytes) -> list[LongHeader]:
    """
    Every long-header packet coalesced in a datagram (RFC 9000 12.2).

    The list stops at a short header (it runs to the end of the datagram),
    and at bytes after a packet that do not read as a long header: RFC 9000
    lets senders pad a datagram with anything after its packets, and a
    receiver drops what it cannot read there without dropping the packets
    before it.  Only the first packet must be readable.

    @raise UnsupportedVersion: the first packet's version is unknown.
    @raise QuicError: the first packet is not a readable long header.
    """
    headers = [parseLongHeader(datagram)]
    offset = headers[0].length
    while offset < len(datagram) and datagram[offset] & _LONG_HEADER:
        try:
            header = parseLongHeader(datagram, offset)
        except QuicError:
            break
        headers.append(header)
        offset += header.length
    return headers


def shortHeaderDCID(datagram: bytes, length: int) -> bytes:
    """
    The Destination Connection ID of a short-header packet (RFC 9000
    17.3), whose length the header does not say: the endpoint that chose
    the ID knows it, and so does a flow that saw it in a long header.

    @raise QuicError: a long header, or a datagram too short for the ID.
    """
    if not datagram or datagram[0] & _LONG_HEADER:
        raise QuicError("not a short header")
    if not 0 <= length <= MAX_CONNECTION_ID:
        raise QuicError(f"connection ID length {length} out of 0 to 20")
    if len(datagram) < 1 + length:
        raise QuicError(
            f"short header of {len(datagram)} bytes has no {length}-byte connection ID"
        )
    return datagram[1 : 1 + length]


def versionNegotiation(
    clientDCID: bytes,
    clientSCID: bytes,
    versions: tuple[int, ...] = SUPPORTED_VERSIONS,
) -> bytes:
    """
    The Version Negotiation packet answering a client's long header (RFC
    9000 17.2.1): the client's Source Connection ID becomes its
    Destination and the other way round, so the client can tell that the
    answer is for its own packet.

    @param versions: the versions to offer, each a 32-bit integer.
    """
    if len(clientDCID) > 255 or len(clientSCID) > 255:
        raise ValueError("connection IDs are at most 255 bytes (RFC 8999)")
    return b"".join(
        [
            bytes([_VN_FIRST_BYTE]),
            _VERSION_NEGOTIATION.to_bytes(4, "big"),
            bytes([len(clientSCID)]),
            clientSCID,
            bytes([len(clientDCID)]),
            clientDCID,
            *(version.to_bytes(4, "big") for version in versions),
        ]
    )
