"""
The fatal TLS alert a refused connection gets before it is closed.

Pure: bytes out, nothing else.  A TLS server that refuses a handshake says
why in an alert (RFC 8446 section 6), and clients show it: curl prints
C{unrecognized name} for a C{no_route}, where a bare close would read as
C{connection reset}; test suites such as tlsfuzzer expect C{decode_error}
for a malformed ClientHello.  The gateway refuses connections before any
TLS library has seen them, so it writes the alert record itself.

The alert goes out as a plaintext record (no keys exist yet) whose record
version is the one the client offered: its ClientHello's
C{legacy_version} (0x0301 from a TLS 1.0 client, 0x0303 from TLS 1.2 and
1.3 ones, which RFC 8446 5.1 fixes at 0x0303), as OpenSSL does when it
refuses a ClientHello's version.  Before any ClientHello was read (a
refusal at accept), or when it cannot be parsed, the version comes from
the client's first record header if there is one, else it is 0x0301:
the version OpenSSL writes before a version is negotiated, which every
TLS client takes in a server's first record.
"""

from __future__ import annotations

import enum
from typing import Final

from gateway.wire.clienthello import ClientHello

__all__ = [
    "STATUS_ALERTS",
    "AlertDescription",
    "alertRecord",
    "recordVersion",
]

_ALERT: Final = 21
_FATAL: Final = 2
_HANDSHAKE: Final = 22
_TLS10: Final = 0x0301
_TLS12: Final = 0x0303


class AlertDescription(enum.IntEnum):
    """
    The alerts the gateway sends (RFC 8446 section 6.2), by their wire code.
    """

    HANDSHAKE_FAILURE = 40
    ILLEGAL_PARAMETER = 47
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INTERNAL_ERROR = 80
    UNRECOGNIZED_NAME = 112


STATUS_ALERTS: Final[dict[str, AlertDescription]] = {
    "bad_client_hello": AlertDescription.DECODE_ERROR,
    "no_route": AlertDescription.UNRECOGNIZED_NAME,
    "denied": AlertDescription.ACCESS_DENIED,
    "limited": AlertDescription.ACCESS_DENIED,
    "upstream_unavailable": AlertDescription.INTERNAL_ERROR,
}
"""
The alert for each access-log status of a refusal before any upstream
(the contract's table).  A C{passthrough_protocols} refusal is C{denied}
in the log but gets C{protocol_version}: its caller says so.  Statuses not
here (C{preread_timeout}, C{bad_proxy_header}, ...) close without an alert.
"""


def _clamp(version: int) -> int:
    """
    A record version a client accepts: TLS 1.0 to 1.2 (TLS 1.3 records
    say 1.2).  An SSL 3.0 client is answered in TLS 1.0 records, which is
    what a server that no longer speaks SSL 3.0 sends it.
    """
    return min(max(version, _TLS10), _TLS12)


def recordVersion(hello: ClientHello | None, buffered: bytes = b"") -> int:
    """
    The record version of the alert for a client.

    @param hello: the parsed ClientHello, if the pre-read got that far.
    @param buffered: what the client sent (for its first record header
        when there is no hello).
    """
    if hello is not None:
        return _clamp(hello.legacyVersion)
    if len(buffered) >= 3 and buffered[0] == _HANDSHAKE and buffered[1] == 3:
        return _clamp(int.from_bytes(buffered[1:3], "big"))
    return _TLS10


def alertRecord(description: AlertDescription, version: int = _TLS10) -> bytes:
    """
    One plaintext TLS record holding one fatal alert: 7 bytes.
    """
    return bytes([_ALERT, version >> 8, version & 0xFF, 0, 2, _FATAL, int(description)])
