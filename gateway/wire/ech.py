"""
Encrypted Client Hello (RFC 9849) formats, without I/O or cryptography.

A client that uses ECH sends an I{outer} ClientHello naming a public name
and carrying, in its C{encrypted_client_hello} extension, the real (I{inner})
ClientHello encrypted to the client-facing server's key.  A gateway in
"split mode" (RFC 9849 section 3.1) holds that key, decrypts the inner
hello (L{gateway.wire.echopen}), routes on its name and sends it, not the
outer one, to the backend, which finishes the handshake.

This module is the byte layer of that: ECHConfig and ECHConfigList
(section 4), the extension in its outer and inner forms (section 5), the
ClientHelloOuterAAD (section 5.2), the decoding of an
EncodedClientHelloInner with its C{ech_outer_extensions} (section 5.1) and
the records the rebuilt inner hello travels in.  Like
L{gateway.wire.clienthello} it never reads a socket: bytes in, a value or an
L{ECHError} with a C{reason} slug out.  Go's C{crypto/tls} C{ech.go} was
read for the order of the checks; nothing is copied from it.
"""

from __future__ import annotations

from typing import Final

import attrs

from gateway.wire.alerts import AlertDescription

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AEAD_CHACHA20_POLY1305",
    "ECH_VERSION",
    "EXT_ECH",
    "EXT_ECH_OUTER_EXTENSIONS",
    "INNER",
    "KDF_HKDF_SHA256",
    "KEM_X25519_HKDF_SHA256",
    "ECHConfig",
    "ECHError",
    "ECHIllegalParameter",
    "HelloMessage",
    "InnerECH",
    "OuterECH",
    "SymmetricSuite",
    "decodeInner",
    "encodeConfigList",
    "helloMessage",
    "helloRecords",
    "outerAAD",
    "parseConfigList",
    "parseExtension",
]

#: The ECHConfig version and extension code point of RFC 9849.
ECH_VERSION: Final = 0xFE0D
EXT_ECH: Final = 0xFE0D
#: C{ech_outer_extensions} (RFC 9849 section 5.1).
EXT_ECH_OUTER_EXTENSIONS: Final = 0xFD00
#: HPKE identifiers (RFC 9180 section 7) the gateway decrypts with.
KEM_X25519_HKDF_SHA256: Final = 0x0020
KDF_HKDF_SHA256: Final = 0x0001
AEAD_AES_128_GCM: Final = 0x0001
AEAD_AES_256_GCM: Final = 0x0002
AEAD_CHACHA20_POLY1305: Final = 0x0003

_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_MAX_FRAGMENT: Final = 2**14
_EXT_SUPPORTED_VERSIONS: Final = 43
_TLS13: Final = 0x0304


class ECHError(Exception):
    """
    An C{encrypted_client_hello} extension, ECHConfig or inner hello that
    does not decode.

    @cvar reason: stable slug for logs and metric labels.
    @cvar alert: what a TLS server answers it with (RFC 9849 section 7.1:
        C{decode_error} for what does not parse).
    """

    reason = "ech_malformed"
    alert = AlertDescription.DECODE_ERROR


class ECHIllegalParameter(ECHError):
    """
    Well-formed bytes with a value RFC 9849 forbids (an inner hello that
    does not offer TLS 1.3, an C{ech_outer_extensions} naming an extension
    that is not in the outer hello): C{illegal_parameter}.
    """

    reason = "ech_illegal_parameter"
    alert = AlertDescription.ILLEGAL_PARAMETER


class _Reader:
    """
    Reads big-endian integers and length-prefixed vectors off a buffer,
    raising L{ECHError} (never C{IndexError}) when one runs past its end.
    """

    __slots__ = ("data", "end", "position", "what")

    def __init__(self, data: bytes, what: str, start: int = 0, end: int = -1) -> None:
        self.data = data
        self.position = start
        self.end = len(data) if end < 0 else end
        self.what = what

    def left(self) -> int:
        return self.end - self.position

    def take(self, count: int, field: str) -> bytes:
        if count > self.left():
            raise ECHError(
                f"{field} needs {count} bytes but {self.what} has only {self.left()} left"
            )
        start = self.position
        self.position += count
        return self.data[start : self.position]

    def integer(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, prefix: int, field: str, minimum: int = 0) -> bytes:
        length = self.integer(prefix, f"length of {field}")
        if length < minimum:
            raise ECHError(f"{field} is {length} bytes long; at least {minimum} needed")
        return self.take(length, field)

    def done(self) -> None:
        if self.position != self.end:
            raise ECHError(f"{self.end - self.position} bytes left over in {self.what}")


@attrs.frozen
class SymmetricSuite:
    """
    An HPKE symmetric cipher suite: KDF and AEAD identifiers.
    """

    kdf: int
    aead: int


