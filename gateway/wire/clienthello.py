"""
The TLS ClientHello that opens a connection: what the gateway keeps of it
(L{ClientHello}), its error family, and the parser of one whole message;
L{gateway.wire.helloreader} reassembles the records that carry it.

The gateway must route a connection (and, for passthrough, forward it
unchanged) before any TLS library sees it, so it reads the first handshake
message itself.  This module and its reader only turn bytes into a
L{ClientHello}, a L{NEED_MORE} answer or a L{ClientHelloError}; reading
sockets, timing out and logging belong to the caller
(C{gateway.connection.preread}).  It must not import Twisted or OpenSSL:
C{tests/test_layering.py} checks that.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, TypeVar

import attrs

__all__ = [
    "NEED_MORE",
    "BadLength",
    "ClientHello",
    "ClientHelloError",
    "ClientHelloTooLarge",
    "NotTLS",
    "isGrease",
]

_EXT_SERVER_NAME: Final = 0
_EXT_SUPPORTED_GROUPS: Final = 10
_EXT_SIGNATURE_ALGORITHMS: Final = 13
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43
#: encrypted_client_hello (RFC 9849): kept raw, read by L{gateway.wire.ech}.
_EXT_ECH: Final = 0xFE0D
_EXTENSION_NAMES: Final = {
    _EXT_SERVER_NAME: "server_name",
    _EXT_SUPPORTED_GROUPS: "supported_groups",
    _EXT_SIGNATURE_ALGORITHMS: "signature_algorithms",
    _EXT_ALPN: "application_layer_protocol_negotiation",
    _EXT_SUPPORTED_VERSIONS: "supported_versions",
}
_EXTENSION_LABELS: Final = {
    code: f"the {name} extension" for code, name in _EXTENSION_NAMES.items()
}
_HOST_NAME: Final = 0
#: The bytes a host name may hold, as the C{delete} argument of
#: C{bytes.translate}: what is left after deleting them is the bad bytes.
_HOST_NAME_BYTES: Final = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
)


class ClientHelloError(Exception):
    """
    The first bytes of a connection are not a ClientHello the gateway can route.

    Every failure of L{gateway.wire.helloreader.ClientHelloReader.feed} is
    one of these, never an C{IndexError} or C{UnicodeDecodeError}, so the caller needs a single
    C{except} to refuse the connection.  The message says what was wrong, for
    the operator reading the log; the slug is for machines.

    @cvar reason: stable slug for access-log fields and metric labels.
    """

    reason = "malformed"


class NotTLS(ClientHelloError):
    """
    The peer does not speak TLS at all: plaintext such as HTTP, or an SSLv2
    hello.  Kept apart because it usually means a misdirected client or a
    port scan rather than a broken TLS stack.
    """

    reason = "not_tls"


class ClientHelloTooLarge(ClientHelloError):
    """
    No complete ClientHello within the reader's size bound.  Kept apart
    because it is the answer to a client that tries to pin memory, and
    because an operator may raise C{preread_buffer_size} in reply.
    """

    reason = "too_large"


class BadLength(ClientHelloError):
    """
    A length field disagrees with the bytes it describes (a vector runs past
    its parent, leaves bytes over, or is out of its RFC range).  Peers with
    truncated or hand-crafted hellos show up here, so it gets its own slug.
    """

    reason = "bad_length"


class _NeedMore(enum.Enum):
    NEED_MORE = "need-more"


NEED_MORE: Final = _NeedMore.NEED_MORE
"""
Answer of L{gateway.wire.helloreader.ClientHelloReader.feed} while the
ClientHello is incomplete: an enum member rather than L{None} so that C{result is NEED_MORE} narrows the
type for mypy, and so that it cannot be confused with "no hello".
"""


def isGrease(value: int) -> bool:
    """
    Tell whether a 16-bit code point is a GREASE value (RFC 8701).

    Clients offer these at random to keep servers tolerant of unknown
    values; fingerprints and version choices must skip them.
    """
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@attrs.frozen
class ClientHello:
    """
    What the gateway learnt from a ClientHello: enough to route the
    connection and to compute a JA4 fingerprint from it later.

    Everything is kept in the order the client sent it, GREASE values
    included, because JA4 sorts some lists and keeps the order of others, and
    because dropping GREASE is the fingerprint's business, not the parser's.

    @ivar serverName: the C{host_name} of the server_name extension, validated
        as a DNS name, lower-cased and without a trailing dot (routing
        compares names case-insensitively, RFC 6066 section 3), or L{None}
        when the client sent no SNI.
    @ivar alpn: offered ALPN protocol names, decoded as Latin-1 so that any
        byte string survives (C{.encode("latin-1")} gives the wire bytes back).
    @ivar legacyVersion: the C{legacy_version} field (0x0303 for TLS 1.2 and
        1.3 clients).
    @ivar supportedVersions: the supported_versions extension (empty when
        absent).
    @ivar ciphers: cipher suite code points.
    @ivar extensions: extension types.
    @ivar signatureAlgorithms: the signature_algorithms extension.
    @ivar supportedGroups: the supported_groups extension.
    @ivar ech: the C{extension_data} of the encrypted_client_hello
        extension, undecoded (L{gateway.wire.ech.parseExtension} reads
        it), or L{None} without one.
    """

    serverName: str | None
    alpn: tuple[str, ...] = ()
    legacyVersion: int = 0x0303
    supportedVersions: tuple[int, ...] = ()
    ciphers: tuple[int, ...] = ()
    extensions: tuple[int, ...] = ()
    signatureAlgorithms: tuple[int, ...] = ()
    supportedGroups: tuple[int, ...] = ()
    ech: bytes | None = attrs.field(default=None, repr=False)

    @property
    def highestVersion(self) -> int:
        """
        The highest protocol version the client offers, e.g. 0x0304 for
        TLS 1.3: from supported_versions when the client sent it (TLS 1.3
        clients freeze C{legacy_version} at 0x0303, RFC 8446 4.1.2), else
        C{legacy_version}.  GREASE values are skipped.
        """
        versions = [v for v in self.supportedVersions if not isGrease(v)]
        return max(versions) if versions else self.legacyVersion


#: What error messages call the whole ClientHello body.
_HELLO: Final = "the ClientHello"


def _short(size: int, field: str, where: str, left: int) -> BadLength:
    """
    A field that runs past the end of the vector (C{where}) holding it.
    """
    return BadLength(f"{field} needs {size} bytes but {where} has only {left} left")


def _outOfRange(field: str, length: int, minimum: int, maximum: int) -> BadLength:
    """
    A vector whose length is outside the range its RFC gives.
    """
    return BadLength(
        f"{field} is {length} bytes long; it must be {minimum} to {maximum} bytes"
    )


def _odd(field: str, length: int) -> BadLength:
    """
    A list of 16-bit code points with an odd number of bytes.
    """
    return BadLength(f"{field} has an odd length ({length})")


def _leftOver(count: int, where: str) -> BadLength:
    """
    Bytes after the last field of C{where}.
    """
    return BadLength(
        f"{count} byte{'s' if count > 1 else ''} left over at the end of {where}"
    )


#: Canonical copies of the lists hellos carry, see L{_shared}.
_SHARED: dict[tuple[object, ...], tuple[object, ...]] = {}
#: Bound on L{_SHARED}: a client that varies its lists on purpose (or
#: GREASEs and shuffles them, as Chrome does its extensions) only fills it
#: up to here, and then it starts over.
_MAX_SHARED: Final = 4096

_T = TypeVar("_T", bound=tuple[object, ...])


def _shared(values: _T) -> _T:
    """
    The one copy of C{values} that every hello with the same list shares.

    A hello lives as long as its connection (the pre-read keeps its
    reader), and most of its size is its lists of 16-bit code points: a
    code point above 256 is an int object of its own, so a browser's
    ciphers, extensions, groups and signature algorithms come to some
    70 objects, 2 to 3 KiB per connection, and every connection from the
    same client build carries the same lists.  Sharing them costs one
    dictionary lookup per list and makes an idle connection's hello about
    a hundred bytes.
    """
    shared = _SHARED.get(values)
    if shared is None:
        if len(_SHARED) >= _MAX_SHARED:
            _SHARED.clear()
        _SHARED[values] = shared = values
    return shared  # type: ignore[return-value]


def _uint16s(body: bytes, start: int, length: int) -> tuple[int, ...]:
    return struct.unpack_from(f">{length >> 1}H", body, start)


def _parseClientHello(body: bytes) -> ClientHello:
    """
    Parse a ClientHello body (after its handshake header), RFC 8446 4.1.2.

    Only the extensions the gateway reads are parsed; the others are checked
    for length alone, so a new extension never breaks routing.

    Every connection runs this, so it is index arithmetic on one C{bytes}:
    no cursor objects, no slices but the values kept, a dozen Python calls
    in all.  Each check is one comparison in the order the fields come; only
    a failing one builds a message (with L{_short}, L{_outOfRange}, L{_odd}
    or L{_leftOver}), naming the field and the vector that holds it, and the
    first failing check is the one reported.  A vector's contents are read
    before the check for bytes left over after it, so a hello with two
    faults always reports the same one.  Two steps: the fixed fields
    (L{_parseFixedFields}), then the extensions (L{_parseExtensions}).
    """
    legacyVersion, ciphers, i = _parseFixedFields(body)
    (
        serverName,
        alpn,
        supportedVersions,
        signatureAlgorithms,
        supportedGroups,
        extensionTypes,
        ech,
    ) = _parseExtensions(body, i)
    return ClientHello(
        serverName=serverName,
        alpn=_shared(alpn),
        legacyVersion=legacyVersion,
        supportedVersions=_shared(supportedVersions),
        ciphers=_shared(ciphers),
        extensions=_shared(extensionTypes),
        signatureAlgorithms=_shared(signatureAlgorithms),
        supportedGroups=_shared(supportedGroups),
        ech=ech,
    )


def _parseFixedFields(body: bytes) -> tuple[int, tuple[int, ...], int]:
    """
    The fields before the extensions: legacy_version, random,
    legacy_session_id, cipher_suites and legacy_compression_methods.

    @return: the legacy version, the cipher suites, and the offset of the
        extensions block (the end of C{body} when there is none).
    """
    end = len(body)
    # legacy_version (2), random (32), legacy_session_id length (1)
    if end < 2:
        raise _short(2, "legacy_version", _HELLO, end)
    legacyVersion = (body[0] << 8) | body[1]
    if body[0] != 3:
        raise ClientHelloError(
            f"ClientHello legacy_version 0x{legacyVersion:04x} is not TLS"
        )
    if end < 34:
        raise _short(32, "random", _HELLO, end - 2)
    if end < 35:
        raise _short(1, "length of legacy_session_id", _HELLO, 0)
    length = body[34]
    if length > 32:
        raise _outOfRange("legacy_session_id", length, 0, 32)
    i = 35 + length
    if i > end:
        raise _short(length, "legacy_session_id", _HELLO, end - 35)

    if i + 2 > end:
        raise _short(2, "length of cipher_suites", _HELLO, end - i)
    length = (body[i] << 8) | body[i + 1]
    i += 2
    if not 2 <= length <= 2**16 - 2:
        raise _outOfRange("cipher_suites", length, 2, 2**16 - 2)
    if i + length > end:
        raise _short(length, "cipher_suites", _HELLO, end - i)
    if length & 1:
        raise _odd("cipher_suites", length)
    ciphers = _uint16s(body, i, length)
    i += length

    if i >= end:
        raise _short(1, "length of legacy_compression_methods", _HELLO, 0)
    length = body[i]
    i += 1
    if length < 1:
        raise _outOfRange("legacy_compression_methods", length, 1, 2**8 - 1)
    if i + length > end:
        raise _short(length, "legacy_compression_methods", _HELLO, end - i)
    return legacyVersion, ciphers, i + length


#: What L{_parseExtensions} reads: server name, ALPN, supported versions,
#: signature algorithms, supported groups, every extension type in order,
#: and the raw encrypted_client_hello extension.
_Extensions = tuple[
    str | None,
    tuple[str, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    tuple[int, ...],
    bytes | None,
]


def _parseExtensions(body: bytes, i: int) -> _Extensions:
    """
    The extensions block that starts at offset C{i} and must end with
    C{body}: each one checked for length and uniqueness, the ones the
    gateway reads parsed.  Absent extensions are legal for TLS 1.2
    (RFC 5246 7.4.1.2).
    """
    end = len(body)
    serverName: str | None = None
    alpn: tuple[str, ...] = ()
    supportedVersions: tuple[int, ...] = ()
    signatureAlgorithms: tuple[int, ...] = ()
    supportedGroups: tuple[int, ...] = ()
    extensionTypes: list[int] = []
    ech: bytes | None = None
    if i < end:
        if i + 2 > end:
            raise _short(2, "length of extensions", _HELLO, end - i)
        length = (body[i] << 8) | body[i + 1]
        i += 2
        if i + length > end:
            raise _short(length, "extensions", _HELLO, end - i)
        if i + length < end:
            raise _leftOver(end - i - length, _HELLO)
        seen: set[int] = set()
        while i < end:
            if i + 4 > end:
                raise _extensionHeaderError(body, i, end)
            extensionType = (body[i] << 8) | body[i + 1]
            start = i + 4
            i = start + ((body[i + 2] << 8) | body[i + 3])
            if i > end:
                raise _short(
                    i - start, _extensionLabel(extensionType), "extensions", end - start
                )
            if extensionType in seen:
                raise ClientHelloError(
                    f"ClientHello has {_extensionLabel(extensionType)} more than"
                    f" once (RFC 8446 4.2)"
                )
            seen.add(extensionType)
            extensionTypes.append(extensionType)
            if extensionType == _EXT_ECH:
                ech = body[start:i]
                continue
            if extensionType not in _EXTENSION_NAMES:
                # Not read, only checked for length and skipped.
                continue
            if extensionType == _EXT_SERVER_NAME:
                serverName = _parseServerName(body, start, i)
            elif extensionType == _EXT_ALPN:
                alpn = _parseALPN(body, start, i)
            elif extensionType == _EXT_SUPPORTED_VERSIONS:
                supportedVersions = _parseSupportedVersions(body, start, i)
            elif extensionType == _EXT_SIGNATURE_ALGORITHMS:
                signatureAlgorithms = _parseCodePoints(
                    body, start, i, extensionType, 2**16 - 2
                )
            else:
                supportedGroups = _parseCodePoints(
                    body, start, i, extensionType, 2**16 - 1
                )
    return (
        serverName,
        alpn,
        supportedVersions,
        signatureAlgorithms,
        supportedGroups,
        tuple(extensionTypes),
        ech,
    )


def _extensionLabel(extensionType: int) -> str:
    """
    What error messages call an extension: its name if the gateway reads
    it, else its number.
    """
    return _EXTENSION_LABELS.get(extensionType) or f"extension {extensionType}"


def _extensionHeaderError(body: bytes, i: int, end: int) -> BadLength:
    """
    The error for an extension header (type, then length) cut short by the
    end of the extensions block, which holds C{end - i} more bytes.
    """
    if i + 2 > end:
        return _short(2, "extension type", "extensions", end - i)
    label = _extensionLabel((body[i] << 8) | body[i + 1])
    return _short(2, f"length of {label}", "extensions", end - i - 2)


def _parseServerName(body: bytes, start: int, end: int) -> str:
    """
    Read the C{host_name} of the server_name extension in C{body[start:end]}
    (RFC 6066 section 3).

    The name is validated here rather than by the router because it ends up
    in access-log lines and is matched by regex routes: a NUL, a space or a
    non-ASCII byte has no business in either, and a name that could never
    resolve in DNS cannot name a real upstream.
    """
    label = "the server_name extension"
    if start + 2 > end:
        raise _short(2, "length of server_name list", label, end - start)
    length = (body[start] << 8) | body[start + 1]
    i = start + 2
    if length < 1:
        raise _outOfRange("server_name list", length, 1, 2**16 - 1)
    listEnd = i + length
    if listEnd > end:
        raise _short(length, "server_name list", label, end - i)
    # The list is not empty, so the loop runs and either raises or sets
    # hostName; a host_name is never empty, so b"" means "none yet".
    hostName = b""
    while i < listEnd:
        nameType = body[i]
        if i + 3 > listEnd:
            raise _short(
                2,
                "length of server_name host_name",
                "server_name list",
                listEnd - i - 1,
            )
        length = (body[i + 1] << 8) | body[i + 2]
        i += 3
        if length < 1:
            raise _outOfRange("server_name host_name", length, 1, 2**16 - 1)
        if i + length > listEnd:
            raise _short(
                length, "server_name host_name", "server_name list", listEnd - i
            )
        if nameType != _HOST_NAME:
            # host_name is the only type ever defined.  RFC 6066 would let
            # a server skip others, but OpenSSL (and so every terminating
            # backend built on it) refuses any other type with decode_error:
            # a hello that routes here on its host_name while the server
            # refuses it, or reads it differently, is ambiguous, so it
            # fails closed like a duplicated extension.
            raise ClientHelloError(
                f"server_name extension has a name of type {nameType},"
                " not host_name (RFC 6066 3; OpenSSL refuses it)"
            )
        if hostName:
            raise ClientHelloError(
                "server_name extension has more than one host_name (RFC 6066 3)"
            )
        hostName = body[i : i + length]
        i += length
    name = _checkHostName(hostName)
    if listEnd < end:
        raise _leftOver(end - listEnd, label)
    return name


def _checkHostName(raw: bytes) -> str:
    """
    Validate an SNI host name and bring it to the form routes compare with:
    lower case, no trailing dot (RFC 6066: names compare case-insensitively;
    a trailing dot names the same host).
    """
    bad = raw.translate(None, _HOST_NAME_BYTES)
    if bad:
        raise ClientHelloError(
            f"server name {raw[:255]!r} contains byte 0x{bad[0]:02x}; only ASCII "
            f"letters, digits, '-', '_' and '.' are allowed (IDNs arrive as A-labels)"
        )
    name = raw.decode("ascii").lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ClientHelloError("server name is empty")
    if len(name) > 253:
        raise ClientHelloError(
            f"server name is {len(name)} characters long; DNS allows 253"
        )
    for label in name.split("."):
        if not label:
            raise ClientHelloError(f"server name {name!r} has an empty label")
        if len(label) > 63:
            raise ClientHelloError(
                f"server name {name!r} has a label of {len(label)} characters; DNS allows 63"
            )
    return name


def _parseALPN(body: bytes, start: int, end: int) -> tuple[str, ...]:
    """
    Read the offered protocols of the ALPN extension in C{body[start:end]}
    (RFC 7301 3.1).

    Latin-1 maps every byte to one character, so any protocol name decodes
    and the bytes can be recovered; ALPN names are byte strings, not text.
    """
    label = _EXTENSION_LABELS[_EXT_ALPN]
    if start + 2 > end:
        raise _short(2, "length of ALPN protocol_name_list", label, end - start)
    length = (body[start] << 8) | body[start + 1]
    i = start + 2
    if length < 2:
        raise _outOfRange("ALPN protocol_name_list", length, 2, 2**16 - 1)
    listEnd = i + length
    if listEnd > end:
        raise _short(length, "ALPN protocol_name_list", label, end - i)
    protocols = []
    while i < listEnd:
        length = body[i]
        i += 1
        if length < 1:
            raise _outOfRange("ALPN protocol name", length, 1, 2**8 - 1)
        if i + length > listEnd:
            raise _short(
                length, "ALPN protocol name", "ALPN protocol_name_list", listEnd - i
            )
        protocols.append(body[i : i + length].decode("latin-1"))
        i += length
    if listEnd < end:
        raise _leftOver(end - listEnd, label)
    return tuple(protocols)


def _parseSupportedVersions(body: bytes, start: int, end: int) -> tuple[int, ...]:
    """
    Read the supported_versions extension in C{body[start:end]}: a 1-byte
    vector of versions (RFC 8446 4.2.1).
    """
    label = _EXTENSION_LABELS[_EXT_SUPPORTED_VERSIONS]
    field = "supported_versions list"
    if start >= end:
        raise _short(1, f"length of {field}", label, 0)
    length = body[start]
    if not 2 <= length <= 254:
        raise _outOfRange(field, length, 2, 254)
    if start + 1 + length > end:
        raise _short(length, field, label, end - start - 1)
    if length & 1:
        raise _odd(field, length)
    if start + 1 + length < end:
        raise _leftOver(end - start - 1 - length, label)
    return _uint16s(body, start + 1, length)


def _parseCodePoints(
    body: bytes, start: int, end: int, extensionType: int, maximum: int
) -> tuple[int, ...]:
    """
    Read the signature_algorithms or supported_groups extension in
    C{body[start:end]}: a 2-byte vector of 16-bit code points of at most
    C{maximum} bytes (RFC 8446 4.2.3 and 4.2.7).
    """
    if start + 2 > end:
        raise _short(
            2,
            f"length of {_EXTENSION_NAMES[extensionType]} list",
            _EXTENSION_LABELS[extensionType],
            end - start,
        )
    length = (body[start] << 8) | body[start + 1]
    if not 2 <= length <= maximum:
        raise _outOfRange(f"{_EXTENSION_NAMES[extensionType]} list", length, 2, maximum)
    if start + 2 + length > end:
        raise _short(
            length,
            f"{_EXTENSION_NAMES[extensionType]} list",
            _EXTENSION_LABELS[extensionType],
            end - start - 2,
        )
    if length & 1:
        raise _odd(f"{_EXTENSION_NAMES[extensionType]} list", length)
    if start + 2 + length < end:
        raise _leftOver(end - start - 2 - length, _EXTENSION_LABELS[extensionType])
    return _uint16s(body, start + 2, length)
