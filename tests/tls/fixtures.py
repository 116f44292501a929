"""
What the tests of L{gateway.tls} share: a PKI made with trustme and written
to files as a configuration names them, configuration objects, and real
handshakes between pyOpenSSL connections on memory BIOs (no sockets).
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
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from gateway.config import (
    CertificateConfig,
    ListenerConfig,
    Location,
)
from gateway.tls.server import ServerTLS

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
        return leafOf(self.leaf).subject


def leafOf(leaf: trustme.LeafCert) -> x509.Certificate:
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


def notChain(warnings: Iterable[Any]) -> list[Any]:
    """
    The warnings other than the missing-chain one that every leaf issued
    straight by a throwaway root (not a trusted one) gets.
    """
    return [w for w in warnings if "holds only the server's certificate" not in str(w)]


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
            cert=leafOf(leaf),
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
