"""
TLS policy: pyOpenSSL contexts built from the validated configuration.

Three things live here, and nothing that does I/O besides reading the
configured files:

  - L{loadCertificate} reads one certificate chain, its private key and an
    optional OCSP response, checks them the way an operator needs (files
    named, problems worded, expiry and key-file permissions warned about)
    and returns a L{LoadedCertificate}.  C{tlsgateway check} and a reload
    both go through it, so a broken file never reaches a live listener.
  - L{ServerTLS} is the termination policy of one listener for one
    configuration generation: one C{SSL.Context} per set of certificate
    names, chosen by L{ServerTLS.contextFor} from the SNI that the pre-read
    already knows, so no servername callback runs inside the handshake.
  - L{UpstreamTLS} is the client side, for re-encryption to an upstream:
    one verifying client context, and service-identity name checks.

Contexts are built by C{fromConfig} and never changed afterwards: a reload
builds new ones, and connections accepted before it finish on the old ones
(pyOpenSSL itself refuses to change a context once a connection used it).

Every problem is a L{TLSConfigError} (or, from C{fromConfig}, a
L{gateway.config.Problem}); no message ever contains key material, and no
OpenSSL error text is passed on without being reduced to its reason strings,
which never contain any either.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import os
import re
import ssl
import stat
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import service_identity
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from service_identity.pyopenssl import verify_hostname, verify_ip_address

from gateway.config import (
    CertificateConfig,
    ConfigWarning,
    ListenerConfig,
    Location,
    Problem,
    ServerConfig,
    UpstreamConfig,
)
from gateway.fast.internals import refuseEarlyData, setGroups, verifyErrorText

__all__ = [
    "DEFAULT_CIPHERS",
    "AcmeCertificates",
    "CertificatePending",
    "LoadWarning",
    "LoadedCertificate",
    "PendingCertificate",
    "ServerTLS",
    "TLSConfigError",
    "TLSConfigErrors",
    "TLSHandshakeError",
    "UpstreamTLS",
    "UpstreamVerificationError",
    "describe",
    "loadCertificate",
    "readCertificates",
    "readPrivateKey",
    "unknownGroups",
]

#: The TLS 1.2 cipher list when C{ciphers} is not set: ECDHE key exchange
#: only (forward secrecy; no static-RSA key exchange, whose recorded
#: traffic a later key compromise decrypts) and AEAD ciphers only (no CBC,
#: the mode behind Lucky13 and POODLE-style padding oracles).  Every TLS 1.2
#: client of the last decade offers one of these; older ones must upgrade
#: anyway, since TLS 1.0/1.1 are refused.  OpenSSL expands it to AES-GCM
#: (256 then 128) and ChaCha20-Poly1305, each with ECDSA and RSA
#: authentication, so both kinds of certificate work.  TLS 1.3 suites are
#: all AEAD with ephemeral key exchange and stay at OpenSSL's default.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

#: The keys OpenSSL can sign a TLS handshake with, as pyOpenSSL takes them.
ServerKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)
_KEY_LABELS = {
    b"PRIVATE KEY",
    b"RSA PRIVATE KEY",
    b"EC PRIVATE KEY",
    b"DSA PRIVATE KEY",
    b"ENCRYPTED PRIVATE KEY",
    b"OPENSSH PRIVATE KEY",
}


# --- errors -------------------------------------------------------------------


class TLSConfigError(Exception):
    """
    A TLS file or setting cannot be used; the root of this module's errors.

    The message names the file and says what to do; it never quotes the
    file's contents, since a key file's contents are the secret.

    @ivar path: the file at fault, if there is one.
    @ivar key: the configuration key that names that file or setting
        (C{certificate}, C{private_key}, C{ocsp_response}, C{client_ca},
        C{tls_ca}, C{ciphers}...), so a L{Problem} can point at it.
    @cvar reason: stable slug for logs and metrics.
    """

    reason = "tls_config"

    def __init__(
        self, message: str, *, path: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.key = key

    def __str__(self) -> str:
        return self.message


class TLSConfigErrors(TLSConfigError):
    """
    Several keys are wrong at once; each is in L{errors}, reported on its
    own.
    """

    def __init__(self, errors: Sequence[TLSConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors), key=errors[0].key)
        self.errors = tuple(errors)


class TLSHandshakeError(TLSConfigError, SSL.Error):
    """
    One of our callbacks refused, or failed, during a handshake.

    Also an C{SSL.Error}: pyOpenSSL re-raises what a callback raised from
    C{do_handshake}, and code that drives handshakes (C{TLSTransport},
    Twisted's C{TLSMemoryBIOProtocol}) catches C{SSL.Error}; so a failing
    callback fails that one handshake, and never escapes as an unexpected
    exception.
    """

    reason = "handshake_failed"


class UpstreamVerificationError(TLSHandshakeError):
    """
    An upstream's certificate is not trusted, or not for the expected name.
    """

    reason = "upstream_verify_failed"


# --- loading certificates -------------------------------------------------------


@attrs.frozen
class LoadWarning:
    """
    Something an operator should fix that does not stop the gateway.

    @ivar key: the configuration key naming the file the warning is about
        (C{certificate}, C{private_key} or C{ocsp_response}).
    @ivar message: names the file; what C{str()} gives.
    """

    key: str
    path: str
    message: str

    def __str__(self) -> str:
        return self.message


@attrs.frozen
class LoadedCertificate:
    """
    A certificate chain and its key, read and checked.

    @ivar chain: leaf first, as in the file.
    @ivar names: the server names the leaf is for: its DNS names (lower
        case, no trailing dot, wildcards as C{*.example.com}) and IP
        addresses from subjectAltName, or its common name when it has no
        subjectAltName (as old certificates do).
    @ivar keyType: C{RSA}, C{EC}, C{Ed25519} or C{Ed448}: OpenSSL keeps one
        certificate per key type in a context.
    @ivar ocspResponse: DER, stapled for clients that ask.
    @ivar warnings: problems that do not stop loading (expiry, permissions).
    """

    chain: tuple[x509.Certificate, ...]
    privateKey: ServerKey = attrs.field(repr=False)
    names: tuple[str, ...]
    keyType: str
    notBefore: datetime.datetime
    notAfter: datetime.datetime
    certificatePath: str
    keyPath: str
    ocspPath: str | None = None
    ocspResponse: bytes | None = attrs.field(default=None, repr=False)
    warnings: tuple[LoadWarning, ...] = ()

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _shownPath(path: str) -> str:
    """
    A path as configured and, behind symbolic links, what each points to
    (C{live/x/privkey.pem -> ../../archive/x/privkey3.pem}): certbot's
    C{live/} files are links into C{archive/}, and the file that is wrong
    is the one a link leads to.
    """
    hops = [path]
    current = path
    for _ in range(8):  # a loop of links is named, not followed forever
        try:
            target = os.readlink(current)
        except OSError:
            break
        hops.append(target)
        current = os.path.join(os.path.dirname(current), target)
    return " -> ".join(hops)


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(
            f"cannot read {_shownPath(path)}: {e.strerror or e}", path=path, key=key
        ) from None


def _pemBlocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """
    @return: every PEM block as (label, the whole block), in file order.
    """
    return [(m[1], m[0]) for m in _PEM_BLOCK.finditer(data)]


def _notPEM(path: str, key: str, data: bytes, what: str, begin: str) -> TLSConfigError:
    hint = ""
    if data[:1] == b"\x30":
        hint = " (it looks like DER: convert it to PEM with openssl)"
    return TLSConfigError(
        f"{path}: no {what} found: expected PEM ({begin}){hint}", path=path, key=key
    )


def _readCertificates(
    path: str, key: str, data: bytes | None = None
) -> tuple[x509.Certificate, ...]:
    """
    Read every C{CERTIFICATE} block of a PEM file, in order.

    @raise TLSConfigError: unreadable, no certificate, or a block that is
        not a certificate.
    """
    if data is None:
        data = _read(path, key)
    certificates = []
    blocks = [block for label, block in _pemBlocks(data) if label == b"CERTIFICATE"]
    for number, block in enumerate(blocks, start=1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise TLSConfigError(
                f"{path}: certificate #{number} is not a valid X.509 certificate",
                path=path,
                key=key,
            ) from None
    if not certificates:
        raise _notPEM(path, key, data, "certificate", "-----BEGIN CERTIFICATE-----")
    return tuple(certificates)


def _readPrivateKey(path: str, data: bytes) -> tuple[str, ServerKey]:
    """
    Read the one private key of a PEM file, which may hold certificates too.

    Only the key block goes to the parser, and no parser message is
    passed on: they are generic, and the key is the one secret here.

    @return: the key type (C{RSA}, C{EC}, C{Ed25519}, C{Ed448}) and the key.
    """
    keys = [(label, block) for label, block in _pemBlocks(data) if label in _KEY_LABELS]
    if not keys:
        raise _notPEM(
            path, "private_key", data, "private key", "-----BEGIN PRIVATE KEY-----"
        )
    if len(keys) > 1:
        raise TLSConfigError(
            f"{path}: holds {len(keys)} private keys: give one key per file",
            path=path,
            key="private_key",
        )
    label, block = keys[0]
    if label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block:
        raise TLSConfigError(
            f"{path}: the private key is encrypted, and the gateway has no"
            " passphrase support: store it unencrypted (for example with"
            " 'openssl pkey -in KEY -out KEY.new') in a file only the"
            " gateway's user can read",
            path=path,
            key="private_key",
        )
    if label == b"OPENSSH PRIVATE KEY":
        raise TLSConfigError(
            f"{path}: is an OpenSSH key, not a PEM private key",
            path=path,
            key="private_key",
        )
    try:
        privateKey = serialization.load_pem_private_key(block, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TLSConfigError(
            f"{path}: the private key cannot be read (corrupt, or a format"
            " the gateway does not support)",
            path=path,
            key="private_key",
        ) from None
    if isinstance(privateKey, rsa.RSAPrivateKey):
        return "RSA", privateKey
    if isinstance(privateKey, ec.EllipticCurvePrivateKey):
        return "EC", privateKey
    if isinstance(privateKey, ed25519.Ed25519PrivateKey):
        return "Ed25519", privateKey
    if isinstance(privateKey, ed448.Ed448PrivateKey):
        return "Ed448", privateKey
    what = "a DSA key" if isinstance(privateKey, dsa.DSAPrivateKey) else "this key"
    raise TLSConfigError(
        f"{path}: {what} cannot sign a TLS 1.3 handshake: use an ECDSA or RSA key",
        path=path,
        key="private_key",
    )


def _publicBytes(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def _names(certificate: x509.Certificate, commonName: bool = True) -> tuple[str, ...]:
    """
    The names a server certificate is for: subjectAltName DNS names and IP
    addresses, or the common name when there is no subjectAltName at all
    (clients ignore the common name when a subjectAltName is present).

    @param commonName: fall back to the common name; service-identity
        never does, so messages about its verdicts do not either.
    """
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        if not commonName:
            return ()
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(
            str(attribute.value).lower().removesuffix(".") for attribute in common
        )
    names = [
        name.lower().removesuffix(".") for name in san.get_values_for_type(x509.DNSName)
    ]
    names += [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return tuple(dict.fromkeys(names))


def _utc(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _describeCertificate(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _chainWarnings(
    path: str, chain: Sequence[x509.Certificate], now: datetime.datetime
) -> list[LoadWarning]:
    warnings = []
    for index, certificate in enumerate(chain):
        which = (
            "the certificate"
            if index == 0
            else f"chain certificate #{index + 1} ({_describeCertificate(certificate)})"
        )
        if certificate.not_valid_after_utc < now:
            message = (
                f"{path}: {which} expired on {_utc(certificate.not_valid_after_utc)}"
            )
            warnings.append(LoadWarning("certificate", path, message))
        elif certificate.not_valid_before_utc > now:
            message = (
                f"{path}: {which} is not valid yet: not before"
                f" {_utc(certificate.not_valid_before_utc)}"
            )
            warnings.append(LoadWarning("certificate", path, message))
    for index in range(len(chain) - 1):
        if chain[index].issuer != chain[index + 1].subject:
            message = (
                f"{path}: certificate #{index + 2} did not issue certificate"
                f" #{index + 1}: the chain is out of order, or a certificate is"
                " missing (give the leaf first, then each issuer)"
            )
            warnings.append(LoadWarning("certificate", path, message))
            break
    leaf = chain[0]
    if (
        len(chain) == 1
        and leaf.issuer != leaf.subject
        and leaf.issuer not in _trustedRoots()
    ):
        message = (
            f"{path} holds only the server's certificate, and its issuer"
            f" ({leaf.issuer.rfc4514_string()}) is not a trusted root:"
            " clients that do not already have the intermediate"
            " certificates will refuse it; give the whole chain, leaf"
            " first (fullchain.pem, not cert.pem, with certbot)"
        )
        warnings.append(LoadWarning("certificate", path, message))
    return warnings


@functools.cache
def _trustedRoots() -> frozenset[x509.Name]:
    """
    The subjects of the system's trusted root certificates: the default
    CA file (and the hashed CA folder) of the OpenSSL that Python's C{ssl}
    module uses, which is what C{curl} and most clients on the same machine
    trust.  Read once per process.
    """
    paths = ssl.get_default_verify_paths()
    files = [f for f in (paths.cafile, paths.openssl_cafile) if f]
    folder = paths.capath or paths.openssl_capath
    if folder and os.path.isdir(folder):
        files += sorted(
            os.path.join(folder, name)
            for name in os.listdir(folder)
            if re.fullmatch(r"[0-9a-f]{8}\.[0-9]+", name)
        )
    subjects: set[x509.Name] = set()
    for name in dict.fromkeys(files):
        try:
            with open(name, "rb") as f:
                data = f.read()
            with warnings.catch_warnings():
                # Some roots in the system store have serial numbers that
                # cryptography deprecates: that is the store's business.
                warnings.simplefilter("ignore")
                roots = x509.load_pem_x509_certificates(data)
        except (OSError, ValueError):
            continue
        subjects.update(root.subject for root in roots)
    return frozenset(subjects)


def _readOCSP(
    path: str, leaf: x509.Certificate, now: datetime.datetime
) -> tuple[bytes, list[LoadWarning]]:
    """
    Read a DER OCSP response and check that it is for C{leaf}.

    A response for another certificate is an error rather than a warning:
    stapling it would make strict clients (must-staple) refuse the server.
    """
    data = _read(path, "ocsp_response")

    def error(message: str) -> TLSConfigError:
        return TLSConfigError(f"{path}: {message}", path=path, key="ocsp_response")

    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise error("is not a DER OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise error(
            f"the OCSP response status is {response.response_status.name.lower()}"
        )
    single = next(
        (r for r in response.responses if r.serial_number == leaf.serial_number), None
    )
    if single is None:
        raise error("the OCSP response is for another certificate")
    warnings = []
    if single.next_update_utc is not None and single.next_update_utc < now:
        message = (
            f"{path}: the OCSP response expired on {_utc(single.next_update_utc)}:"
            " fetch a new one"
        )
        warnings.append(LoadWarning("ocsp_response", path, message))
    if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        message = f"{path}: the OCSP response says the certificate is revoked"
        warnings.append(LoadWarning("ocsp_response", path, message))
    return data, warnings


def readCertificates(path: str, key: str) -> tuple[x509.Certificate, ...]:
    """
    Every certificate of a PEM bundle (C{client_ca}, C{tls_ca},
    C{[acme] ca_bundle}).

    @raise TLSConfigError: unreadable, or no certificate in it.
    """
    return _readCertificates(path, key)


def readPrivateKey(path: str) -> str:
    """
    Read a private key file on its own, when the configuration names no
    certificate beside it: still worth a check, in the same run.

    @return: the key type (C{RSA}, C{EC}, C{Ed25519}, C{Ed448}).
    @raise TLSConfigError: unreadable, no key or more than one, encrypted,
        or a kind of key that cannot sign a TLS 1.3 handshake.
    """
    return _readPrivateKey(path, _read(path, "private_key"))[0]


def loadCertificate(
    certificatePath: str, keyPath: str, ocspPath: str | None = None
) -> LoadedCertificate:
    """
    Read and check a PEM certificate chain, its private key, and optionally
    a DER OCSP response to staple.

    The chain and key may be in one file.  Problems that make the pair
    unusable raise; problems that only make clients unhappy (expiry, a
    chain out of order, an expired OCSP response) and a key file others may
    read are returned as L{LoadedCertificate.warnings}, each naming its
    file.

    @raise TLSConfigError: a file is missing or unreadable; no certificate
        or no private key in it (not PEM); the key is encrypted (there is no
        passphrase support: the gateway restarts unattended); the key does
        not belong to the first certificate; the OCSP response is not one,
        or not for this certificate.
    """
    now = datetime.datetime.now(datetime.UTC)
    chain = _readCertificates(certificatePath, "certificate")
    keyType, privateKey = _readPrivateKey(keyPath, _read(keyPath, "private_key"))
    public = _publicBytes(privateKey.public_key())
    if _publicBytes(chain[0].public_key()) != public:
        owner = next(
            (
                number
                for number, certificate in enumerate(chain, start=1)
                if _publicBytes(certificate.public_key()) == public
            ),
            None,
        )
        if owner is not None:
            message = (
                f"the private key in {_shownPath(keyPath)} belongs to certificate"
                f" #{owner} in {_shownPath(certificatePath)}, not the first one:"
                " put the server's own certificate first, then its issuers"
            )
        else:
            message = (
                f"the private key in {_shownPath(keyPath)} does not match the"
                f" certificate in {_shownPath(certificatePath)}"
            )
        raise TLSConfigError(message, path=keyPath, key="private_key")
    warnings = _chainWarnings(certificatePath, chain, now)
    try:
        mode = os.stat(keyPath).st_mode
    except OSError:
        mode = 0
    if stat.S_IMODE(mode) & 0o077:
        warnings.append(
            LoadWarning(
                "private_key",
                keyPath,
                f"{keyPath}: the private key file can be read by group or others"
                f" (mode {stat.S_IMODE(mode):04o}): make it readable only by"
                " the gateway's user (chmod 600)",
            )
        )
    ocspResponse = None
    if ocspPath is not None:
        ocspResponse, ocspWarnings = _readOCSP(ocspPath, chain[0], now)
        warnings += ocspWarnings
    return LoadedCertificate(
        chain=chain,
        privateKey=privateKey,
        names=_names(chain[0]),
        keyType=keyType,
        notBefore=chain[0].not_valid_before_utc,
        notAfter=chain[0].not_valid_after_utc,
        certificatePath=certificatePath,
        keyPath=keyPath,
        ocspPath=ocspPath,
        ocspResponse=ocspResponse,
        warnings=tuple(warnings),
    )


# --- helpers shared by both sides -------------------------------------------------


def _reasons(error: SSL.Error) -> str:
    """
    The reason strings of an OpenSSL error (C{no cipher match}, C{ca md too
    weak}): what an operator needs, and never key material.
    """
    if error.args and isinstance(error.args[0], list):
        reasons = [str(item[-1]) for item in error.args[0] if item]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return "OpenSSL refused it"


def _problem(
    location: Location, section: str, key: str | None, message: str
) -> Problem:
    """
    A problem at a section of the configuration file.

    Problems about a key point at the key's line.
    """
    return Problem(location.path, location.lineOf(key), section, key, message)


def _warning(
    location: Location, section: str, key: str | None, message: str
) -> ConfigWarning:
    """
    A warning at a section (and key) of the configuration file.
    """
    return ConfigWarning(location.path, location.lineOf(key), section, key, message)


def _trust(context: SSL.Context, authorities: Iterable[x509.Certificate]) -> None:
    store = context.get_cert_store()
    assert store is not None
    for authority in authorities:
        store.add_cert(crypto.X509.from_cryptography(authority))


def _isAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _guard(what: str, error: Exception) -> TLSHandshakeError:
    return TLSHandshakeError(f"{what} failed: {type(error).__name__}: {error}")


def describe(connection: SSL.Connection) -> dict[str, str | None]:
    """
    The facts of a finished handshake, for the access log.

    @return: C{tls_version} (C{TLSv1.3}), C{cipher}, C{tls_group} (the key
        exchange group, such as C{X25519MLKEM768}), C{alpn_selected} and
        C{client_cert} (the client certificate's subject as an RFC 4514
        string); L{None} for what does not apply or is not known yet.
        Never raises: a log line must not break a connection.
    """
    facts: dict[str, str | None] = {
        "tls_version": None,
        "cipher": None,
        "tls_group": None,
        "alpn_selected": None,
        "client_cert": None,
    }
    try:
        cipher = connection.get_cipher_name()
        if cipher is None:
            return facts
        facts["cipher"] = cipher
        facts["tls_version"] = connection.get_protocol_version_name()
        facts["tls_group"] = connection.get_group_name()
        alpn = connection.get_alpn_proto_negotiated()
        if alpn:
            facts["alpn_selected"] = alpn.decode("ascii", "replace")
        peer = connection.get_peer_certificate(as_cryptography=True)
        if peer is not None:
            facts["client_cert"] = peer.subject.rfc4514_string()
    except (SSL.Error, ValueError):
        pass
    return facts


# --- the server side ------------------------------------------------------------


class _ALPNSelector:
    """
    The server's ALPN choice: its own order of preference among what the
    client offers.  No overlap means no ALPN rather than a failed
    handshake (RFC 7301 allows either): a client that offers only
    protocols the gateway does not list still gets its bytes relayed, and
    the upstream decides what it speaks.
    """

    def __init__(self, protocols: Sequence[bytes]) -> None:
        self._protocols = tuple(protocols)

    def __call__(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        try:
            return self.choose(offered)
        except Exception as e:
            raise _guard("ALPN selection", e) from e

    def choose(self, offered: Sequence[bytes]) -> Any:
        for protocol in self._protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS


class _Stapler:
    """
    Serve the OCSP response of the certificate OpenSSL chose for this
    handshake (an RSA and an ECDSA certificate in one context each have
    their own), to clients that asked for one.  OpenSSL selects the
    certificate before it calls this, so C{get_certificate} is the one
    being sent.
    """

    def __init__(self, responses: Mapping[bytes, bytes]) -> None:
        self._responses = dict(responses)

    def __call__(self, connection: SSL.Connection, data: object) -> bytes:
        try:
            return self.responseFor(connection)
        except Exception as e:
            raise _guard("OCSP stapling", e) from e

    def responseFor(self, connection: SSL.Connection) -> bytes:
        certificate = connection.get_certificate(as_cryptography=True)
        if certificate is None:
            return b""
        return self._responses.get(
            certificate.public_bytes(serialization.Encoding.DER), b""
        )


@attrs.frozen
class _Served:
    """
    The certificates one context serves: at most one per key type, all for
    the same names.
    """

    names: frozenset[str]
    certificates: tuple[LoadedCertificate, ...]


def _groupCertificates(
    loaded: Sequence[tuple[str, LoadedCertificate]],
) -> tuple[list[_Served], list[tuple[str, str]]]:
    """
    Put certificates for the same names into one context, one per key type.

    Only identical name sets share a context: OpenSSL picks among a
    context's certificates by the client's signature algorithms alone, so
    certificates sharing a context must be good for the same names.

    @param loaded: (section, certificate) in configuration order.
    @return: the groups in order of their first certificate, and
        (section, message) warnings for certificates that can never be
        served because an earlier one has the same names and key type.
    """
    groups: list[_Served] = []
    warnings = []
    for section, certificate in loaded:
        names = frozenset(certificate.names)
        for index, group in enumerate(groups):
            if group.names != names:
                continue
            if any(c.keyType == certificate.keyType for c in group.certificates):
                warnings.append(
                    (
                        section,
                        f"{certificate.certificatePath} is never served: an"
                        f" earlier {certificate.keyType} certificate has the"
                        " same names",
                    )
                )
                break
            groups[index] = _Served(names, (*group.certificates, certificate))
            break
        else:
            groups.append(_Served(names, (certificate,)))
    return groups, warnings


def _useChain(context: SSL.Context, certificate: LoadedCertificate) -> None:
    """
    Load a certificate, its own chain, and its key into a context.

    Through C{use_certificate_chain_file}, because it is the only call
    pyOpenSSL offers that attaches a chain to I{one} certificate:
    C{add_extra_chain_cert} sets one chain for the whole context, which
    would send an RSA certificate's intermediates with the ECDSA one, and
    C{SSL_CTX_add1_chain_cert} is a macro cryptography's bindings do not
    expose.  The file it reads is a temporary copy of the certificates that
    L{loadCertificate} checked (public data only), not the operator's file
    again: a file replaced between the check and the load is never served
    unchecked.
    """
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in certificate.chain
    )
    descriptor, name = tempfile.mkstemp(prefix="tlsgateway-", suffix=".pem")
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(pem)
        context.use_certificate_chain_file(name)
    finally:
        os.unlink(name)
    context.use_privatekey(certificate.privateKey)
    context.check_privatekey()


def _sessionID(listenerName: str) -> bytes:
    """
    The session id context: stable for a listener across reloads and
    workers, so it could be shared, and different between listeners, so a
    session from one listener never resumes on another (whose client
    certificate policy may differ).  32 bytes, OpenSSL's maximum.
    """
    return hashlib.sha256(f"tlsgateway listener {listenerName}".encode()).digest()


@attrs.frozen
class _Settings:
    """
    What every context of a listener shares, checked once.
    """

    minVersion: int
    maxVersion: int
    ciphers: bytes
    ciphersuites: bytes | None
    options: int
    sessionCacheMode: int
    sessionID: bytes
    alpn: tuple[bytes, ...]
    verifyMode: int
    clientCAs: tuple[x509.Certificate, ...]
    groups: tuple[str, ...] = ()
    ticketLifetime: int = 300
    clientCRLs: tuple[x509.CertificateRevocationList, ...] = ()


#: Parts of an OpenSSL TLS 1.2 cipher name that mean an AEAD cipher; any
#: other enabled TLS 1.2 cipher is CBC (or worse) with a SHA-1 or SHA-2 MAC.
_AEAD = ("GCM", "CHACHA20", "CCM")


def weakCiphers(ciphers: str) -> list[str]:
    """
    The TLS 1.2 cipher suites an OpenSSL cipher string enables that are
    not AEAD: CBC suites (Lucky13 and padding-oracle history), most with
    SHA-1 MACs.  NGINX's long-standing example C{HIGH:!aNULL:!MD5} enables
    dozens of them.

    @return: their OpenSSL names, in OpenSSL's order; empty for a string
        OpenSSL refuses (that is reported as a problem elsewhere).
    """
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.set_cipher_list(ciphers.encode("ascii", "replace"))
    except SSL.Error:
        return []
    names = SSL.Connection(context, None).get_cipher_list()
    return [
        name
        for name in names
        if not name.startswith("TLS_") and not any(part in name for part in _AEAD)
    ]


def _policyWarnings(listener: ListenerConfig) -> list[tuple[str, str]]:
    """
    Termination settings that work but are likely wrong, as (key, message).
    """
    warnings = []
    if listener.ciphers is not None and "TLSv1.2" in listener.protocols:
        weak = weakCiphers(listener.ciphers)
        if weak:
            shown = ", ".join(weak[:3]) + (", ..." if len(weak) > 3 else "")
            warnings.append(
                (
                    "ciphers",
                    f"{listener.ciphers!r} allows CBC or SHA-1 cipher suites"
                    f" ({len(weak)} of them: {shown}): leave ciphers unset for"
                    " the AEAD-only default, or use"
                    " ECDHE+AESGCM:ECDHE+CHACHA20",
                )
            )
    terminating = listener.mode == "terminate" or any(
        route.action == "terminate" for route in listener.routes
    )
    if "h2" in listener.alpn and terminating:
        warnings.append(
            (
                "alpn",
                "offers h2 on terminated connections, and the gateway relays"
                " the decrypted bytes as they are: a client that picks h2"
                " speaks HTTP/2 to the upstream, which an HTTP/1.1 server does"
                " not understand (curl gets an empty reply); offer h2 only if"
                " every upstream speaks HTTP/2 without TLS (prior knowledge),"
                " otherwise alpn = http/1.1",
            )
        )
    return warnings


def unknownGroups(names: Sequence[str]) -> list[str]:
    """
    The names in C{names} that this OpenSSL does not know as key exchange
    groups, each tried on a scratch context of its own (OpenSSL refuses a
    whole list for one bad name, without saying which).
    """
    return [
        name
        for name in names
        if not setGroups(SSL.Context(SSL.TLS_SERVER_METHOD), (name,))
    ]


def _readCRLs(
    paths: Sequence[str],
    authorities: Sequence[x509.Certificate] | None,
    now: datetime.datetime,
) -> tuple[tuple[x509.CertificateRevocationList, ...], list[LoadWarning]]:
    """
    Read C{client_crl}: each file PEM (one or more C{X509 CRL} blocks) or
    DER (one CRL), each CRL signed by one of the C{client_ca} authorities.

    A CRL whose C{nextUpdate} has passed is a warning, not an error: OpenSSL
    then refuses every certificate that CRL covers ("CRL has expired"), as
    NGINX does, and the operator must fetch a new one; refusing to start
    would take down the clients it does not cover too.

    @param authorities: the C{client_ca} certificates, or L{None} when
        they could not be read (then issuers are not checked: that problem
        is reported at C{client_ca}).
    @raise TLSConfigError: unreadable, not a CRL, or not issued (signed) by
        a C{client_ca} authority, which OpenSSL would never use.
    """
    crls: list[x509.CertificateRevocationList] = []
    warnings: list[LoadWarning] = []
    for path in paths:
        data = _read(path, "client_crl")

        def error(message: str, path: str = path) -> TLSConfigError:
            return TLSConfigError(f"{path}: {message}", path=path, key="client_crl")

        blocks = [block for label, block in _pemBlocks(data) if label == b"X509 CRL"]
        found: list[x509.CertificateRevocationList] = []
        try:
            if blocks:
                found = [x509.load_pem_x509_crl(block) for block in blocks]
            elif data[:1] == b"\x30":
                found = [x509.load_der_x509_crl(data)]
        except ValueError:
            raise error("is not a valid X.509 CRL") from None
        if not found:
            raise error("no CRL found: expected PEM (-----BEGIN X509 CRL-----) or DER")
        for crl in found:
            issuer = crl.issuer.rfc4514_string() or "(empty issuer)"
            if authorities is None:
                crls.append(crl)
                continue
            signers = [a for a in authorities if a.subject == crl.issuer]
            if not signers:
                raise error(
                    f"the CRL is issued by {issuer}, which is not a client_ca"
                    " certificate: OpenSSL would never use it"
                )
            if not any(_signedBy(crl, a) for a in signers):
                raise error(f"the CRL's signature does not verify with {issuer}'s key")
            nextUpdate = crl.next_update_utc
            if nextUpdate is not None and nextUpdate < now:
                warnings.append(
                    LoadWarning(
                        "client_crl",
                        path,
                        f"{path}: the CRL of {issuer} expired on {_utc(nextUpdate)}:"
                        " every client certificate it covers is refused until"
                        " a current one is installed and the gateway reloaded",
                    )
                )
            elif crl.last_update_utc > now:
                warnings.append(
                    LoadWarning(
                        "client_crl",
                        path,
                        f"{path}: the CRL of {issuer} is not valid yet (last update"
                        f" {_utc(crl.last_update_utc)}): is the clock right?",
                    )
                )
            crls.append(crl)
    return tuple(crls), warnings


def _signedBy(crl: x509.CertificateRevocationList, authority: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(authority.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _settings(listener: ListenerConfig) -> tuple[_Settings, list[LoadWarning]]:
    """
    Translate a listener's termination keys to OpenSSL settings.

    Session resumption: C{session_tickets} is stateless resumption
    (C{OP_NO_TICKET} turns it off), C{session_cache} OpenSSL's server-side
    cache of each context (so per worker).  With both off no session is
    resumed, in TLS 1.2 and 1.3 alike.  One wart remains: in TLS 1.3 with
    C{OP_NO_TICKET}, OpenSSL still sends NewSessionTicket messages, as
    "stateful tickets" that are nothing but a session ID to look up in the
    cache; with the cache off there is nothing to find, so they never
    resume anything, but they cost a few dozen bytes per handshake.
    Stopping them takes C{SSL_CTX_set_num_tickets(ctx, 0)}, which neither
    pyOpenSSL nor cryptography's cffi bindings expose (and the bundled
    OpenSSL exports no symbols to reach it otherwise).  Ticket keys are
    random per context, so a reload, or another worker, cannot decrypt an
    earlier ticket: the client then does a full handshake.

    Client certificates: C{optional} requests one and verifies it if it
    is sent, so an untrusted certificate still fails the handshake (as
    with NGINX's stream module); C{on} also fails a client that sends none.
    The CA subjects are sent to clients, so they know which certificate
    to present.

    Key exchange groups: C{groups}, or OpenSSL's default list.  Session
    lifetime: C{session_ticket_lifetime}, which is both the lifetime hint
    in every ticket and how long the server accepts a session (ticket or
    cache) after it was made (C{SSL_CTX_set_timeout}).

    Revocation: with C{client_crl}, OpenSSL checks the client's own
    certificate against the CRL of its issuer (C{X509_V_FLAG_CRL_CHECK});
    a certificate whose issuer has no CRL there fails ("unable to get
    certificate CRL"), so every CA of C{client_ca} that issues client
    certificates needs its CRL listed.

    @return: the settings, and warnings about the CRLs.
    @raise TLSConfigError: a C{protocols} value other than TLSv1.2/1.3, an
        unreadable C{client_ca} or C{client_crl}, or a group OpenSSL does
        not know.
    """
    unknown = [p for p in listener.protocols if p not in _VERSIONS]
    if unknown or not listener.protocols:
        raise TLSConfigError(
            f"{', '.join(unknown) or 'nothing'} is not TLSv1.2 or TLSv1.3",
            key="protocols",
        )
    versions = [_VERSIONS[p] for p in listener.protocols]
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if not listener.session_tickets:
        options |= SSL.OP_NO_TICKET
    if listener.prefer_server_ciphers:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    alpn = [p.encode("ascii") for p in listener.alpn]
    if listener.protocol == "postgres" and b"postgresql" not in alpn:
        alpn.append(b"postgresql")
    verifyMode = {
        "off": SSL.VERIFY_NONE,
        "optional": SSL.VERIFY_PEER,
        "on": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
    }[listener.verify_client]
    # From here on each key is checked on its own, so one load reports
    # every one of them that is wrong.
    errors: list[TLSConfigError] = []
    clientCAs: tuple[x509.Certificate, ...] | None = ()
    if listener.client_ca is not None:
        try:
            clientCAs = _readCertificates(listener.client_ca, "client_ca")
        except TLSConfigError as e:
            errors.append(e)
            clientCAs = None
    unknown = unknownGroups(listener.groups)
    if unknown:
        errors.append(
            TLSConfigError(
                f"{', '.join(unknown)}: not a key exchange group this OpenSSL knows"
                f" ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})",
                key="groups",
            )
        )
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    warnings: list[LoadWarning] = []
    try:
        crls, warnings = _readCRLs(
            listener.client_crl, clientCAs, datetime.datetime.now(datetime.UTC)
        )
    except TLSConfigError as e:
        errors.append(e)
    if errors:
        raise TLSConfigErrors(errors)
    assert clientCAs is not None
    return _Settings(
        minVersion=min(versions),
        maxVersion=max(versions),
        ciphers=(listener.ciphers or DEFAULT_CIPHERS).encode("ascii", "replace"),
        ciphersuites=(
            None
            if listener.ciphersuites is None
            else listener.ciphersuites.encode("ascii", "replace")
        ),
        options=options,
        sessionCacheMode=(
            SSL.SESS_CACHE_SERVER if listener.session_cache else SSL.SESS_CACHE_OFF
        ),
        sessionID=_sessionID(listener.name),
        alpn=tuple(alpn),
        verifyMode=verifyMode,
        clientCAs=clientCAs,
        groups=listener.groups,
        ticketLifetime=listener.session_ticket_lifetime,
        clientCRLs=crls,
    ), warnings


def _serverContext(settings: _Settings, served: _Served) -> SSL.Context:
    """
    Build one server context.

    Key exchange groups, unless C{groups} is set, are OpenSSL's default,
    which puts the hybrid post-quantum X25519MLKEM768 first (OpenSSL 3.5
    and later) and keeps X25519 and the NIST curves for older clients.
    TLS 1.3 early data is refused explicitly (L{refuseEarlyData}): a
    replayable request the gateway would relay upstream before the
    handshake is done is not something a gateway can make safe.

    @raise TLSConfigError: OpenSSL refused a setting or a certificate; the
        error's C{key} names the setting.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    step = "protocols"
    try:
        context.set_min_proto_version(settings.minVersion)
        context.set_max_proto_version(settings.maxVersion)
        context.set_options(settings.options)
        step = "ciphers"
        context.set_cipher_list(settings.ciphers)
        if settings.ciphersuites is not None:
            step = "ciphersuites"
            context.set_tls13_ciphersuites(settings.ciphersuites)
        step = "session_cache"
        context.set_session_cache_mode(settings.sessionCacheMode)
        context.set_session_id(settings.sessionID)
        step = "session_ticket_lifetime"
        context.set_timeout(settings.ticketLifetime)
        refuseEarlyData(context)
        if settings.groups:
            step = "groups"
            if not setGroups(context, settings.groups):
                raise TLSConfigError(
                    f"OpenSSL refused {':'.join(settings.groups)}", key="groups"
                )
        if settings.clientCAs:
            step = "client_ca"
            _trust(context, settings.clientCAs)
            for authority in settings.clientCAs:
                context.add_client_ca(authority)
        if settings.clientCRLs:
            step = "client_crl"
            store = context.get_cert_store()
            assert store is not None
            for crl in settings.clientCRLs:
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        if settings.verifyMode == SSL.VERIFY_NONE:
            context.set_verify(settings.verifyMode)
        else:
            context.set_verify(settings.verifyMode, _verifyClient)
        if settings.alpn:
            context.set_alpn_select_callback(_ALPNSelector(settings.alpn))
        responses = {}
        for certificate in served.certificates:
            step = "certificate"
            try:
                _useChain(context, certificate)
            except SSL.Error as e:
                raise TLSConfigError(
                    f"{certificate.certificatePath}: OpenSSL refused the"
                    f" certificate or its key: {_reasons(e)}",
                    path=certificate.certificatePath,
                    key="certificate",
                ) from None
            if certificate.ocspResponse is not None:
                der = certificate.leaf.public_bytes(serialization.Encoding.DER)
                responses[der] = certificate.ocspResponse
        if responses:
            context.set_ocsp_server_callback(_Stapler(responses))
    except SSL.Error as e:
        raise TLSConfigError(f"OpenSSL refused it: {_reasons(e)}", key=step) from None
    except OSError as e:
        raise TLSConfigError(
            f"cannot write a temporary file: {e.strerror or e}", key=step
        ) from None
    return context


def _verifyClient(
    connection: SSL.Connection,
    certificate: crypto.X509,
    errorNumber: int,
    depth: int,
    ok: int,
) -> bool:
    """
    OpenSSL's verdict on a client certificate, with words: a failure
    raises an error naming what is wrong (C{certificate revoked},
    C{certificate has expired}, C{unable to get local issuer certificate})
    and which certificate, which becomes the access log's reason.  OpenSSL
    still sends the alert for its own error (C{certificate_revoked},
    C{unknown_ca}...).  Never turns a failure into a success.
    """
    if ok:
        return True
    try:
        subject = certificate.to_cryptography().subject.rfc4514_string()
    except Exception:  # noqa: BLE001 - a log detail must not change the verdict
        subject = "?"
    what = "the client certificate" if depth == 0 else "a client CA certificate"
    raise TLSHandshakeError(
        f"{what} is refused: {verifyErrorText(errorNumber)}"
        f" (at depth {depth}: {subject})"
    )


@attrs.frozen
class PendingCertificate:
    """
    An ACME certificate (C{[certificate:NAME] acme = on}) not issued yet:
    its names are served by failing the handshake, not by another
    certificate.

    @ivar section: C{certificate:NAME}.
    """

    section: str
    names: tuple[str, ...]


class CertificatePending(Exception):
    """
    The certificate for a server name is an ACME certificate still being
    issued: the handshake fails (C{handshake_failed}).
    """

    reason = "handshake_failed"


#: What provides ACME certificates to L{ServerTLS.fromConfig}: the
#: certificate being served for C{[certificate:NAME]}, or L{None} while it
#: is pending.
AcmeCertificates = Callable[[str], "LoadedCertificate | None"]

_Entry = tuple[str, "LoadedCertificate | PendingCertificate"]
_Slot = SSL.Context | PendingCertificate


class ServerTLS:
    """
    The TLS termination policy of one listener, for one configuration
    generation.

    Build it with L{fromConfig}; pick a context with L{contextFor} once the
    pre-read knows the server name, then create the C{SSL.Connection} from
    it.  Choosing before the handshake, instead of in a servername callback,
    means no code of ours runs inside the handshake to choose, and nothing
    can fail open to the wrong certificate.

    The contexts change only when an ACME certificate is issued or renewed
    (L{update}): new contexts are built beside the old ones and swapped in
    with one assignment, so connections already using an old context keep
    it and new handshakes get the new certificate.

    @ivar listenerName: the C{[listener:NAME]} it was built for.
    @ivar certificates: every certificate served, grouped by context (an
        ECDSA certificate follows the RSA one it shares a context with).
    @ivar entries: (section, certificate) in configuration order: the
        C{[certificate:NAME]} or C{[listener:NAME]} each came from, with
        a L{PendingCertificate} for an ACME certificate not issued yet.
    """

    def __init__(
        self,
        listenerName: str,
        served: Sequence[tuple[_Served, SSL.Context]],
        *,
        settings: _Settings | None = None,
        entries: Sequence[_Entry] | None = None,
    ) -> None:
        self.listenerName = listenerName
        self._settings = settings
        if entries is None:
            entries = [
                ("", certificate)
                for group, _ in served
                for certificate in group.certificates
            ]
        self._install(list(entries), served)

    def _install(
        self, entries: list[_Entry], served: Sequence[tuple[_Served, SSL.Context]]
    ) -> None:
        contextOf: dict[int, SSL.Context] = {}
        for group, context in served:
            for member in group.certificates:
                contextOf[id(member)] = context
        slots: list[_Slot] = []
        exact: dict[str, _Slot] = {}
        wildcard: dict[str, _Slot] = {}
        for _, certificate in entries:
            if isinstance(certificate, PendingCertificate):
                slot: _Slot = certificate
                names = certificate.names
            elif id(certificate) in contextOf:
                slot = contextOf[id(certificate)]
                names = certificate.names
            else:
                continue  # never served: an earlier one has its names and key type
            slots.append(slot)
            for name in sorted(names):
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], slot)
                elif "*" not in name:
                    exact.setdefault(name, slot)
        # One assignment: a handshake sees the old tables or the new ones.
        self._tables = (tuple(slots), exact, wildcard)
        self.entries = tuple(entries)
        self._contexts = tuple(context for _, context in served)
        self.certificates = tuple(c for group, _ in served for c in group.certificates)

    def update(self, section: str, certificate: LoadedCertificate) -> None:
        """
        Serve C{certificate} for C{section} (an ACME certificate just
        issued or renewed) from now on.

        @raise TLSConfigError: OpenSSL refused it; the old contexts stay.
        """
        if self._settings is None:
            raise TLSConfigError("this policy was not built by fromConfig")
        entries = [(s, certificate if s == section else c) for s, c in self.entries]
        loaded = [(s, c) for s, c in entries if isinstance(c, LoadedCertificate)]
        groups, _ = _groupCertificates(loaded)
        served = [(group, _serverContext(self._settings, group)) for group in groups]
        self._install(entries, served)

    def uses(self, section: str) -> bool:
        return any(s == section for s, _ in self.entries)

    @classmethod
    def fromConfig(
        cls,
        listener: ListenerConfig,
        certificates: Mapping[str, CertificateConfig],
        acme: AcmeCertificates | None = None,
    ) -> tuple[ServerTLS | None, list[Problem], list[ConfigWarning]]:
        """
        Load a listener's certificates and build its contexts.

        Certificates come from the listener's C{certificate} and
        C{private_key}, then from each C{[certificate:NAME]} in its
        C{certificates}, in that order; the first is served to clients
        whose server name matches none (or who send none).  Certificates
        for the same names and of different key types (RSA and ECDSA)
        share one context, where OpenSSL serves the one the client's
        signature algorithms allow.

        Every file is read now, and nothing is read later: a reload
        calls this again and gets new contexts.  An ACME certificate comes
        from C{acme}; without one (C{tlsgateway check}), or while it is
        not issued yet, its names are pending.

        @param certificates: the configuration's C{[certificate:NAME]}
            sections by name.
        @return: the policy, or L{None} when there are problems; every
            problem (each at its section and key); and warnings, formatted
            as problems are (C{FILE:LINE: [section] key: message}).
        """
        problems: list[Problem] = []
        warnings: list[ConfigWarning] = []
        listenerSection = f"listener:{listener.name}"
        sources: list[tuple[str, Location, str, str, str | None]] = []
        entries: list[_Entry] = []
        order: list[str] = []
        if listener.certificate is not None and listener.private_key is not None:
            sources.append(
                (
                    listenerSection,
                    listener.location,
                    listener.certificate,
                    listener.private_key,
                    None,
                )
            )
            order.append(listenerSection)
        acmeCertificates: dict[str, LoadedCertificate | PendingCertificate] = {}
        for name in listener.certificates:
            config = certificates.get(name)
            if config is None:
                problems.append(
                    _problem(
                        listener.location,
                        listenerSection,
                        "certificates",
                        f"certificate {name!r} is not defined"
                        f" (no [certificate:{name}] section)",
                    )
                )
                continue
            section = f"certificate:{name}"
            order.append(section)
            if config.acme:
                issued = None if acme is None else acme(name)
                acmeCertificates[section] = (
                    PendingCertificate(section, config.names)
                    if issued is None
                    else issued
                )
                continue
            if config.certificate is None or config.private_key is None:
                continue  # a section with problems (ConfigError.drafts)
            sources.append(
                (
                    section,
                    config.location,
                    config.certificate,
                    config.private_key,
                    config.ocsp_response,
                )
            )
        if not order and not problems:
            problems.append(
                _problem(
                    listener.location,
                    listenerSection,
                    None,
                    "terminating TLS needs certificate and private_key, or certificates",
                )
            )
        loadedBySection: dict[str, LoadedCertificate] = {}
        for section, location, certificatePath, keyPath, ocspPath in sources:
            try:
                certificate = loadCertificate(certificatePath, keyPath, ocspPath)
            except TLSConfigError as e:
                problems.append(_problem(location, section, e.key, str(e)))
                continue
            loadedBySection[section] = certificate
            warnings += [
                _warning(location, section, w.key, w.message)
                for w in certificate.warnings
            ]
        for section in order:
            if section in loadedBySection:
                entries.append((section, loadedBySection[section]))
            elif section in acmeCertificates:
                entries.append((section, acmeCertificates[section]))
        loaded = [(s, c) for s, c in entries if isinstance(c, LoadedCertificate)]
        settings = None
        try:
            settings, settingWarnings = _settings(listener)
        except TLSConfigError as e:
            for error in e.errors if isinstance(e, TLSConfigErrors) else (e,):
                problems.append(
                    _problem(listener.location, listenerSection, error.key, str(error))
                )
        else:
            warnings += [
                _warning(listener.location, listenerSection, w.key, w.message)
                for w in settingWarnings
            ]
        groups, unused = _groupCertificates(loaded)
        locations = {section: location for section, location, *_ in sources}
        warnings += [
            _warning(locations[section], section, "certificate", message)
            for section, message in unused
            if section in locations
        ]
        warnings += [
            _warning(listener.location, listenerSection, key, message)
            for key, message in _policyWarnings(listener)
        ]
        if problems or settings is None:
            return None, list(dict.fromkeys(problems)), warnings
        served = []
        for group in groups:
            try:
                served.append((group, _serverContext(settings, group)))
            except TLSConfigError as e:
                section, location = listenerSection, listener.location
                if e.key == "certificate":
                    section = next(
                        (s for s, c in loaded if c.certificatePath == e.path), section
                    )
                    location = locations.get(section, location)
                problems.append(_problem(location, section, e.key, str(e)))
        if problems:
            return None, list(dict.fromkeys(problems)), warnings
        return (
            cls(listener.name, served, settings=settings, entries=entries),
            [],
            warnings,
        )

    def contextFor(self, serverName: str | None) -> SSL.Context:
        """
        The context for a client that asked for C{serverName}.

        An exact name wins over a wildcard; a wildcard C{*.example.com}
        matches exactly one label (C{a.example.com}, not C{example.com} nor
        C{a.b.example.com}), as RFC 6125 has clients match it, so the
        client will accept what it is served; among equals, the
        certificate configured first.  No name, or no match: the first
        certificate's context.

        @raise CertificatePending: the certificate chosen is an ACME
            certificate not issued yet.
        """
        slots, exact, wildcard = self._tables
        slot: _Slot | None = None
        if serverName:
            name = serverName.lower().removesuffix(".")
            slot = exact.get(name)
            if slot is None:
                _, dot, parent = name.partition(".")
                if dot and parent:
                    slot = wildcard.get(parent)
        if slot is None:
            slot = slots[0]
        if isinstance(slot, PendingCertificate):
            raise CertificatePending(
                f"the certificate for {serverName or slot.names[0]!r} is pending:"
                f" [{slot.section}] is not issued by the ACME server yet"
            )
        return slot

    def describe(self, connection: SSL.Connection) -> dict[str, str | None]:
        """
        The facts of a finished handshake, for the access log: see
        L{describe}.
        """
        return describe(connection)