@attrs.frozen
class ECHConfig:
    """
    One ECHConfig of version 0xfe0d (RFC 9849 section 4).

    @ivar raw: the whole ECHConfig as encoded, version and length included:
        the HPKE C{info} is built from exactly these bytes (section 6.1),
        so they are kept rather than re-encoded.
    @ivar extensions: the ECHConfigExtension list, undecoded.
    """

    configId: int
    kemId: int
    publicKey: bytes = attrs.field(repr=False)
    suites: tuple[SymmetricSuite, ...]
    maximumNameLength: int
    publicName: str
    extensions: bytes = b""
    raw: bytes = attrs.field(default=b"", repr=False, eq=False)

    def encode(self) -> bytes:
        """
        The ECHConfig on the wire (version, length, contents).
        """
        suites = b"".join(
            s.kdf.to_bytes(2, "big") + s.aead.to_bytes(2, "big") for s in self.suites
        )
        name = self.publicName.encode("ascii")
        contents = (
            bytes([self.configId])
            + self.kemId.to_bytes(2, "big")
            + _vector(2, self.publicKey)
            + _vector(2, suites)
            + bytes([self.maximumNameLength])
            + _vector(1, name)
            + _vector(2, self.extensions)
        )
        return ECH_VERSION.to_bytes(2, "big") + _vector(2, contents)


def _vector(prefix: int, data: bytes) -> bytes:
    return len(data).to_bytes(prefix, "big") + data


def encodeConfigList(configs: tuple[ECHConfig, ...] | list[ECHConfig]) -> bytes:
    """
    An ECHConfigList: what the C{ech} parameter of an HTTPS DNS record
    holds (base64-encoded), and a key file's C{ECHCONFIG} block.
    """
    return _vector(2, b"".join(c.raw or c.encode() for c in configs))


def parseConfigList(data: bytes) -> tuple[ECHConfig, ...]:
    """
    Parse an ECHConfigList.  Configs of another version are skipped, as
    clients skip them (section 4); a list with none of ours is an error.

    @raise ECHError: anything malformed.
    """
    reader = _Reader(data, "the ECHConfigList")
    body = reader.vector(2, "ECHConfigList", 4)
    reader.done()
    configs = []
    items = _Reader(body, "the ECHConfigList")
    while items.left():
        start = items.position
        version = items.integer(2, "ECHConfig version")
        contents = items.vector(2, "ECHConfig contents")
        if version != ECH_VERSION:
            continue
        configs.append(_parseConfig(contents, body[start : items.position]))
    if not configs:
        raise ECHError(
            f"the ECHConfigList has no config of version 0x{ECH_VERSION:04x}"
        )
    return tuple(configs)


def _parseConfig(contents: bytes, raw: bytes) -> ECHConfig:
    reader = _Reader(contents, "an ECHConfig")
    configId = reader.integer(1, "config_id")
    kemId = reader.integer(2, "kem_id")
    publicKey = reader.vector(2, "public_key", 1)
    suiteBytes = reader.vector(2, "cipher_suites", 4)
    if len(suiteBytes) % 4:
        raise ECHError(f"cipher_suites is {len(suiteBytes)} bytes, not a multiple of 4")
    suites = tuple(
        SymmetricSuite(
            int.from_bytes(suiteBytes[i : i + 2], "big"),
            int.from_bytes(suiteBytes[i + 2 : i + 4], "big"),
        )
        for i in range(0, len(suiteBytes), 4)
    )
    maximumNameLength = reader.integer(1, "maximum_name_length")
    name = reader.vector(1, "public_name", 1)
    extensions = reader.vector(2, "extensions")
    reader.done()
    try:
        publicName = name.decode("ascii")
    except UnicodeDecodeError:
        raise ECHError(f"public_name {name!r} is not ASCII") from None
    return ECHConfig(
        configId,
        kemId,
        publicKey,
        suites,
        maximumNameLength,
        publicName,
        extensions,
        raw,
    )


@attrs.frozen
class OuterECH:
    """
    The C{encrypted_client_hello} extension of an outer ClientHello.

    @ivar enc: the HPKE encapsulated key; empty in the second ClientHello
        after a HelloRetryRequest (section 5.1), which reuses the context.
    """

    suite: SymmetricSuite
    configId: int
    enc: bytes = attrs.field(repr=False)
    payload: bytes = attrs.field(repr=False)


@attrs.frozen
class InnerECH:
    """
    The extension in its inner form: the hello is an inner ClientHello
    (what a backend receives from a client-facing server).
    """


INNER: Final = InnerECH()


