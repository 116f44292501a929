"""
Re-encryption to upstreams (L{gateway.tls.upstream}): chain and name
verification with service-identity, in real in-memory handshakes.
"""

from __future__ import annotations

from typing import Any

import pytest
import trustme
from OpenSSL import SSL

from gateway.config import (
    Location,
    ServerConfig,
    UpstreamConfig,
)
from gateway.tls.errors import (
    UpstreamVerificationError,
)
from gateway.tls.upstream import UpstreamTLS
from tests.tls.fixtures import (
    INI,
    PKI,
    pki,
    shake,
)

__all__ = ["pki"]  # the shared fixture, re-exported for pytest


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
