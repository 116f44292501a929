"""
Certificate files read and checked: chains, private keys, whether a key
belongs to its certificate, OCSP responses, CRLs and expiry.

L{loadCertificate} reads one certificate chain, its private key and an
optional OCSP response, checks them the way an operator needs (files named,
problems worded, expiry and key-file permissions warned about) and returns
a L{LoadedCertificate}.  C{tlsgateway check} and a reload both go through
it, so a broken file never reaches a live listener.  Nothing else in this
module does I/O besides reading the files it is given.

Every problem is a L{TLSConfigError} naming its file and the key that names
it; no message ever quotes a key file's contents.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import ssl
import stat
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from gateway.tls.errors import TLSConfigError

__all__ = [
    "LoadWarning",
    "LoadedCertificate",
    "ServerKey",
    "certificateNames",
    "loadCertificate",
    "readCRLs",
    "readCertificates",
    "readPrivateKey",
    "trust",
]

#: The keys OpenSSL can sign a TLS handshake with, as pyOpenSSL takes them.
ServerKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


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


def readCertificates(path: str, key: str) -> tuple[x509.Certificate, ...]:
    """
    Every C{CERTIFICATE} block of a PEM file, in order: a chain to serve,
    or a bundle of authorities (C{client_ca}, C{tls_ca}, C{[acme]
    ca_bundle}).

    @param key: the configuration key naming the file, for the error.
    @raise TLSConfigError: unreadable, no certificate, or a block that is
        not a certificate.
    """
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


def certificateNames(
    certificate: x509.Certificate, commonName: bool = True
) -> tuple[str, ...]:
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
    chain = readCertificates(certificatePath, "certificate")
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
        names=certificateNames(chain[0]),
        keyType=keyType,
        notBefore=chain[0].not_valid_before_utc,
        notAfter=chain[0].not_valid_after_utc,
        certificatePath=certificatePath,
        keyPath=keyPath,
        ocspPath=ocspPath,
        ocspResponse=ocspResponse,
        warnings=tuple(warnings),
    )


def trust(context: SSL.Context, authorities: Iterable[x509.Certificate]) -> None:
    """
    Make C{context} trust C{authorities} (C{client_ca}, C{tls_ca}) when it
    verifies a peer.
    """
    store = context.get_cert_store()
    assert store is not None
    for authority in authorities:
        store.add_cert(crypto.X509.from_cryptography(authority))


def readCRLs(
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