def parseExtension(data: bytes) -> OuterECH | InnerECH:
    """
    Parse the C{extension_data} of an C{encrypted_client_hello} extension
    (section 5).

    @raise ECHError: it does not decode (C{decode_error}).
    @raise ECHIllegalParameter: an unknown ECHClientHelloType.
    """
    reader = _Reader(data, "the encrypted_client_hello extension")
    kind = reader.integer(1, "ECHClientHelloType")
    if kind == 1:
        reader.done()
        return INNER
    if kind != 0:
        raise ECHIllegalParameter(
            f"ECHClientHelloType {kind} is neither outer nor inner"
        )
    kdf = reader.integer(2, "cipher_suite kdf_id")
    aead = reader.integer(2, "cipher_suite aead_id")
    configId = reader.integer(1, "config_id")
    enc = reader.vector(2, "enc")
    payload = reader.vector(2, "payload", 1)
    reader.done()
    return OuterECH(SymmetricSuite(kdf, aead), configId, enc, payload)


@attrs.frozen
class HelloMessage:
    """
    The ClientHello handshake message at the start of a byte stream, and
    where its records end.

    @ivar body: the ClientHello without its 4-byte handshake header.
    @ivar recordVersion: the record-layer version of its first record,
        reused for the records that replace it.
    @ivar end: offset just past its last record: what follows is not part
        of it (a client that speaks early) and is kept as it is.
    """

    body: bytes = attrs.field(repr=False)
    recordVersion: int
    end: int


def helloMessage(stream: bytes) -> HelloMessage | None:
    """
    Reassemble the handshake message the records at the start of
    C{stream} hold, which must be a ClientHello that ends with its last
    record (as L{gateway.wire.helloreader.ClientHelloReader} checks).

    @return: L{None} while the records are incomplete.
    @raise ECHError: not handshake records, or not a ClientHello.
    """
    handshake = bytearray()
    position = 0
    version = 0
    while True:
        if position + 5 > len(stream):
            return None
        if stream[position] != _HANDSHAKE:
            raise ECHError(
                f"record of content type {stream[position]} where a ClientHello"
                " was expected"
            )
        if not version:
            version = int.from_bytes(stream[position + 1 : position + 3], "big")
        length = int.from_bytes(stream[position + 3 : position + 5], "big")
        if position + 5 + length > len(stream):
            return None
        handshake += stream[position + 5 : position + 5 + length]
        position += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                raise ECHError(
                    f"handshake message of type {handshake[0]} where a ClientHello"
                    " was expected"
                )
            size = int.from_bytes(handshake[1:4], "big")
            if len(handshake) > 4 + size:
                raise ECHError("bytes after the ClientHello in its last record")
            if len(handshake) == 4 + size:
                return HelloMessage(bytes(handshake[4:]), version, position)


