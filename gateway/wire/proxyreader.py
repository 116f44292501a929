"""
Read one PROXY protocol header (v1 or v2), strictly, from the start of a
byte stream cut anywhere: C{(header, rest)}, L{NEED_MORE}, or a
L{ProxyHeaderError} with a C{reason} (the values, the errors, the encoder
and why not C{twisted.protocols.haproxy}: L{gateway.wire.proxyprotocol}).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Literal, NoReturn

from gateway.wire.proxyprotocol import (
    _ADDRESS_SIZES,
    _FAMILY_TCP4,
    _FAMILY_TCP6,
    _MAX_UNIQUE_ID,
    _V1_PREFIX,
    NEED_MORE,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    SIGNATURE_V2,
    TLV,
    V1_MAX_LENGTH,
    BadProxyAddress,
    BadProxyTLV,
    Command,
    NoProxyHeader,
    ProxyAddress,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderTooLong,
    ProxyHeaderTruncated,
    SSLInfo,
    UnsupportedProxyHeader,
    _decode,
    _NeedMore,
    _readTLVs,
    crc32c,
)

__all__ = ["ProxyHeaderReader"]

_V1_LINE = re.compile(rb"[\x20-\x7e]*")
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_V1_IPV4 = re.compile(r"[0-9.]{7,15}")
_V1_IPV6 = re.compile(r"[0-9A-Fa-f:]{2,39}")


class ProxyHeaderReader:
    """
    Read one PROXY header (v1 or v2) from the start of a byte stream cut
    anywhere.

    @ivar _buffer: every byte fed since the last header, so that
        L{buffered} and the leftover bytes are exact.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> bytes:
        """The bytes fed so far and not yet returned as a header and rest."""
        return bytes(self._buffer)

    def feed(
        self, data: bytes
    ) -> tuple[ProxyHeader, bytes] | Literal[_NeedMore.NEED_MORE]:
        """
        @return: the header and the bytes that followed it, once it is
            complete (the reader then starts over, empty); otherwise
            L{NEED_MORE}.
        @raise ProxyHeaderError: the bytes so far cannot start a valid
            header.  Raised as soon as they show it, not after a timeout.
        """
        self._buffer += data
        if not self._buffer:
            return NEED_MORE
        first = self._buffer[0]
        if first == _V1_PREFIX[0]:
            result = self._feedV1()
        elif first == SIGNATURE_V2[0]:
            result = self._feedV2()
        else:
            _notAHeader(bytes(self._buffer))
        if result is not NEED_MORE:
            self._buffer = bytearray()
        return result

    def end(self) -> NoReturn:
        """
        The stream ended before a complete header.

        @raise NoProxyHeader: nothing was fed.
        @raise ProxyHeaderTruncated: a header was begun.
        """
        if not self._buffer:
            raise NoProxyHeader("connection closed before a PROXY header")
        raise ProxyHeaderTruncated(
            f"connection closed after {len(self._buffer)} bytes of a PROXY header"
        )

    def _feedV1(self) -> tuple[ProxyHeader, bytes] | Literal[_NeedMore.NEED_MORE]:
        buffer = self._buffer
        # "PROXY" is the signature (the specification's test for version
        # 1); what follows it is the header's own syntax.
        if not _V1_PREFIX.startswith(bytes(buffer[:5])):
            _notAHeader(bytes(buffer))
        if len(buffer) > 5 and buffer[5] != 0x20:
            raise ProxyHeaderError("no space after PROXY in a version 1 header")
        # The CR may be at most at index 105: the line, CRLF included, fits
        # in 107 bytes.
        limit = V1_MAX_LENGTH - 1
        end = _V1_LINE.match(buffer, 0, limit).end()  # type: ignore[union-attr]
        if end == len(buffer):
            if end >= limit:
                raise ProxyHeaderTooLong(
                    f"no CRLF in the first {V1_MAX_LENGTH} bytes of a version 1 header"
                )
            return NEED_MORE
        if end == limit:
            raise ProxyHeaderTooLong(
                f"no CRLF in the first {V1_MAX_LENGTH} bytes of a version 1 header"
            )
        if buffer[end] != 0x0D:
            raise ProxyHeaderError(
                f"byte 0x{buffer[end]:02x} at offset {end} of a version 1 header"
            )
        if end + 1 == len(buffer):
            return NEED_MORE
        if buffer[end + 1] != 0x0A:
            raise ProxyHeaderError(
                f"CR without LF at offset {end} of a version 1 header"
            )
        header = _parseV1(bytes(buffer[:end]).decode("ascii"))
        return header, bytes(buffer[end + 2 :])

    def _feedV2(self) -> tuple[ProxyHeader, bytes] | Literal[_NeedMore.NEED_MORE]:
        buffer = self._buffer
        if not SIGNATURE_V2.startswith(bytes(buffer[: len(SIGNATURE_V2)])):
            _notAHeader(bytes(buffer))
        if len(buffer) > 12:
            version, command = buffer[12] >> 4, buffer[12] & 0x0F
            if version != 2:
                raise UnsupportedProxyHeader(f"version {version} in a v2 signature")
            if command not in (Command.LOCAL.value, Command.PROXY.value):
                raise UnsupportedProxyHeader(
                    f"command 0x{command:x} is not LOCAL/PROXY"
                )
            if (
                len(buffer) > 13
                and command == Command.PROXY.value
                and buffer[13] not in _ADDRESS_SIZES
            ):
                raise UnsupportedProxyHeader(
                    f"family/transport 0x{buffer[13]:02x} is not assigned"
                )
        if len(buffer) < 16:
            return NEED_MORE
        size = 16 + int.from_bytes(buffer[14:16], "big")
        if len(buffer) < size:
            return NEED_MORE
        header = _parseV2(bytes(buffer[:size]))
        return header, bytes(buffer[size:])


