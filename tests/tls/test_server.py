"""
A listener's termination policy (L{gateway.tls.server}): the certificate
chosen by server name, new contexts per build, and every problem of the
configuration reported at its section and key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import (
    CertificateConfig,
    ConfigError,
    ConfigWarning,
    ListenerConfig,
    Location,
    Problem,
)
from gateway.run.loading import load_config_text
from gateway.tls.server import ServerTLS
from tests.tls.fixtures import (
    INI,
    PKI,
    certificateSection,
    clientContext,
    connect,
    listenerConfig,
    notChain,
    pki,
    reused,
    serverTLS,
)

__all__ = ["pki"]  # the shared fixture, re-exported for pytest


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
    # The undefined name is the INI loader's to report (see below).
    assert [(p.line, p.section, p.key) for p in problems] == [
        (30, "certificate:broken", "certificate"),
        (7, "listener:web", "client_ca"),
    ]
    assert all(isinstance(p, Problem) and p.path == INI for p in problems)
    assert missing in problems[0].message
    assert str(problems[0]).startswith(f"{INI}:30: [certificate:broken] certificate: ")


def test_anUndefinedCertificateIsReportedOnceWithTheFilesProblems(
    pki: PKI, tmp_path: Path
) -> None:
    """
    A listener naming a certificate section that does not exist is told so
    once, by the INI loader, at its C{certificates} line; the files of the
    certificates it does name are checked in the same run.
    """
    text = (
        "[listener:web]\nlisten = tcp:1\nmode = terminate\nupstream = app\n"
        "certificates = broken, undefined\n"
        "[certificate:broken]\n"
        f"certificate = {tmp_path / 'gone.crt'}\n"
        f"private_key = {pki.rsa.key}\n"
        "[upstream:app]\nservers = 127.0.0.1:1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "gw.ini")
    assert [(p.line, p.section, p.key) for p in caught.value.problems] == [
        (5, "listener:web", "certificates"),
        (7, "certificate:broken", "certificate"),
    ]
    assert str(caught.value.problems[0]) == (
        "gw.ini:5: [listener:web] certificates: certificate 'undefined' is not"
        " defined (no [certificate:undefined] section)"
    )


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