def helloRecords(body: bytes, recordVersion: int) -> bytes:
    """
    A ClientHello body as a handshake message in records of at most 2^14
    bytes, as it goes to the backend.
    """
    message = bytes([_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    header = bytes([_HANDSHAKE]) + recordVersion.to_bytes(2, "big")
    return b"".join(
        header + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (
            message[i : i + _MAX_FRAGMENT]
            for i in range(0, len(message), _MAX_FRAGMENT)
        )
    )


@attrs.frozen
class _Layout:
    """
    Where the fields of a ClientHello body are.

    @ivar sessionId: the legacy_session_id.
    @ivar extensions: each extension's type and the bounds of its data.
    """

    sessionId: bytes
    extensionsStart: int
    extensions: tuple[tuple[int, int, int], ...]


def _layout(body: bytes, what: str) -> _Layout:
    reader = _Reader(body, what)
    reader.take(34, "legacy_version and random")
    sessionId = reader.vector(1, "legacy_session_id")
    reader.vector(2, "cipher_suites", 2)
    reader.vector(1, "legacy_compression_methods", 1)
    length = reader.integer(2, "length of extensions")
    extensionsStart = reader.position
    if length != reader.left():
        raise ECHError(f"the extensions of {what} do not end with it")
    extensions = []
    while reader.left():
        kind = reader.integer(2, "extension type")
        size = reader.integer(2, "extension length")
        start = reader.position
        reader.take(size, f"extension {kind}")
        extensions.append((kind, start, start + size))
    return _Layout(sessionId, extensionsStart, tuple(extensions))


def outerAAD(body: bytes) -> tuple[OuterECH, bytes]:
    """
    Find the outer ECH extension of a ClientHello body and build the
    ClientHelloOuterAAD (section 5.2): the same body with the payload
    replaced by zeros, at its own offset.

    @raise ECHError: no outer extension, or one that does not decode.
    """
    for kind, start, end in _layout(body, "the outer ClientHello").extensions:
        if kind != EXT_ECH:
            continue
        ech = parseExtension(body[start:end])
        if not isinstance(ech, OuterECH):
            raise ECHIllegalParameter("the encrypted_client_hello extension is inner")
        payloadStart = end - len(ech.payload)
        aad = body[:payloadStart] + bytes(len(ech.payload)) + body[end:]
        return ech, aad
    raise ECHError("the ClientHello has no encrypted_client_hello extension")


def decodeInner(outer: bytes, encoded: bytes) -> bytes:
    """
    Rebuild the inner ClientHello body from a decrypted
    EncodedClientHelloInner (section 5.1): the outer hello's
    legacy_session_id put back, C{ech_outer_extensions} replaced by the
    outer extensions it names (in the outer hello's order, each at most
    once), the zero padding checked and dropped.

    @param outer: the outer ClientHello body.
    @raise ECHIllegalParameter: anything wrong with it: after a successful
        decryption every fault is the client's, and RFC 9849 section 7.1
        answers them all with C{illegal_parameter}.
    """
    try:
        return _decodeInner(outer, encoded)
    except ECHIllegalParameter:
        raise
    except ECHError as e:
        raise ECHIllegalParameter(f"invalid EncodedClientHelloInner: {e}") from None


def _decodeInner(outer: bytes, encoded: bytes) -> bytes:
    reader = _Reader(encoded, "the EncodedClientHelloInner")
    head = reader.take(34, "legacy_version and random")
    if reader.vector(1, "legacy_session_id"):
        raise ECHIllegalParameter("the inner legacy_session_id is not empty")
    ciphers = reader.vector(2, "cipher_suites", 2)
    compression = reader.vector(1, "legacy_compression_methods", 1)
    extensions = _Reader(reader.vector(2, "extensions"), "the inner extensions")
    if reader.data[reader.position :].strip(b"\x00"):
        raise ECHIllegalParameter("the EncodedClientHelloInner padding is not zeros")
    outerLayout = _layout(outer, "the outer ClientHello")
    rebuilt = bytearray()
    seenTypes: set[int] = set()
    expanded = False
    cursor = 0
    while extensions.left():
        kind = extensions.integer(2, "extension type")
        data = extensions.vector(2, f"extension {kind}")
        if kind != EXT_ECH_OUTER_EXTENSIONS:
            rebuilt += kind.to_bytes(2, "big") + _vector(2, data)
            seenTypes.add(kind)
            continue
        if expanded:
            raise ECHIllegalParameter("ech_outer_extensions appears twice")
        expanded = True
        references = _Reader(data, "ech_outer_extensions")
        types = references.vector(1, "OuterExtensions", 2)
        references.done()
        if len(types) % 2:
            raise ECHIllegalParameter("OuterExtensions has an odd length")
        for i in range(0, len(types), 2):
            wanted = int.from_bytes(types[i : i + 2], "big")
            if wanted in (EXT_ECH, EXT_ECH_OUTER_EXTENSIONS):
                raise ECHIllegalParameter(f"OuterExtensions names extension {wanted}")
            while cursor < len(outerLayout.extensions):
                if outerLayout.extensions[cursor][0] == wanted:
                    break
                cursor += 1
            else:
                raise ECHIllegalParameter(
                    f"OuterExtensions names extension {wanted}, which the outer"
                    " ClientHello does not have (in that order)"
                )
            _, start, end = outerLayout.extensions[cursor]
            cursor += 1
            rebuilt += wanted.to_bytes(2, "big") + _vector(2, outer[start:end])
            seenTypes.add(wanted)
    body = (
        head
        + _vector(1, outerLayout.sessionId)
        + _vector(2, ciphers)
        + _vector(1, compression)
        + _vector(2, bytes(rebuilt))
    )
    _checkInner(body)
    return body


def _checkInner(body: bytes) -> None:
    """
    The rebuilt inner hello must say it is one and offer TLS 1.3 only
    (section 5.1 and 7.1; ECH cannot protect an older handshake).
    """
    layout = _layout(body, "the inner ClientHello")
    found: set[int] = set()
    echData = None
    versions = b""
    for kind, start, end in layout.extensions:
        if kind in found:
            raise ECHIllegalParameter(f"the inner ClientHello repeats extension {kind}")
        found.add(kind)
        if kind == EXT_ECH:
            echData = body[start:end]
        elif kind == _EXT_SUPPORTED_VERSIONS:
            versions = body[start + 1 : end]
    if echData is None or parseExtension(echData) is not INNER:
        raise ECHIllegalParameter(
            "the inner ClientHello has no inner encrypted_client_hello extension"
        )
    offered = [
        int.from_bytes(versions[i : i + 2], "big") for i in range(0, len(versions), 2)
    ]
    real = [v for v in offered if (v & 0x0F0F) != 0x0A0A]
    if _TLS13 not in real or any(v < _TLS13 for v in real):
        raise ECHIllegalParameter("the inner ClientHello must offer TLS 1.3 alone")
