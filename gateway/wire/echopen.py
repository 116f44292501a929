"""
Open an Encrypted Client Hello: ECH key files and HPKE decryption.

The formats are L{gateway.wire.ech}'s; this module adds the keys and the
cryptography, still without I/O: key files arrive as text, hellos as bytes.

HPKE (RFC 9180) comes from C{pyhpke}, not from C{cryptography}: the
C{cryptography.hazmat.primitives.hpke} of the pinned C{cryptography} only
offers single-shot C{Suite.decrypt(ciphertext, key, info)}, with neither
associated data nor a context to keep, and ECH needs both: the
ClientHelloOuterAAD is the AEAD's associated data, and the second
ClientHello after a HelloRetryRequest is opened with the same context at
sequence number 1 (RFC 9849 section 6.1.5).  C{pyhpke} implements the RFC
9180 API (C{create_recipient_context}, C{open(ct, aad)}) over
C{cryptography}'s primitives, so no cryptography is written here.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, PyHPKEError
from pyhpke.context_interface import ContextInterface

from gateway.wire.alerts import AlertDescription
from gateway.wire.clienthello import ClientHello, ClientHelloError
from gateway.wire.ech import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
    ECH_VERSION,
    KDF_HKDF_SHA256,
    KEM_X25519_HKDF_SHA256,
    ECHConfig,
    ECHError,
    ECHIllegalParameter,
    OuterECH,
    SymmetricSuite,
    decodeInner,
    encodeConfigList,
    helloMessage,
    helloRecords,
    outerAAD,
    parseConfigList,
    parseExtension,
)
from gateway.wire.helloreader import ClientHelloReader

__all__ = [
    "ECHDecryptError",
    "ECHKey",
    "ECHKeyFileError",
    "ECHKeyring",
    "ECHOutcome",
    "Opened",
    "generateKeyFile",
    "openHello",
    "parseKeyFile",
]

_KDFS: Final = {KDF_HKDF_SHA256: KDFId.HKDF_SHA256}
_AEADS: Final = {
    AEAD_AES_128_GCM: AEADId.AES128_GCM,
    AEAD_AES_256_GCM: AEADId.AES256_GCM,
    AEAD_CHACHA20_POLY1305: AEADId.CHACHA20_POLY1305,
}
#: What C{ech-keygen} offers: RFC 9849's mandatory suite and ChaCha20 for
#: clients without AES hardware.
_GENERATED_SUITES: Final = (
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM),
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305),
)
_PEM: Final = re.compile(
    r"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL
)
_INFO_PREFIX: Final = b"tls ech\x00"
#: A public name: what clients put in the outer SNI (RFC 9849 section 4
#: wants a DNS name, not an IP address literal).
_DNS_NAME: Final = re.compile(
    r"(?=.*[a-z])([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
    r"(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


class ECHDecryptError(ECHError):
    """
    The ECH cannot be opened with the keys here (unknown config id, other
    suite, wrong key): the client encrypted to a config this gateway does
    not hold.  Not the client's fault, so not refused: the connection is
    routed on its outer name, whose server sends retry configs.  Only a
    second ClientHello that does not open is refused, with
    C{decrypt_error} (RFC 9849 section 7.1.1).
    """

    reason = "ech_decrypt_failed"
    alert = AlertDescription.DECRYPT_ERROR


class ECHKeyFileError(ECHError):
    """
    A key file that cannot be used: not the RFC 9934 PEM format, a key that
    is not X25519, a config this gateway cannot decrypt.
    """

    reason = "ech_key_file"


@attrs.frozen
class ECHKey:
    """
    One ECHConfig and the private key that opens what is encrypted to it.
    """

    config: ECHConfig
    privateKey: X25519PrivateKey = attrs.field(repr=False)


def parseKeyFile(text: str) -> tuple[ECHKey, ...]:
    """
    Read a key file in the RFC 9934 format: a PKCS#8 C{PRIVATE KEY} block
    and an C{ECHCONFIG} block holding a base64 ECHConfigList whose every
    config uses that key.

    @raise ECHKeyFileError: what is wrong, never the key itself.
    """
    blocks: dict[str, str] = {}
    bodies: dict[str, str] = {}
    for match in _PEM.finditer(text):
        if match.group(1) in blocks:
            raise ECHKeyFileError(f"more than one {match.group(1)} block")
        blocks[match.group(1)] = match.group(0)
        bodies[match.group(1)] = match.group(2)
    if "PRIVATE KEY" not in blocks or "ECHCONFIG" not in blocks:
        raise ECHKeyFileError(
            "not an ECH key file: it needs a PRIVATE KEY and an ECHCONFIG block"
            " (RFC 9934)"
        )
    try:
        key = serialization.load_pem_private_key(
            blocks["PRIVATE KEY"].encode("ascii"), password=None
        )
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ECHKeyFileError("the PRIVATE KEY block is not a PKCS#8 key") from None
    if not isinstance(key, X25519PrivateKey):
        raise ECHKeyFileError("the private key is not an X25519 key")
    try:
        raw = base64.b64decode("".join(bodies["ECHCONFIG"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise ECHKeyFileError("the ECHCONFIG block is not base64") from None
    try:
        configs = parseConfigList(raw)
    except ECHError as e:
        raise ECHKeyFileError(f"the ECHCONFIG block: {e}") from None
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    for config in configs:
        if config.kemId != KEM_X25519_HKDF_SHA256:
            raise ECHKeyFileError(
                f"config {config.configId} uses KEM 0x{config.kemId:04x}; only"
                " DHKEM(X25519, HKDF-SHA256) is supported"
            )
        if config.publicKey != public:
            raise ECHKeyFileError(
                f"config {config.configId}'s public key is not the file's private key's"
            )
        unsupported = [s for s in config.suites if not _supported(s)]
        if unsupported:
            names = ", ".join(f"0x{s.kdf:04x}/0x{s.aead:04x}" for s in unsupported)
            raise ECHKeyFileError(
                f"config {config.configId} offers cipher suites the gateway cannot"
                f" decrypt (KDF/AEAD {names})"
            )
    return tuple(ECHKey(config, key) for config in configs)


def _supported(suite: SymmetricSuite) -> bool:
    return suite.kdf in _KDFS and suite.aead in _AEADS


def generateKeyFile(publicName: str, configId: int) -> tuple[str, bytes]:
    """
    A new X25519 key and its ECHConfig (HKDF-SHA256 with AES-128-GCM and
    ChaCha20Poly1305), as key-file text.

    @return: the file's text and the ECHConfigList, for the DNS record.
    @raise ValueError: a config id outside 0-255 or a bad public name.
    """
    if not 0 <= configId <= 255:
        raise ValueError(f"config id {configId} is not 0 to 255")
    publicName = publicName.lower().rstrip(".")
    if not _DNS_NAME.fullmatch(publicName) or len(publicName) > 253:
        raise ValueError(
            f"public name {publicName!r} is not a DNS name (IDNs as A-labels)"
        )
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    config = ECHConfig(
        configId,
        KEM_X25519_HKDF_SHA256,
        public,
        _GENERATED_SUITES,
        0,
        publicName,
    )
    configList = encodeConfigList([config])
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    encoded = base64.b64encode(configList).decode("ascii")
    lines = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    return f"{pem}-----BEGIN ECHCONFIG-----\n{lines}\n-----END ECHCONFIG-----\n", (
        configList
    )


@attrs.define
class Opened:
    """
    A decrypted ECH: the inner hello and what opens the next one.

    @ivar inner: the rebuilt inner ClientHello body.
    @ivar _context: the HPKE context; after a HelloRetryRequest the
        client's second ClientHello is sealed with it (sequence 1).
    """

    inner: bytes = attrs.field(repr=False)
    configId: int
    suite: SymmetricSuite
    _context: ContextInterface = attrs.field(repr=False, alias="context")

    def openSecond(self, body: bytes) -> bytes:
        """
        Open the client's second ClientHello (after a HelloRetryRequest)
        with the same context (RFC 9849 section 6.1.5 and 7.1.1): same
        config id and suite, no C{enc}.

        @return: the second inner ClientHello body.
        @raise ECHError: no ECH, or one that does not decode.
        @raise ECHIllegalParameter: another config, suite or an C{enc};
            or an inner hello that is not right.
        @raise ECHDecryptError: it does not decrypt (the client is then
            answered with C{decrypt_error} by RFC 9849; refused here).
        """
        ech, aad = outerAAD(body)
        if ech.configId != self.configId or ech.suite != self.suite or ech.enc:
            raise ECHIllegalParameter(
                "the second ClientHello's ECH changes its config, suite or enc"
            )
        try:
            encoded = self._context.open(ech.payload, aad)
        except PyHPKEError:
            raise ECHDecryptError(
                "the second ClientHello's ECH does not decrypt"
            ) from None
        return decodeInner(body, encoded)


@attrs.frozen
class ECHKeyring:
    """
    Every ECH key of a listener, by config id: trial decryption is per
    config id, so two keys may not share one (C{check} refuses that).

    @ivar current: the config of the first file, the one to publish.
    """

    keys: tuple[ECHKey, ...]

    @property
    def current(self) -> ECHConfig:
        return self.keys[0].config

    def open(self, body: bytes) -> Opened:
        """
        Decrypt the ECH of an outer ClientHello body and rebuild its inner
        hello.

        @raise ECHError: the extension does not decode (C{decode_error}).
        @raise ECHIllegalParameter: it decrypts to a bad inner hello.
        @raise ECHDecryptError: no key here opens it.
        """
        ech, aad = outerAAD(body)
        return self._open(ech, aad, body)

    def _open(self, ech: OuterECH, aad: bytes, body: bytes) -> Opened:
        suite = ech.suite
        if not _supported(suite):
            raise ECHDecryptError(
                f"ECH cipher suite 0x{suite.kdf:04x}/0x{suite.aead:04x} unsupported"
            )
        for key in self.keys:
            config = key.config
            if config.configId != ech.configId or suite not in config.suites:
                continue
            hpke = CipherSuite.new(
                KEMId.DHKEM_X25519_HKDF_SHA256, _KDFS[suite.kdf], _AEADS[suite.aead]
            )
            raw = config.raw or config.encode()
            try:
                context = hpke.create_recipient_context(
                    ech.enc,
                    KEMKey.from_pyca_cryptography_key(key.privateKey),
                    info=_INFO_PREFIX + raw,
                )
                encoded = context.open(ech.payload, aad)
            except (PyHPKEError, ValueError):
                continue
            return Opened(decodeInner(body, encoded), ech.configId, suite, context)
        raise ECHDecryptError(
            f"no ECH key here opens config id {ech.configId} (version"
            f" 0x{ECH_VERSION:04x})"
        )


@attrs.frozen
class ECHOutcome:
    """
    What the pre-read does with a hello that has an ECH extension.

    @ivar result: the access log's C{ech}: C{offered}, C{decrypted} or
        C{rejected}.
    @ivar hello: the hello to route on (the inner one once decrypted).
    @ivar buffered: the bytes to send upstream (the inner hello's records
        in place of the outer's, then whatever followed them).
    @ivar opened: the decrypted ECH, for a second ClientHello.
    """

    result: str
    hello: ClientHello
    buffered: bytes
    opened: Opened | None = None


def openHello(
    keyring: ECHKeyring | None, hello: ClientHello, buffered: bytes
) -> ECHOutcome:
    """
    Decrypt the ECH of C{hello} (whose records are C{buffered}) if this
    listener has keys.

    @raise ECHError: the extension, or the inner hello it decrypts to, is
        malformed: the connection is refused with C{e.alert}.  A hello that
        no key here opens is not an error: it is routed on its outer name.
    """
    assert hello.ech is not None
    if keyring is None:
        return ECHOutcome("offered", hello, buffered)
    ech = parseExtension(hello.ech)
    if not isinstance(ech, OuterECH):
        # A client that believes it talks to a backend: nothing to open.
        return ECHOutcome("offered", hello, buffered)
    message = helloMessage(buffered)
    assert message is not None, "the reader returned a complete hello"
    try:
        opened = keyring.open(message.body)
    except ECHDecryptError:
        return ECHOutcome("rejected", hello, buffered)
    records = helloRecords(opened.inner, message.recordVersion)
    try:
        inner = ClientHelloReader(len(records) + 1).feed(records)
    except ClientHelloError as e:
        raise ECHError(f"the inner ClientHello: {e}") from None
    assert isinstance(inner, ClientHello)
    return ECHOutcome("decrypted", inner, records + buffered[message.end :], opened)