# --- the client side ------------------------------------------------------------


class UpstreamTLS:
    """
    How to re-encrypt to the servers of one C{[upstream:NAME]} with
    C{tls = on}, for one configuration generation.

    The chain is verified by OpenSSL during the handshake, against
    C{tls_ca} or the system store; the name (C{tls_server_name}, or the
    server's host) is checked with service-identity: during the handshake
    for connections made by L{connectionFor}, and again by L{verifyPeer}
    (or L{verify}), which the caller runs before sending a byte.  With
    C{tls_verify = off} nothing is verified (the caller warns about that).
    """

    def __init__(self, upstream: UpstreamConfig, context: SSL.Context) -> None:
        self.upstream = upstream
        self._context = context
        self._expected: weakref.WeakKeyDictionary[SSL.Connection, str] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def fromConfig(
        cls, upstream: UpstreamConfig
    ) -> tuple[UpstreamTLS | None, list[Problem], list[ConfigWarning]]:
        """
        Build the client context of an upstream.

        @return: the policy, or L{None} when there are problems or the
            upstream has C{tls = off}; the problems; warnings (none today,
            kept for symmetry with L{ServerTLS.fromConfig}).
        """
        if not upstream.tls:
            return None, [], []
        section = f"upstream:{upstream.name}"
        problems = []
        authorities: tuple[x509.Certificate, ...] = ()
        if upstream.tls_ca is not None:
            try:
                authorities = _readCertificates(upstream.tls_ca, "tls_ca")
            except TLSConfigError as e:
                problems.append(_problem(upstream.location, section, "tls_ca", str(e)))
        if upstream.tls_verify and upstream.tls_server_name is None:
            unnamed = [s.address for s in upstream.servers if s.host is None]
            if unnamed:
                problems.append(
                    _problem(
                        upstream.location,
                        section,
                        "tls_server_name",
                        f"{unnamed[0]} has no host name to verify: set"
                        " tls_server_name (or tls_verify = off)",
                    )
                )
        if problems:
            return None, problems, []
        policy = cls(upstream, SSL.Context(SSL.TLS_CLIENT_METHOD))
        context = policy._context
        try:
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
            if upstream.tls_verify:
                if authorities:
                    _trust(context, authorities)
                else:
                    context.set_default_verify_paths()
                context.set_verify(SSL.VERIFY_PEER, policy._verifyCallback)
            else:
                context.set_verify(SSL.VERIFY_NONE)
        except SSL.Error as e:
            problem = _problem(
                upstream.location,
                section,
                "tls_ca",
                f"OpenSSL refused it: {_reasons(e)}",
            )
            return None, [problem], []
        return policy, [], []

    def contextFor(self) -> SSL.Context:
        """
        The client context: TLS 1.2 or later, verifying unless
        C{tls_verify = off}.  Prefer L{connectionFor}, which also sets SNI
        and checks the name during the handshake.
        """
        return self._context

    def serverName(self, server: ServerConfig) -> str | None:
        """
        The name to send as SNI and verify: C{tls_server_name}, or the
        server's host.  L{None} only for a C{unix:} server without
        C{tls_server_name}, which C{fromConfig} allows only with
        C{tls_verify = off}.
        """
        return self.upstream.tls_server_name or server.host

    def connectionFor(self, server: ServerConfig) -> SSL.Connection:
        """
        A client connection to C{server}, in connect state, on memory BIOs.

        SNI carries the server name unless it is an IP address (RFC 6066
        forbids literal addresses in SNI).  When verifying, the name is
        also checked as soon as OpenSSL has the certificate, so a wrong
        server fails the handshake itself.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_connect_state()
        name = self.serverName(server)
        if name is not None:
            if not _isAddress(name):
                connection.set_tlsext_host_name(name.encode("ascii"))
            if self.upstream.tls_verify:
                self._expected[connection] = name
        return connection

    def verifyPeer(self, connection: SSL.Connection, name: str | None) -> None:
        """
        Check, after the handshake, that the upstream's certificate is for
        C{name} (a DNS name, or an IP address checked against IP
        subjectAltNames).  The chain was verified during the handshake.

        @raise UpstreamVerificationError: no certificate, or not for
            C{name}.
        """
        if not self.upstream.tls_verify:
            return
        if name is None:
            raise UpstreamVerificationError("no name to verify the upstream against")
        if connection.get_peer_certificate() is None:
            raise UpstreamVerificationError("the upstream sent no certificate")
        try:
            if _isAddress(name):
                verify_ip_address(connection, name)
            else:
                verify_hostname(connection, name)
        except (service_identity.VerificationError, service_identity.CertificateError):
            peer = connection.get_peer_certificate(as_cryptography=True)
            raise self._mismatch(peer, name) from None

    def verify(self, connection: SSL.Connection, server: ServerConfig) -> str | None:
        """
        L{verifyPeer} for C{server}'s name, as the session asks it.

        @return: L{None} when the certificate is good, or why it is not.
        """
        try:
            self.verifyPeer(connection, self.serverName(server))
        except UpstreamVerificationError as e:
            return str(e)
        return None

    def _mismatch(
        self, certificate: x509.Certificate | None, name: str
    ) -> UpstreamVerificationError:
        names = _names(certificate, commonName=False) if certificate else ()
        offered = ", ".join(names) if names else "no subjectAltName"
        return UpstreamVerificationError(
            f"the upstream certificate is not for {name!r} (it is for {offered})"
        )

    def _verifyCallback(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errorNumber: int,
        depth: int,
        ok: int,
    ) -> bool:
        """
        OpenSSL's verification, with words: the first failure raises an
        error that says what is wrong with which certificate, and the
        leaf's name is checked here too, so the handshake itself fails.
        """
        try:
            self._checkCertificate(connection, certificate, errorNumber, depth, ok)
        except UpstreamVerificationError:
            raise
        except Exception as e:
            raise _guard("upstream certificate verification", e) from e
        return True

    def _checkCertificate(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errorNumber: int,
        depth: int,
        ok: int,
    ) -> None:
        subject = certificate.to_cryptography().subject.rfc4514_string()
        if not ok:
            raise UpstreamVerificationError(
                f"the upstream certificate is not trusted:"
                f" {verifyErrorText(errorNumber)} (at depth {depth}: {subject})"
            )
        name = self._expected.get(connection)
        if depth == 0 and name is not None:
            leaf = certificate.to_cryptography()
            try:
                if _isAddress(name):
                    verify_certificate_ip_address(leaf, name)
                else:
                    verify_certificate_hostname(leaf, name)
            except (
                service_identity.VerificationError,
                service_identity.CertificateError,
            ):
                raise self._mismatch(leaf, name) from None
