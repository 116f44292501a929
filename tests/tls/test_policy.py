"""
TLS policy: certificate loading, server and upstream contexts, driven by
real handshakes between pyOpenSSL connections on memory BIOs (no sockets),
with trustme certificates written to temporary files.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from gateway.config import (
    CertificateConfig,
    ConfigWarning,
    ListenerConfig,
    Location,
    Problem,
    ServerConfig,
    UpstreamConfig,
)
from gateway.tls.policy import (
    DEFAULT_CIPHERS,
    LoadedCertificate,
    ServerTLS,
    TLSConfigError,
    TLSHandshakeError,
    UpstreamTLS,
    UpstreamVerificationError,
    _ALPNSelector,
    _Stapler,
    describe,
    loadCertificate,
    readCertificates,
    weakCiphers,
)

INI = "/etc/tlsgateway/gw.ini"
NOW = datetime.datetime.now(datetime.UTC)
RSA_SIGALGS = b"RSA-PSS+SHA256:RSA+SHA256"
ECDSA_SIGALGS = b"ECDSA+SHA256"


# --- files ------------------------------------------------------------------------


@attrs.frozen
class Pair:
    """
    A certificate chain file and its key file.
    """

    certificate: str
    key: str
    leaf: trustme.LeafCert

    @property
    def subject(self) -> x509.Name:
        return _leafOf(self.leaf).subject


def _leafOf(leaf: trustme.LeafCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


class Files:
    """
    Writes trustme material where a configuration would name it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._count = 0

    def path(self, name: str) -> str:
        self._count += 1
        return str(self.folder / f"{self._count}-{name}")

    def write(self, name: str, data: bytes, mode: int = 0o644) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def pair(self, leaf: trustme.LeafCert, name: str = "server") -> Pair:
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return Pair(
            self.write(f"{name}.crt", chain),
            self.write(f"{name}.key", leaf.private_key_pem.bytes(), 0o600),
            leaf,
        )

    def ca(self, ca: trustme.CA, name: str = "ca") -> str:
        return self.write(f"{name}.pem", ca.cert_pem.bytes())


@attrs.frozen
class PKI:
    """
    Certificates shared by the tests of this module (RSA keys are slow to
    make): a root, two intermediates, and leaves under them.
    """

    files: Files
    root: trustme.CA
    rsaIssuer: trustme.CA
    ecIssuer: trustme.CA
    rsa: Pair  # example.com, www.example.com; RSA; from rsaIssuer
    ecdsa: Pair  # the same names; ECDSA; from ecIssuer
    wildcard: Pair  # *.example.com
    api: Pair  # api.example.com
    other: Pair  # other.example.net
    clientCA: trustme.CA
    client: trustme.LeafCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    files = Files(tmp_path_factory.mktemp("pki"))
    root = trustme.CA()
    rsaIssuer = root.create_child_ca(key_type=trustme.KeyType.RSA)
    ecIssuer = root.create_child_ca()
    names = ("example.com", "www.example.com")
    clientCA = trustme.CA()
    return PKI(
        files=files,
        root=root,
        rsaIssuer=rsaIssuer,
        ecIssuer=ecIssuer,
        rsa=files.pair(
            rsaIssuer.issue_cert(*names, key_type=trustme.KeyType.RSA), "rsa"
        ),
        ecdsa=files.pair(ecIssuer.issue_cert(*names), "ecdsa"),
        wildcard=files.pair(root.issue_cert("*.example.com"), "wildcard"),
        api=files.pair(root.issue_cert("api.example.com"), "api"),
        other=files.pair(root.issue_cert("other.example.net"), "other"),
        clientCA=clientCA,
        client=clientCA.issue_cert("client.example", common_name="client-1"),
    )


# --- configuration --------------------------------------------------------------


def listenerConfig(certificate: Pair | None = None, **settings: Any) -> ListenerConfig:
    if certificate is not None:
        settings.update(
            certificate=certificate.certificate, private_key=certificate.key
        )
    return ListenerConfig(
        name="web",
        listen=("tcp:0",),
        mode="terminate",
        upstream="app",
        location=Location(INI, 7),
        **settings,
    )


def certificateSection(
    name: str, pair: Pair, ocspResponse: str | None = None, line: int = 20
) -> CertificateConfig:
    return CertificateConfig(
        name=name,
        certificate=pair.certificate,
        private_key=pair.key,
        ocsp_response=ocspResponse,
        location=Location(INI, line),
    )


def serverTLS(
    certificate: Pair | None = None,
    sections: Sequence[CertificateConfig] = (),
    **settings: Any,
) -> ServerTLS:
    listener = listenerConfig(
        certificate, certificates=tuple(s.name for s in sections), **settings
    )
    policy, problems, _ = ServerTLS.fromConfig(
        listener, {section.name: section for section in sections}
    )
    assert problems == []
    assert policy is not None
    return policy


