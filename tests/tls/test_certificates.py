"""
Certificate files read and checked (L{gateway.tls.certificates}): chains,
keys, names, expiry, OCSP responses, and errors that name the files.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.tls.certificates import (
    LoadedCertificate,
    loadCertificate,
    readCertificates,
)
from gateway.tls.errors import (
    TLSConfigError,
)
from tests.tls.fixtures import (
    NOW,
    PKI,
    leafOf,
    notChain,
    ocspResponse,
    pki,
)

__all__ = ["pki"]  # the shared fixture, re-exported for pytest


def test_loadCertificateReadsChainKeyAndNames(pki: PKI) -> None:
    loaded = loadCertificate(pki.rsa.certificate, pki.rsa.key)
    assert loaded.keyType == "RSA"
    assert loaded.names == ("example.com", "www.example.com")
    assert [c.subject for c in loaded.chain] == [
        pki.rsa.subject,
        x509.load_pem_x509_certificate(pki.rsaIssuer.cert_pem.bytes()).subject,
    ]
    assert loaded.leaf.subject == pki.rsa.subject
    assert loaded.notBefore < NOW < loaded.notAfter
    assert (loaded.certificatePath, loaded.keyPath) == (
        pki.rsa.certificate,
        pki.rsa.key,
    )
    assert loaded.ocspResponse is None
    assert loaded.warnings == ()
    assert "PRIVATE" not in repr(loaded)
    assert loadCertificate(pki.ecdsa.certificate, pki.ecdsa.key).keyType == "EC"


def test_namesAreLowerCaseSANsAndIPAddresses(pki: PKI) -> None:
    leaf = pki.root.issue_cert("Mixed.Example.ORG", "10.0.0.7", "2001:db8::1")
    pair = pki.files.pair(leaf)
    assert loadCertificate(pair.certificate, pair.key).names == (
        "mixed.example.org",
        "10.0.0.7",
        "2001:db8::1",
    )


def _signedBy(
    ca: trustme.CA, commonName: str, san: Sequence[str] | None
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    caKey = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(caKey, ec.EllipticCurvePrivateKey)
    caCert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)]))
        .issuer_name(caCert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    certificate = builder.sign(caKey, hashes.SHA256())
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def test_commonNameCountsOnlyWithoutSAN(pki: PKI) -> None:
    files = pki.files
    pem, key = _signedBy(pki.root, "Legacy.Example", None)
    legacy = loadCertificate(
        files.write("a.crt", pem), files.write("a.key", key, 0o600)
    )
    assert legacy.names == ("legacy.example",)
    pem, key = _signedBy(pki.root, "cn.example", ["san.example"])
    modern = loadCertificate(
        files.write("b.crt", pem), files.write("b.key", key, 0o600)
    )
    assert modern.names == ("san.example",)


def test_chainAndKeyMayShareOneFile(pki: PKI) -> None:
    leaf = pki.ecdsa.leaf
    both = pki.files.write(
        "both.pem",
        leaf.private_key_pem.bytes()
        + b"".join(b.bytes() for b in leaf.cert_chain_pems),
        0o600,
    )
    loaded = loadCertificate(both, both)
    assert (len(loaded.chain), loaded.keyType, loaded.warnings) == (2, "EC", ())


def assertNamesFileSafely(error: TLSConfigError, path: str, key: str) -> None:
    """
    The message names the file, and quotes nothing from it.
    """
    assert path in str(error)
    assert (error.path, error.key) == (path, key)
    if os.path.exists(path):
        for line in Path(path).read_bytes().splitlines():
            if len(line) >= 16 and not line.startswith(b"-----"):
                assert line.decode("latin-1") not in str(error)


def test_missingFilesAreNamed(pki: PKI) -> None:
    missing = pki.files.path("missing.crt")
    with pytest.raises(TLSConfigError) as caught:
        loadCertificate(missing, pki.rsa.key)
    assertNamesFileSafely(caught.value, missing, "certificate")
    assert "No such file" in str(caught.value)
    with pytest.raises(TLSConfigError) as caught:
        loadCertificate(pki.rsa.certificate, missing)
    assertNamesFileSafely(caught.value, missing, "private_key")


def test_fileWithoutCertificateIsNotPEM(pki: PKI) -> None:
    text = pki.files.write("junk.crt", b"this is not a certificate\n")
    with pytest.raises(TLSConfigError) as caught:
        loadCertificate(text, pki.rsa.key)
    assertNamesFileSafely(caught.value, text, "certificate")
    assert "no certificate found" in str(caught.value)
    der = pki.files.write(
        "leaf.der", leafOf(pki.rsa.leaf).public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(TLSConfigError, match="looks like DER"):
        loadCertificate(der, pki.rsa.key)
    onlyKey = pki.files.write(
        "key-as-cert.pem", pki.rsa.leaf.private_key_pem.bytes(), 0o600
    )
    with pytest.raises(TLSConfigError) as caught:
        loadCertificate(onlyKey, pki.rsa.key)
    assertNamesFileSafely(caught.value, onlyKey, "certificate")


def test_corruptCertificateIsNamed(pki: PKI) -> None:
    broken = pki.files.write(
        "broken.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(TLSConfigError, match="certificate #1 is not a valid") as caught:
        loadCertificate(broken, pki.rsa.key)
    assertNamesFileSafely(caught.value, broken, "certificate")


def test_keyFileWithoutKey(pki: PKI) -> None:
    with pytest.raises(TLSConfigError, match="no private key found") as caught:
        loadCertificate(pki.rsa.certificate, pki.rsa.certificate)
    assertNamesFileSafely(caught.value, pki.rsa.certificate, "private_key")


def test_keyOfAnotherCertificateIsAMismatch(pki: PKI) -> None:
    with pytest.raises(TLSConfigError, match="does not match") as caught:
        loadCertificate(pki.rsa.certificate, pki.ecdsa.key)
    assertNamesFileSafely(caught.value, pki.ecdsa.key, "private_key")
    assert pki.rsa.certificate in str(caught.value)


def test_keyOfALaterCertificateSaysTheLeafMustComeFirst(pki: PKI) -> None:
    other, issuer = pki.api.leaf.cert_chain_pems[0], pki.rsa.leaf.cert_chain_pems[0]
    swapped = pki.files.write("swapped.crt", issuer.bytes() + other.bytes())
    with pytest.raises(TLSConfigError, match="belongs to certificate #2"):
        loadCertificate(swapped, pki.api.key)


def certbotLayout(root: Path, certificate: bytes, key: bytes) -> tuple[str, str]:
    """
    certbot's layout: C{live/x/*.pem} are relative links to the numbered
    files of C{archive/x/}.

    @return: the live certificate and key paths, as an INI file names them.
    """
    archive, live = root / "archive" / "x", root / "live" / "x"
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    (archive / "fullchain3.pem").write_bytes(certificate)
    (archive / "privkey3.pem").write_bytes(key)
    os.chmod(archive / "privkey3.pem", 0o600)
    (live / "fullchain.pem").symlink_to("../../archive/x/fullchain3.pem")
    (live / "privkey.pem").symlink_to("../../archive/x/privkey3.pem")
    return str(live / "fullchain.pem"), str(live / "privkey.pem")


def test_aMismatchBehindSymlinksNamesTheLinksAndTheFilesTheyPointTo(
    pki: PKI, tmp_path: Path
) -> None:
    certificate, key = certbotLayout(
        tmp_path,
        pki.rsa.leaf.cert_chain_pems[0].bytes(),
        pki.ecdsa.leaf.private_key_pem.bytes(),
    )
    with pytest.raises(TLSConfigError) as caught:
        loadCertificate(certificate, key)
    assert str(caught.value) == (
        f"the private key in {key} -> ../../archive/x/privkey3.pem does not match"
        f" the certificate in {certificate} -> ../../archive/x/fullchain3.pem"
    )
    assert caught.value.path == key


def test_aDanglingLinkNamesWhereItPoints(pki: PKI, tmp_path: Path) -> None:
    certificate, key = certbotLayout(
        tmp_path,
        pki.rsa.leaf.cert_chain_pems[0].bytes(),
        pki.rsa.leaf.private_key_pem.bytes(),
    )
    os.remove(tmp_path / "archive" / "x" / "privkey3.pem")
    with pytest.raises(TLSConfigError) as caught:
        loadCertificate(certificate, key)
    assert str(caught.value) == (
        f"cannot read {key} -> ../../archive/x/privkey3.pem: No such file or directory"
    )


def test_aChainOfLinksIsNamedHopByHopAndALoopEnds(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("/nowhere/c")
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(TLSConfigError) as chain:
        readCertificates(str(tmp_path / "a"), "client_ca")
    assert str(chain.value).startswith(
        f"cannot read {tmp_path / 'a'} -> b -> /nowhere/c:"
    )
    with pytest.raises(TLSConfigError) as loop:
        readCertificates(str(tmp_path / "loop"), "client_ca")
    assert str(loop.value).count("-> loop") == 8


@pytest.mark.parametrize("format", ["pkcs8", "traditional"])
def test_encryptedKeyIsRefusedWithAReason(pki: PKI, format: str) -> None:
    key = serialization.load_pem_private_key(
        pki.ecdsa.leaf.private_key_pem.bytes(), None
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8
        if format == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = pki.files.write("encrypted.key", encrypted, 0o600)
    with pytest.raises(
        TLSConfigError, match=r"encrypted.*no passphrase support"
    ) as caught:
        loadCertificate(pki.ecdsa.certificate, path)
    assertNamesFileSafely(caught.value, path, "private_key")


def test_leafAloneFromAnUntrustedIssuerIsAMissingChainWarning(pki: PKI) -> None:
    """
    C{cert.pem} where C{fullchain.pem} was meant: one certificate, whose
    issuer is no trusted root.
    """
    [warning] = loadCertificate(pki.api.certificate, pki.api.key).warnings
    assert warning.key == "certificate"
    assert "holds only the server's certificate" in str(warning)
    assert "fullchain.pem" in str(warning)


def test_leafWithItsIntermediateOrSelfSignedHasNoChainWarning(pki: PKI) -> None:
    assert loadCertificate(pki.rsa.certificate, pki.rsa.key).warnings == ()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self.example")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = pki.files.write(
        "self.pem",
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    assert loadCertificate(path, path).warnings == ()


def test_expiredCertificateIsAWarning(pki: PKI) -> None:
    leaf = pki.root.issue_cert(
        "old.example",
        not_before=NOW - datetime.timedelta(days=30),
        not_after=NOW - datetime.timedelta(days=1),
    )
    pair = pki.files.pair(leaf)
    loaded = loadCertificate(pair.certificate, pair.key)
    [warning] = notChain(loaded.warnings)
    assert warning.key == "certificate"
    assert str(warning).startswith(pair.certificate)
    assert "expired on" in str(warning)


def test_notYetValidCertificateIsAWarning(pki: PKI) -> None:
    leaf = pki.root.issue_cert(
        "new.example",
        not_before=NOW + datetime.timedelta(days=1),
        not_after=NOW + datetime.timedelta(days=30),
    )
    pair = pki.files.pair(leaf)
    [warning] = notChain(loadCertificate(pair.certificate, pair.key).warnings)
    assert str(warning).startswith(pair.certificate)
    assert "not valid yet" in str(warning)


def test_keyReadableByOthersIsAWarning(pki: PKI) -> None:
    key = pki.files.write("open.key", pki.api.leaf.private_key_pem.bytes(), 0o640)
    [warning] = notChain(loadCertificate(pki.api.certificate, key).warnings)
    assert warning.key == "private_key"
    assert str(warning).startswith(key)
    assert "mode 0640" in str(warning)


def test_chainOutOfOrderIsAWarning(pki: PKI) -> None:
    leaf, issuer = pki.rsa.leaf.cert_chain_pems
    unrelated = pki.api.leaf.cert_chain_pems[0]
    path = pki.files.write("gap.crt", leaf.bytes() + unrelated.bytes() + issuer.bytes())
    [warning] = loadCertificate(path, pki.rsa.key).warnings
    assert "certificate #2 did not issue certificate #1" in str(warning)


def test_ocspResponseIsLoadedAndChecked(pki: PKI) -> None:
    good = pki.files.write("good.ocsp", ocspResponse(pki.ecIssuer, pki.ecdsa.leaf))
    loaded = loadCertificate(pki.ecdsa.certificate, pki.ecdsa.key, good)
    assert loaded.ocspResponse == Path(good).read_bytes()
    assert loaded.ocspPath == good

    stale = pki.files.write(
        "stale.ocsp",
        ocspResponse(
            pki.ecIssuer, pki.ecdsa.leaf, nextUpdate=NOW - datetime.timedelta(minutes=5)
        ),
    )
    [warning] = loadCertificate(pki.ecdsa.certificate, pki.ecdsa.key, stale).warnings
    assert (warning.key, warning.path) == ("ocsp_response", stale)
    assert "OCSP response expired" in str(warning)

    foreign = pki.files.write("foreign.ocsp", ocspResponse(pki.root, pki.api.leaf))
    with pytest.raises(TLSConfigError, match="for another certificate") as caught:
        loadCertificate(pki.ecdsa.certificate, pki.ecdsa.key, foreign)
    assertNamesFileSafely(caught.value, foreign, "ocsp_response")

    junk = pki.files.write("junk.ocsp", b"\x30\x03junk")
    with pytest.raises(TLSConfigError, match="not a DER OCSP response"):
        loadCertificate(pki.ecdsa.certificate, pki.ecdsa.key, junk)


def test_loadedCertificateIsFrozen(pki: PKI) -> None:
    loaded = loadCertificate(pki.api.certificate, pki.api.key)
    assert isinstance(loaded, LoadedCertificate)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        loaded.names = ()  # type: ignore[misc]
