"""
Server contexts (L{gateway.tls.servercontext}): certificates grouped by
names and key type, ALPN, OCSP stapling and client certificates, driven by
real handshakes between pyOpenSSL connections on memory BIOs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL

from gateway.tls.errors import (
    TLSHandshakeError,
)
from gateway.tls.handshake import describe
from gateway.tls.server import ServerTLS
from gateway.tls.servercontext import _ALPNSelector, _Stapler
from tests.tls.fixtures import (
    ECDSA_SIGALGS,
    INI,
    PKI,
    RSA_SIGALGS,
    certificateSection,
    clientContext,
    connect,
    leafOf,
    listenerConfig,
    notChain,
    ocspResponse,
    pki,
    reasons,
    reused,
    serverTLS,
)

__all__ = ["pki"]  # the shared fixture, re-exported for pytest


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
        == leafOf(pki.client).subject.rfc4514_string()
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