# --- handshakes in memory -------------------------------------------------------


@attrs.define
class Handshake:
    client: SSL.Connection
    server: SSL.Connection
    clientError: Exception | None = None
    serverError: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.clientError is None and self.serverError is None

    def peerChain(self) -> list[x509.Certificate]:
        return self.client.get_peer_cert_chain(as_cryptography=True) or []


def _drain(connection: SSL.Connection) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(connection.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


def shake(client: SSL.Connection, server: SSL.Connection) -> Handshake:
    """
    Pump handshake records between two connections until neither has
    anything left to say; record which side failed, and how.
    """
    result = Handshake(client, server)
    done = {"client": False, "server": False}
    for _ in range(50):
        for side, connection in (("client", client), ("server", server)):
            if done[side] or getattr(result, f"{side}Error") is not None:
                continue
            try:
                connection.do_handshake()
            except SSL.WantReadError:
                pass
            except Exception as e:  # noqa: BLE001 - recorded for the test to check
                setattr(result, f"{side}Error", e)
            else:
                done[side] = True
        moved = False
        for source, sink in ((client, server), (server, client)):
            data = _drain(source)
            if data:
                sink.bio_write(data)
                moved = True
        if not moved:
            break
    if result.ok:
        # TLS 1.3 session tickets follow the handshake: let the client read them.
        with contextlib.suppress(SSL.WantReadError):
            client.recv(1)
    return result


def clientContext(
    ca: trustme.CA | None = None,
    *,
    minVersion: int | None = None,
    maxVersion: int | None = None,
    sigalgs: bytes | None = None,
    ciphers: bytes | None = None,
    certificate: trustme.LeafCert | None = None,
    alpn: Sequence[bytes] = (),
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if minVersion is not None:
        context.set_min_proto_version(minVersion)
    if maxVersion is not None:
        context.set_max_proto_version(maxVersion)
    if ciphers is not None:
        context.set_cipher_list(ciphers)
    if sigalgs is not None:
        # pyOpenSSL has no call for the client's signature algorithms.
        assert _lib.SSL_CTX_set1_sigalgs_list(context._context, sigalgs) == 1
    if ca is not None:
        ca.configure_trust(context)
        context.set_verify(SSL.VERIFY_PEER)
    if certificate is not None:
        certificate.configure_cert(context)
    if alpn:
        context.set_alpn_protos(list(alpn))
    return context


def connect(
    policy: ServerTLS,
    serverName: str | None,
    context: SSL.Context,
    *,
    session: SSL.Session | None = None,
    prepare: Callable[[SSL.Connection], None] = lambda connection: None,
) -> Handshake:
    """
    One handshake with the context the policy picks for C{serverName}, as
    the gateway does after the pre-read.
    """
    client = SSL.Connection(context, None)
    client.set_connect_state()
    if serverName is not None:
        client.set_tlsext_host_name(serverName.encode("ascii"))
    if session is not None:
        client.set_session(session)
    prepare(client)
    server = SSL.Connection(policy.contextFor(serverName), None)
    server.set_accept_state()
    return shake(client, server)


def reused(connection: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(connection._ssl))


def reasons(error: Exception | None) -> str:
    assert isinstance(error, SSL.Error), error
    return str(error)


# --- loading certificates -------------------------------------------------------


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
        "leaf.der", _leafOf(pki.rsa.leaf).public_bytes(serialization.Encoding.DER)
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


def notChain(warnings: Iterable[Any]) -> list[Any]:
    """
    The warnings other than the missing-chain one that every leaf issued
    straight by a throwaway root (not a trusted one) gets.
    """
    return [w for w in warnings if "holds only the server's certificate" not in str(w)]


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


# --- OCSP -------------------------------------------------------------------------


def ocspResponse(
    issuer: trustme.CA,
    leaf: trustme.LeafCert,
    *,
    nextUpdate: datetime.datetime | None = None,
) -> bytes:
    issuerCert = x509.load_pem_x509_certificate(issuer.cert_pem.bytes())
    issuerKey = serialization.load_pem_private_key(issuer.private_key_pem.bytes(), None)
    assert isinstance(issuerKey, ec.EllipticCurvePrivateKey)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=_leafOf(leaf),
            issuer=issuerCert,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW - datetime.timedelta(hours=1),
            next_update=nextUpdate or NOW + datetime.timedelta(days=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuerCert)
        .sign(issuerKey, hashes.SHA256())
    )
    return response.public_bytes(serialization.Encoding.DER)


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


def test_ocspStapleGoesToClientsThatAskForIt(pki: PKI) -> None:
    response = ocspResponse(pki.ecIssuer, pki.ecdsa.leaf)
    path = pki.files.write("ecdsa.ocsp", response)
    policy = serverTLS(
        sections=[
            certificateSection("ecdsa", pki.ecdsa, path),
            certificateSection("rsa", pki.rsa),
        ]
    )
    stapled: list[bytes] = []

    def received(connection: SSL.Connection, data: bytes, _: object) -> bool:
        stapled.append(data)
        return True

    def clientFor(sigalgs: bytes) -> SSL.Context:
        context = clientContext(pki.root, sigalgs=sigalgs)
        context.set_ocsp_client_callback(received)
        return context

    def ask(connection: SSL.Connection) -> None:
        connection.request_ocsp()

    assert connect(policy, "example.com", clientFor(ECDSA_SIGALGS), prepare=ask).ok
    # The RSA certificate has no response of its own: nothing is stapled.
    assert connect(policy, "example.com", clientFor(RSA_SIGALGS), prepare=ask).ok
    # A client that does not ask gets no staple (its callback is not called).
    assert connect(policy, "example.com", clientFor(ECDSA_SIGALGS)).ok
    assert stapled == [response, b""]


def test_failingCallbackFailsTheHandshake(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pki.files.write("ecdsa.ocsp", ocspResponse(pki.ecIssuer, pki.ecdsa.leaf))
    policy = serverTLS(sections=[certificateSection("ecdsa", pki.ecdsa, path)])

    def broken(self: _Stapler, connection: SSL.Connection) -> bytes:
        raise KeyError("boom")

    monkeypatch.setattr(_Stapler, "responseFor", broken)
    context = clientContext(pki.root)
    context.set_ocsp_client_callback(lambda connection, data, _: True)
    handshake = connect(
        policy,
        "example.com",
        context,
        prepare=lambda connection: connection.request_ocsp(),
    )
    # What the gateway's TLS layer catches: an SSL.Error, saying why.
    assert isinstance(handshake.serverError, TLSHandshakeError)
    assert isinstance(handshake.serverError, SSL.Error)
    assert str(handshake.serverError) == "OCSP stapling failed: KeyError: 'boom'"
    assert handshake.clientError is not None


# --- choosing certificates --------------------------------------------------------


def test_chainIsServedLeafFirst(pki: PKI) -> None:
    policy = serverTLS(pki.rsa)
    handshake = connect(policy, "example.com", clientContext(pki.root))
    assert handshake.ok
    assert [c.subject for c in handshake.peerChain()] == [
        pki.rsa.subject,
        x509.load_pem_x509_certificate(pki.rsaIssuer.cert_pem.bytes()).subject,
    ]


@pytest.mark.parametrize(
    ("serverName", "served"),
    [
        ("api.example.com", "api"),  # exact beats the earlier wildcard
        ("API.Example.COM", "api"),
        ("www.example.com", "rsa"),  # exact, in the first certificate
        ("mail.example.com", "wildcard"),  # one label under the wildcard
        ("a.b.example.com", "rsa"),  # two labels: the wildcard does not match
        ("example.net", "rsa"),  # nothing matches: the first certificate
        ("other.example.net", "other"),
        (None, "rsa"),
    ],
)
def test_serverNameChoosesTheCertificate(
    pki: PKI, serverName: str | None, served: str
) -> None:
    policy = serverTLS(
        pki.rsa,
        [
            certificateSection("wildcard", pki.wildcard),
            certificateSection("api", pki.api),
            certificateSection("other", pki.other),
        ],
    )
    handshake = connect(policy, serverName, clientContext())
    assert handshake.ok
    assert handshake.peerChain()[0].subject == getattr(pki, served).subject


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_rsaAndEcdsaShareAContextAndKeepTheirOwnChains(pki: PKI, version: int) -> None:
    policy = serverTLS(
        sections=[
            certificateSection("rsa", pki.rsa),
            certificateSection("ec", pki.ecdsa),
        ]
    )
    assert policy.contextFor("example.com") is policy.contextFor("www.example.com")
    issuers = {
        RSA_SIGALGS: (pki.rsa, pki.rsaIssuer),
        ECDSA_SIGALGS: (pki.ecdsa, pki.ecIssuer),
    }
    for sigalgs, (pair, issuer) in issuers.items():
        context = clientContext(pki.root, maxVersion=version, sigalgs=sigalgs)
        handshake = connect(policy, "example.com", context)
        assert handshake.ok, (handshake.clientError, handshake.serverError)
        assert [c.subject for c in handshake.peerChain()] == [
            pair.subject,
            x509.load_pem_x509_certificate(issuer.cert_pem.bytes()).subject,
        ]


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
@pytest.mark.parametrize("rsaFirst", [True, False])
@pytest.mark.parametrize(
    "sigalgs", [None, b"rsa_pss_rsae_sha256:ecdsa_secp256r1_sha256:rsa_pkcs1_sha256"]
)
def test_ecdsaIsServedToClientsThatAllowBoth(
    pki: PKI, version: int, rsaFirst: bool, sigalgs: bytes | None
) -> None:
    """
    With RSA and ECDSA certificates for the same names, a client that
    accepts both gets ECDSA (a P-256 signature costs a fraction of an RSA
    2048 one), whichever is configured first and even when the client
    lists RSA first: C{prefer_server_ciphers} (on by default) makes
    OpenSSL walk its own signature algorithm list, which starts with
    ECDSA, and its own cipher list, where ECDHE-ECDSA comes first.
    """
    sections = [
        certificateSection("rsa", pki.rsa),
        certificateSection("ec", pki.ecdsa),
    ]
    if not rsaFirst:
        sections.reverse()
    policy = serverTLS(sections=sections)
    context = clientContext(pki.root, maxVersion=version, sigalgs=sigalgs)
    handshake = connect(policy, "example.com", context)
    assert handshake.ok, (handshake.clientError, handshake.serverError)
    assert handshake.peerChain()[0].subject == pki.ecdsa.subject


def test_sameNamesAndKeyTypeTwiceIsAWarning(pki: PKI) -> None:
    listener = listenerConfig(certificates=("one", "two"))
    sections = {
        "one": certificateSection("one", pki.api, line=30),
        "two": certificateSection("two", pki.api, line=40),
    }
    policy, problems, warnings = ServerTLS.fromConfig(listener, sections)
    assert policy is not None
    assert problems == []
    assert [str(w) for w in notChain(warnings)] == [
        f"{INI}:40: [certificate:two] certificate: warning: {pki.api.certificate}"
        " is never served: an earlier EC certificate has the same names"
    ]


# --- protocol versions and ciphers --------------------------------------------------


def test_tls12AndTls13AreBothServed(pki: PKI) -> None:
    policy = serverTLS(pki.ecdsa)
    latest = connect(policy, "example.com", clientContext(pki.root))
    assert latest.client.get_protocol_version_name() == "TLSv1.3"
    older = connect(
        policy, "example.com", clientContext(pki.root, maxVersion=SSL.TLS1_2_VERSION)
    )
    assert older.ok
    assert older.client.get_protocol_version_name() == "TLSv1.2"
    assert older.client.get_cipher_name() == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_tls11ClientIsRefused(pki: PKI) -> None:
    context = clientContext(
        minVersion=SSL.TLS1_VERSION,
        maxVersion=SSL.TLS1_1_VERSION,
        ciphers=b"DEFAULT:@SECLEVEL=0",
    )
    handshake = connect(serverTLS(pki.rsa), "example.com", context)
    assert "unsupported protocol" in reasons(handshake.serverError)


def test_protocolsLimitTheVersions(pki: PKI) -> None:
    only13 = serverTLS(pki.rsa, protocols=("TLSv1.3",))
    handshake = connect(
        only13, "example.com", clientContext(maxVersion=SSL.TLS1_2_VERSION)
    )
    assert "unsupported protocol" in reasons(handshake.serverError)
    only12 = connect(serverTLS(pki.rsa, protocols=("TLSv1.2",)), None, clientContext())
    assert only12.client.get_protocol_version_name() == "TLSv1.2"


def test_defaultCiphersAreECDHEWithAEADOnly(pki: PKI) -> None:
    server = SSL.Connection(serverTLS(pki.rsa).contextFor(None), None)
    tls12 = [c for c in server.get_cipher_list() if not c.startswith("TLS_")]
    assert tls12
    for cipher in tls12:
        assert cipher.startswith("ECDHE-"), cipher
        assert "GCM" in cipher or "CHACHA20-POLY1305" in cipher, cipher
    assert DEFAULT_CIPHERS == "ECDHE+AESGCM:ECDHE+CHACHA20"


def test_cbcOnlyClientIsRefused(pki: PKI) -> None:
    context = clientContext(maxVersion=SSL.TLS1_2_VERSION, ciphers=b"AES128-SHA")
    handshake = connect(serverTLS(pki.rsa), "example.com", context)
    assert "no shared cipher" in reasons(handshake.serverError)


def test_cipherSettingsApply(pki: PKI) -> None:
    policy = serverTLS(
        pki.rsa,
        ciphers="ECDHE-RSA-CHACHA20-POLY1305",
        ciphersuites="TLS_CHACHA20_POLY1305_SHA256",
    )
    tls13 = connect(policy, None, clientContext())
    assert tls13.client.get_cipher_name() == "TLS_CHACHA20_POLY1305_SHA256"
    tls12 = connect(policy, None, clientContext(maxVersion=SSL.TLS1_2_VERSION))
    assert tls12.client.get_cipher_name() == "ECDHE-RSA-CHACHA20-POLY1305"


def test_serverPreferenceChoosesTheCipher(pki: PKI) -> None:
    client = clientContext(
        maxVersion=SSL.TLS1_2_VERSION,
        ciphers=b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
    )
    ours = connect(serverTLS(pki.rsa), None, client)
    assert ours.client.get_cipher_name() == "ECDHE-RSA-AES256-GCM-SHA384"
    theirs = connect(serverTLS(pki.rsa, prefer_server_ciphers=False), None, client)
    assert theirs.client.get_cipher_name() == "ECDHE-RSA-AES128-GCM-SHA256"


def test_badCipherStringsAreProblems(pki: PKI) -> None:
    listener = listenerConfig(pki.rsa, ciphers="NOPE-NOTHING", ciphersuites="TLS_NOPE")
    policy, problems, _ = ServerTLS.fromConfig(listener, {})
    assert policy is None
    assert [(p.path, p.line, p.section, p.key) for p in problems] == [
        (INI, 7, "listener:web", "ciphers")
    ]
    assert "no cipher match" in problems[0].message


def test_problemsPointAtTheKeysLine(pki: PKI) -> None:
    listener = attrs.evolve(
        listenerConfig(pki.rsa, ciphers="NOPE-NOTHING"),
        location=Location(INI, 7, keys={"ciphers": 11}),
    )
    _, [problem], _ = ServerTLS.fromConfig(listener, {})
    assert str(problem).startswith(f"{INI}:11: [listener:web] ciphers: ")


def test_postQuantumGroupIsNegotiated(pki: PKI) -> None:
    handshake = connect(serverTLS(pki.ecdsa), "example.com", clientContext(pki.root))
    assert handshake.client.get_group_name() == "X25519MLKEM768"
    assert handshake.server.get_group_name() == "X25519MLKEM768"
    assert describe(handshake.server) == {
        "tls_version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "tls_group": "X25519MLKEM768",
        "alpn_selected": None,
        "client_cert": None,
    }


def test_describeBeforeTheHandshakeIsEmpty(pki: PKI) -> None:
    connection = SSL.Connection(serverTLS(pki.rsa).contextFor(None), None)
    assert set(describe(connection).values()) == {None}


# --- session resumption ---------------------------------------------------------------


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
@pytest.mark.parametrize(
    ("tickets", "cache"), [(True, False), (False, True), (True, True), (False, False)]
)
def test_resumption(pki: PKI, version: int, tickets: bool, cache: bool) -> None:
    policy = serverTLS(pki.ecdsa, session_tickets=tickets, session_cache=cache)
    client = clientContext(pki.root, maxVersion=version)
    first = connect(policy, "example.com", client)
    assert first.ok
    assert not reused(first.server)
    second = connect(policy, "example.com", client, session=first.client.get_session())
    assert second.ok
    assert reused(second.server) is (tickets or cache)
    assert reused(second.client) is (tickets or cache)


def test_sessionsDoNotCrossReloads(pki: PKI) -> None:
    client = clientContext(pki.root)
    first = connect(serverTLS(pki.ecdsa), "example.com", client)
    reloaded = serverTLS(pki.ecdsa)
    second = connect(
        reloaded, "example.com", client, session=first.client.get_session()
    )
    assert second.ok
    assert not reused(second.server)


def test_eachCallBuildsNewContexts(pki: PKI) -> None:
    assert serverTLS(pki.rsa).contextFor(None) is not serverTLS(pki.rsa).contextFor(
        None
    )


# --- ALPN -------------------------------------------------------------------------


def test_alpnFollowsTheServersPreference(pki: PKI) -> None:
    policy = serverTLS(pki.rsa, alpn=("h2", "http/1.1"))
    handshake = connect(policy, None, clientContext(alpn=[b"http/1.1", b"h2"]))
    assert handshake.client.get_alpn_proto_negotiated() == b"h2"
    assert describe(handshake.server)["alpn_selected"] == "h2"
    old = connect(policy, None, clientContext(alpn=[b"http/1.1"]))
    assert old.client.get_alpn_proto_negotiated() == b"http/1.1"


def test_alpnWithoutOverlapIsNoALPN(pki: PKI) -> None:
    policy = serverTLS(pki.rsa, alpn=("h2",))
    handshake = connect(policy, None, clientContext(alpn=[b"imap"]))
    assert handshake.ok
    assert handshake.client.get_alpn_proto_negotiated() == b""
    assert describe(handshake.server)["alpn_selected"] is None


def test_failingALPNCallbackFailsTheHandshake(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: _ALPNSelector, offered: Sequence[bytes]) -> bytes:
        raise IndexError("boom")

    monkeypatch.setattr(_ALPNSelector, "choose", broken)
    policy = serverTLS(pki.rsa, alpn=("h2",))
    handshake = connect(policy, None, clientContext(alpn=[b"h2"]))
    assert isinstance(handshake.serverError, TLSHandshakeError)
    assert str(handshake.serverError) == "ALPN selection failed: IndexError: boom"


def test_postgresListenersSelectPostgresqlALPN(pki: PKI) -> None:
    policy = serverTLS(pki.rsa, protocol="postgres")
    handshake = connect(policy, None, clientContext(alpn=[b"postgresql"]))
    assert handshake.client.get_alpn_proto_negotiated() == b"postgresql"


# --- client certificates ----------------------------------------------------------


def test_mutualTLSRequiresAClientCertificate(pki: PKI) -> None:
    policy = serverTLS(
        pki.rsa, client_ca=pki.files.ca(pki.clientCA), verify_client="on"
    )
    caSubject = x509.load_pem_x509_certificate(pki.clientCA.cert_pem.bytes()).subject
    offered: list[Any] = []

    def record(connection: SSL.Connection) -> None:
        offered.append(connection)

    anonymous = connect(policy, None, clientContext(), prepare=record)
    assert anonymous.serverError is not None
    assert "certificate" in reasons(anonymous.serverError)
    # The server told the client which CA it wants.
    [name] = offered[0].get_client_ca_list()
    assert name.der() == caSubject.public_bytes()

    signed = connect(policy, None, clientContext(certificate=pki.client))
    assert signed.ok
    assert (
        describe(signed.server)["client_cert"]
        == _leafOf(pki.client).subject.rfc4514_string()
    )
    assert "CN=client-1" in str(describe(signed.server)["client_cert"])

    stranger = pki.root.issue_cert("stranger.example")
    refused = connect(policy, None, clientContext(certificate=stranger))
    assert refused.serverError is not None


def test_optionalClientCertificate(pki: PKI) -> None:
    policy = serverTLS(
        pki.rsa, client_ca=pki.files.ca(pki.clientCA), verify_client="optional"
    )
    anonymous = connect(policy, None, clientContext())
    assert anonymous.ok
    assert describe(anonymous.server)["client_cert"] is None
    signed = connect(policy, None, clientContext(certificate=pki.client))
    assert signed.ok
    assert "CN=client-1" in str(describe(signed.server)["client_cert"])


def test_resumedSessionKeepsTheClientCertificate(pki: PKI) -> None:
    policy = serverTLS(
        pki.rsa,
        client_ca=pki.files.ca(pki.clientCA),
        verify_client="on",
        session_cache=True,
    )
    client = clientContext(certificate=pki.client, maxVersion=SSL.TLS1_2_VERSION)
    first = connect(policy, None, client)
    second = connect(policy, None, client, session=first.client.get_session())
    assert reused(second.server)
    assert "CN=client-1" in str(describe(second.server)["client_cert"])


# --- problems from the configuration -----------------------------------------------


def test_everyProblemIsReportedAtItsSection(pki: PKI) -> None:
    missing = pki.files.path("gone.crt")
    listener = listenerConfig(
        certificate=None,
        certificates=("broken", "ok", "undefined"),
        client_ca=pki.files.path("no-ca.pem"),
    )
    sections = {
        "broken": CertificateConfig(
            name="broken",
            certificate=missing,
            private_key=pki.rsa.key,
            location=Location(INI, 30),
        ),
        "ok": certificateSection("ok", pki.rsa, line=40),
    }
    policy, problems, warnings = ServerTLS.fromConfig(listener, sections)
    assert policy is None
    assert warnings == []
    assert [(p.line, p.section, p.key) for p in problems] == [
        (7, "listener:web", "certificates"),
        (30, "certificate:broken", "certificate"),
        (7, "listener:web", "client_ca"),
    ]
    assert all(isinstance(p, Problem) and p.path == INI for p in problems)
    assert missing in problems[1].message
    assert str(problems[1]).startswith(f"{INI}:30: [certificate:broken] certificate: ")


def test_keyProblemsPointAtPrivateKey(pki: PKI) -> None:
    listener = ListenerConfig(
        name="web",
        listen=("tcp:0",),
        upstream="app",
        certificate=pki.rsa.certificate,
        private_key=pki.ecdsa.key,
        location=Location(INI, 3),
    )
    policy, [problem], _ = ServerTLS.fromConfig(listener, {})
    assert policy is None
    assert (problem.line, problem.section, problem.key) == (
        3,
        "listener:web",
        "private_key",
    )


def test_warningsAreFormattedAsProblems(pki: PKI) -> None:
    key = pki.files.write("shared.key", pki.api.leaf.private_key_pem.bytes(), 0o644)
    section = CertificateConfig(
        name="api",
        certificate=pki.api.certificate,
        private_key=key,
        location=Location(INI, 12),
    )
    policy, problems, warnings = ServerTLS.fromConfig(
        listenerConfig(certificates=("api",)), {"api": section}
    )
    assert policy is not None
    assert problems == []
    [warning] = notChain(warnings)
    assert isinstance(warning, ConfigWarning)
    assert (warning.path, warning.line, warning.section, warning.key) == (
        INI,
        12,
        "certificate:api",
        "private_key",
    )
    assert str(warning).startswith(
        f"{INI}:12: [certificate:api] private_key: warning: {key}: "
    )


def test_noCertificateIsAProblem() -> None:
    policy, [problem], _ = ServerTLS.fromConfig(listenerConfig(), {})
    assert policy is None
    assert "needs certificate and private_key, or certificates" in problem.message


# --- upstreams --------------------------------------------------------------------


def upstreamConfig(host: str, **settings: Any) -> UpstreamConfig:
    settings.setdefault("tls", True)
    return UpstreamConfig(
        name="app",
        servers=(ServerConfig(host=host, port=443),),
        location=Location(INI, 50),
        **settings,
    )


def upstreamTLS(upstream: UpstreamConfig) -> UpstreamTLS:
    policy, problems, _ = UpstreamTLS.fromConfig(upstream)
    assert problems == []
    assert policy is not None
    return policy


def backend(leaf: trustme.LeafCert) -> SSL.Connection:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    leaf.configure_cert(context)
    connection = SSL.Connection(context, None)
    connection.set_accept_state()
    return connection


def test_upstreamVerifiesTheRightName(pki: PKI) -> None:
    upstream = upstreamConfig("api.example.com", tls_ca=pki.files.ca(pki.root))
    policy = upstreamTLS(upstream)
    server = upstream.servers[0]
    assert policy.serverName(server) == "api.example.com"
    handshake = shake(policy.connectionFor(server), backend(pki.api.leaf))
    assert handshake.ok
    assert handshake.server.get_servername() == b"api.example.com"
    policy.verifyPeer(handshake.client, "api.example.com")
    assert policy.verify(handshake.client, server) is None
    assert handshake.client.get_protocol_version_name() == "TLSv1.3"


def test_upstreamWithTheWrongNameFails(pki: PKI) -> None:
    upstream = upstreamConfig(
        "10.1.2.3", tls_ca=pki.files.ca(pki.root), tls_server_name="db.example.com"
    )
    policy = upstreamTLS(upstream)
    handshake = shake(policy.connectionFor(upstream.servers[0]), backend(pki.api.leaf))
    error = handshake.clientError
    assert isinstance(error, UpstreamVerificationError)
    assert isinstance(error, SSL.Error)
    assert str(error) == (
        "the upstream certificate is not for 'db.example.com'"
        " (it is for api.example.com)"
    )
    # After a handshake that did not check the name, verifyPeer does.
    client = SSL.Connection(policy.contextFor(), None)
    client.set_connect_state()
    assert shake(client, backend(pki.api.leaf)).ok
    with pytest.raises(UpstreamVerificationError, match=r"not for 'db\.example\.com'"):
        policy.verifyPeer(client, "db.example.com")
    assert "not for 'db.example.com'" in str(policy.verify(client, upstream.servers[0]))


def test_upstreamFromAnUntrustedCAFails(pki: PKI) -> None:
    upstream = upstreamConfig("api.example.com", tls_ca=pki.files.ca(pki.clientCA))
    policy = upstreamTLS(upstream)
    handshake = shake(policy.connectionFor(upstream.servers[0]), backend(pki.api.leaf))
    error = handshake.clientError
    assert isinstance(error, UpstreamVerificationError)
    assert str(error).startswith(
        "the upstream certificate is not trusted: unable to get local issuer"
        " certificate (at depth 0: "
    )


def test_upstreamIPAddressIsVerifiedAgainstIPSANs(pki: PKI) -> None:
    leaf = pki.root.issue_cert("127.0.0.1", "::1")
    ca = pki.files.ca(pki.root)
    for host in ("127.0.0.1", "::1"):
        upstream = upstreamConfig(host, tls_ca=ca)
        policy = upstreamTLS(upstream)
        handshake = shake(policy.connectionFor(upstream.servers[0]), backend(leaf))
        assert handshake.ok
        assert handshake.server.get_servername() is None  # no IP literal in SNI
        assert policy.verify(handshake.client, upstream.servers[0]) is None
    wrong = upstreamConfig("127.0.0.2", tls_ca=ca)
    handshake = shake(upstreamTLS(wrong).connectionFor(wrong.servers[0]), backend(leaf))
    assert isinstance(handshake.clientError, UpstreamVerificationError)
    assert "not for '127.0.0.2'" in str(handshake.clientError)


def test_upstreamWithoutVerification(pki: PKI) -> None:
    upstream = upstreamConfig("api.example.com", tls_verify=False)
    policy = upstreamTLS(upstream)
    stranger = pki.clientCA.issue_cert("elsewhere.example")
    handshake = shake(policy.connectionFor(upstream.servers[0]), backend(stranger))
    assert handshake.ok
    assert policy.verify(handshake.client, upstream.servers[0]) is None


def test_upstreamRefusesOldServers(pki: PKI) -> None:
    upstream = upstreamConfig("api.example.com", tls_ca=pki.files.ca(pki.root))
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    pki.api.leaf.configure_cert(context)
    context.set_min_proto_version(SSL.TLS1_VERSION)
    context.set_max_proto_version(SSL.TLS1_1_VERSION)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    old = SSL.Connection(context, None)
    old.set_accept_state()
    handshake = shake(upstreamTLS(upstream).connectionFor(upstream.servers[0]), old)
    assert not handshake.ok


def test_upstreamProblems(pki: PKI) -> None:
    missing = pki.files.path("no-ca.pem")
    policy, [problem], _ = UpstreamTLS.fromConfig(
        upstreamConfig("api.example.com", tls_ca=missing)
    )
    assert policy is None
    assert (problem.line, problem.section, problem.key) == (
        50,
        "upstream:app",
        "tls_ca",
    )
    assert missing in problem.message
    unix = UpstreamConfig(
        name="app",
        servers=(ServerConfig(host=None, port=None, path="/run/app.sock"),),
        tls=True,
        location=Location(INI, 50),
    )
    policy, [problem], _ = UpstreamTLS.fromConfig(unix)
    assert problem.key == "tls_server_name"
    assert UpstreamTLS.fromConfig(upstreamConfig("a.example", tls=False)) == (
        None,
        [],
        [],
    )


def test_loadedCertificateIsFrozen(pki: PKI) -> None:
    loaded = loadCertificate(pki.api.certificate, pki.api.key)
    assert isinstance(loaded, LoadedCertificate)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        loaded.names = ()  # type: ignore[misc]


# --- warnings about settings that work but are likely wrong ---------------------


def test_weakCiphersAreTheNonAEADSuitesAStringEnables() -> None:
    weak = weakCiphers("HIGH:!aNULL:!MD5")
    assert "ECDHE-ECDSA-AES256-SHA" in weak
    assert all("GCM" not in name and "CHACHA20" not in name for name in weak)
    assert weakCiphers(DEFAULT_CIPHERS) == []
    assert weakCiphers("ECDHE+AESGCM:ECDHE+CHACHA20") == []
    assert weakCiphers("NOT-A-CIPHER") == []


def test_nginxClassicCipherStringIsAWarningAtCiphers(pki: PKI) -> None:
    location = Location(INI, 7, {"ciphers": 11})
    listener = attrs.evolve(
        listenerConfig(pki.rsa, ciphers="HIGH:!aNULL:!MD5"), location=location
    )
    policy, problems, warnings = ServerTLS.fromConfig(listener, {})
    assert policy is not None
    assert problems == []
    [warning] = warnings
    assert str(warning).startswith(
        f"{INI}:11: [listener:web] ciphers: warning: 'HIGH:!aNULL:!MD5' allows"
        " CBC or SHA-1 cipher suites"
    )
    # Without TLS 1.2 the TLS 1.2 cipher string is never used.
    tls13 = attrs.evolve(listener, protocols=("TLSv1.3",))
    assert ServerTLS.fromConfig(tls13, {})[2] == []


def test_h2OnATerminatingListenerIsAWarningAtAlpn(pki: PKI) -> None:
    location = Location(INI, 7, {"alpn": 12})
    listener = attrs.evolve(
        listenerConfig(pki.rsa, alpn=("h2", "http/1.1")), location=location
    )
    [warning] = ServerTLS.fromConfig(listener, {})[2]
    assert str(warning).startswith(f"{INI}:12: [listener:web] alpn: warning: ")
    assert "HTTP/1.1" in str(warning)
    assert ServerTLS.fromConfig(attrs.evolve(listener, alpn=("http/1.1",)), {})[2] == []
    # A passthrough listener whose routes never terminate offers nothing.
    passthrough = attrs.evolve(listener, mode="passthrough")
    assert ServerTLS.fromConfig(passthrough, {})[2] == []
