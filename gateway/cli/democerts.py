"""
C{tlsgateway demo --write-certs FOLDER}: throwaway certificates for the
C{etc/} examples.

The examples name files under C{tls/} next to them (C{tls/example.com.pem},
C{tls/clients-ca.pem}...) that a fresh clone cannot have: they would be
private keys in git.  This writes every one of them, so that C{tlsgateway
check --config etc/termination.ini} passes on a newcomer's machine and the
examples can be run as they are.

The server certificates are issued the way a public CA issues them (a root,
an intermediate, the leaf), and each certificate file holds the leaf and
the intermediate, leaf first: what C{certificate} must hold, so C{check}
has nothing to warn about.  Clients verify against C{ca.pem} (the root).
Everything is ECDSA P-256 and valid for a year (the client CA's CRL for
30 days); keys are mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.wire.echopen import generateKeyFile

#: Server certificates the examples name: file stem -> names.
SERVERS: dict[str, tuple[str, ...]] = {
    "example.com": ("example.com", "www.example.com"),
    "api.example.com": ("api.example.com",),
    "internal.example.com": ("internal.example.com",),
    "db.example.com": ("db.example.com",),
    "app.example.com": ("app.example.com",),
    "api.bank.example": ("api.bank.example",),
}

#: The CA bundles the examples name, all the examples' root: C{client_ca}
#: gets the client CA; C{tls_ca} (the upstream servers' CA) the root.
_ROOT_COPIES = ("ca.pem", "server-ca.pem", "internal-ca.pem", "db-servers-ca.pem")

_VALIDITY = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(hours=1)

_Key = ec.EllipticCurvePrivateKey


def _name(commonName: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgateway examples"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def signCertificate(
    subject: x509.Name,
    key: _Key,
    issuer: tuple[x509.Name, _Key] | None,
    *,
    pathLength: int | None = None,
    names: Sequence[str] = (),
    purpose: x509.ObjectIdentifier | None = None,
    validity: datetime.timedelta = _VALIDITY,
) -> x509.Certificate:
    """
    A CA certificate (C{purpose} None) or a leaf for C{purpose}, signed by
    C{issuer} (self-signed when it is None): the throwaway certificates of
    the examples (L{writeExampleCertificates}) and of C{tlsgateway demo}.

    The extensions are those strict clients (OpenSSL 3, curl, browsers)
    insist on: a CA may sign certificates and CRLs and nothing else; a leaf
    is not a CA, has its names as SANs, and one purpose.
    """
    issuerName, issuerKey = issuer if issuer is not None else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    ca = purpose is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=pathLength if ca else None),
            critical=True,
        )
        .add_extension(_usage(ca=ca), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()),
            critical=False,
        )
    )
    if purpose is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([purpose]), critical=False
        )
    if names:
        entries: list[x509.GeneralName] = []
        for name in names:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                entries.append(x509.DNSName(name))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(entries), critical=False
        )
    return builder.sign(issuerKey, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _keyPem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        # Created 0600, never readable by others even for a moment.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def writeExampleCertificates(folder: str | os.PathLike[str]) -> list[Path]:
    """
    Write a fresh throwaway PKI for the C{etc/} examples into C{folder}
    (created if needed; files of the same names are replaced).

    @return: every file written, in order.
    """
    out = Path(folder)
    written: list[Path] = []
    rootKey = ec.generate_private_key(ec.SECP256R1())
    rootName = _name("tlsgateway examples root CA (throwaway)")
    root = signCertificate(rootName, rootKey, None, pathLength=1)
    issuerKey = ec.generate_private_key(ec.SECP256R1())
    issuerName = _name("tlsgateway examples intermediate CA (throwaway)")
    issuer = signCertificate(issuerName, issuerKey, (rootName, rootKey), pathLength=0)
    for copy in _ROOT_COPIES:
        written.append(_write(out / copy, _pem(root)))

    def server(names: Sequence[str], certificate: Path, keyPath: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = signCertificate(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
            key,
            (issuerName, issuerKey),
            names=names,
            purpose=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        written.append(_write(certificate, _pem(leaf, issuer)))
        written.append(_write(keyPath, _keyPem(key), private=True))

    for stem, names in SERVERS.items():
        server(names, out / f"{stem}.pem", out / f"{stem}.key")
    # etc/letsencrypt.ini names certbot's layout; to try it without certbot,
    # point its paths here (its comments say how).
    live = out / "letsencrypt" / "live" / "example.com"
    server(SERVERS["example.com"], live / "fullchain.pem", live / "privkey.pem")

    clientCAKey = ec.generate_private_key(ec.SECP256R1())
    clientCAName = _name("tlsgateway examples client CA (throwaway)")
    clientCA = signCertificate(clientCAName, clientCAKey, None, pathLength=0)
    written.append(_write(out / "clients-ca.pem", _pem(clientCA)))
    clientKey = ec.generate_private_key(ec.SECP256R1())
    client = signCertificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client-1")]),
        clientKey,
        (clientCAName, clientCAKey),
        purpose=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    written.append(_write(out / "client.pem", _pem(client)))
    written.append(_write(out / "client.key", _keyPem(clientKey), private=True))
    # client_crl: the client CA's revocation list, revoking nothing yet.
    now = datetime.datetime.now(datetime.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(clientCAName)
        .last_update(now - _BACKDATE)
        .next_update(now + datetime.timedelta(days=30))
        .sign(clientCAKey, hashes.SHA256())
    )
    written.append(
        _write(out / "clients.crl", crl.public_bytes(serialization.Encoding.PEM))
    )
    # etc/ech-split.ini: an ECH key file, as tlsgateway ech-keygen writes.
    echKey, _ = generateKeyFile("public.example.com", 1)
    written.append(_write(out / "ech.pem", echKey.encode("ascii"), private=True))
    return written