def _notAHeader(data: bytes) -> NoReturn:
    raise NoProxyHeader(
        f"the connection does not start with a PROXY header: {data[:8].hex(' ')}"
    )


def _parseV1(line: str) -> ProxyHeader:
    fields = line.split(" ")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        return ProxyHeader(1)
    if protocol not in ("TCP4", "TCP6"):
        raise UnsupportedProxyHeader(f"version 1 protocol {protocol!r}")
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"version 1 {protocol} header has {len(fields)} fields, not 6"
            " (exactly one space between fields)"
        )
    source = _v1Address(protocol, fields[2], fields[4])
    destination = _v1Address(protocol, fields[3], fields[5])
    return ProxyHeader(1, Command.PROXY, source, destination)


def _v1Address(protocol: str, host: str, port: str) -> ProxyAddress:
    if not _V1_PORT.fullmatch(port) or int(port) > 0xFFFF:
        raise BadProxyAddress(f"{port!r} is not a port (0..65535, no leading zeros)")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if protocol == "TCP4":
            if not _V1_IPV4.fullmatch(host):
                raise ValueError(host)
            ip = ipaddress.IPv4Address(host)
        else:
            if not _V1_IPV6.fullmatch(host):
                raise ValueError(host)
            ip = ipaddress.IPv6Address(host)
    except ValueError:
        raise BadProxyAddress(
            f"{host!r} is not a canonical {protocol} address"
        ) from None
    return ProxyAddress(str(ip), int(port))


def _parseV2(data: bytes) -> ProxyHeader:
    command = Command(data[12] & 0x0F)
    if command is Command.LOCAL:
        return ProxyHeader(2, Command.LOCAL)
    family = data[13]
    block = data[16:]
    size = _ADDRESS_SIZES[family]
    if len(block) < size:
        raise BadProxyAddress(
            f"address block of {len(block)} bytes; family 0x{family:02x} needs {size}"
        )
    source = destination = None
    if family in (_FAMILY_TCP4, _FAMILY_TCP6):
        width = 4 if family == _FAMILY_TCP4 else 16
        make = ipaddress.IPv4Address if width == 4 else ipaddress.IPv6Address
        sourcePort, destinationPort = struct.unpack(
            "!HH", block[2 * width : 2 * width + 4]
        )
        source = ProxyAddress(str(make(block[:width])), sourcePort)
        destination = ProxyAddress(str(make(block[width : 2 * width])), destinationPort)
    tlvs = tuple(_readTLVs(block[size:], "TLV"))
    _checkTLVs(tlvs, data, 16 + size)
    return ProxyHeader(2, Command.PROXY, source, destination, tlvs)


def _checkTLVs(tlvs: tuple[TLV, ...], header: bytes, offset: int) -> None:
    """
    Check the values of the TLVs this gateway understands; C{offset} is
    where the first one starts in C{header}, to find the checksum's bytes.
    """
    for tlv in tlvs:
        if tlv.type == PP2_TYPE_AUTHORITY:
            _decode(tlv.value, "utf-8", "PP2_TYPE_AUTHORITY")
        elif tlv.type == PP2_TYPE_SSL:
            SSLInfo.fromValue(tlv.value)
        elif tlv.type == PP2_TYPE_UNIQUE_ID and len(tlv.value) > _MAX_UNIQUE_ID:
            raise BadProxyTLV(
                f"PP2_TYPE_UNIQUE_ID of {len(tlv.value)} bytes, over {_MAX_UNIQUE_ID}"
            )
        elif tlv.type == PP2_TYPE_CRC32C:
            if len(tlv.value) != 4:
                raise BadProxyTLV(f"PP2_TYPE_CRC32C of {len(tlv.value)} bytes, not 4")
            start = offset + 3
            zeroed = header[:start] + b"\x00" * 4 + header[start + 4 :]
            expected = crc32c(zeroed)
            if int.from_bytes(tlv.value, "big") != expected:
                raise BadProxyTLV(
                    f"PP2_TYPE_CRC32C is {tlv.value.hex()}, the header's is"
                    f" {expected:08x}"
                )
        offset += 3 + len(tlv.value)
