"""
A listener's termination settings (L{gateway.tls.settings}): versions,
ciphers, session resumption, ALPN, key exchange groups, the session ticket
lifetime, early data (never accepted), client CRLs, and the warnings about
settings that work but are likely wrong.  Handshakes run in memory between
pyOpenSSL connections (and Python's C{ssl}, for what only it shows: the
ticket lifetime hint), with trustme certificates and CRLs built with
C{cryptography}.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from gateway.config import (
    ConfigError,
    ConfigWarning,
    ListenerConfig,
    Location,
    Problem,
)
from gateway.run.loading import load_config, load_config_text
from gateway.tls.errors import (
    TLSHandshakeError,
)
from gateway.tls.handshake import describe
from gateway.tls.server import ServerTLS
from gateway.tls.settings import DEFAULT_CIPHERS, unknownGroups, weakCiphers
from tests.tls.fixtures import (
    INI,
    NOW,
    PKI,
    clientContext,
    connect,
    listenerConfig,
    pki,
    reasons,
    reused,
    serverTLS,
)

__all__ = ["pki"]  # the shared fixture, re-exported for pytest


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


def test_postgresListenersSelectPostgresqlALPN(pki: PKI) -> None:
    policy = serverTLS(pki.rsa, protocol="postgres")
    handshake = connect(policy, None, clientContext(alpn=[b"postgresql"]))
    assert handshake.client.get_alpn_proto_negotiated() == b"postgresql"


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


# --- groups, ticket lifetime, early data, client CRLs ----------------------------


DAY = datetime.timedelta(days=1)


def withGroups(context: SSL.Context, groups: bytes) -> SSL.Context:
    # pyOpenSSL has no call for a client's groups either.
    assert _lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
    return context


# --- groups ---------------------------------------------------------------------


def test_groupsLimitWhatIsNegotiated(pki: PKI) -> None:
    policy = serverTLS(pki.ecdsa, groups=("secp384r1", "X25519"))
    offered = connect(
        policy, "example.com", withGroups(clientContext(pki.root), b"secp384r1")
    )
    assert offered.ok
    assert offered.server.get_group_name() == "secp384r1"

    for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
        other = withGroups(
            clientContext(pki.root, maxVersion=version), b"secp256r1:X448"
        )
        refused = connect(policy, "example.com", other)
        assert refused.serverError is not None, version


def test_groupsPreferenceIsTheServers(pki: PKI) -> None:
    """
    A TLS 1.2 client (no key shares to bias the choice) offering both gets
    the server's first.
    """
    policy = serverTLS(pki.ecdsa, groups=("secp384r1", "secp256r1"))
    client = withGroups(
        clientContext(pki.root, maxVersion=SSL.TLS1_2_VERSION), b"secp256r1:secp384r1"
    )
    handshake = connect(policy, "example.com", client)
    assert handshake.ok
    assert handshake.server.get_group_name() == "secp384r1"


def test_defaultGroupsStayOpenSSLs(pki: PKI) -> None:
    handshake = connect(serverTLS(pki.ecdsa), "example.com", clientContext(pki.root))
    assert handshake.server.get_group_name() == "X25519MLKEM768"


def test_unknownGroupIsAProblemNamingIt(pki: PKI) -> None:
    assert unknownGroups(["X25519", "X25519MLKEM768", "P-256", "ffdhe2048"]) == []
    assert unknownGroups(["X25519", "bogus", "secp256k9"]) == ["bogus", "secp256k9"]
    listener = ListenerConfig(
        name="web",
        listen=("tcp:0",),
        mode="terminate",
        upstream="app",
        certificate=pki.rsa.certificate,
        private_key=pki.rsa.key,
        groups=("X25519", "bogus"),
        location=Location(INI, 7, keys={"groups": 12}),
    )
    policy, [problem], _ = ServerTLS.fromConfig(listener, {})
    assert policy is None
    assert str(problem).startswith(
        f"{INI}:12: [listener:web] groups: bogus: not a key exchange group"
    ), str(problem)


def listenerText(extra: str) -> str:
    return (
        "[listener:web]\nlisten = tcp:1\nmode = terminate\nupstream = app\n"
        "certificate = c.pem\nprivate_key = k.pem\n"
        f"{extra}"
        "[upstream:app]\nservers = 127.0.0.1:1\n"
    )


def loadError(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "gw.ini", checkFiles=False)
    return str(caught.value)


def test_groupsAreRead() -> None:
    config = load_config_text(
        listenerText("groups = X25519MLKEM768 : X25519:secp256r1\n"),
        "gw.ini",
        checkFiles=False,
    )
    assert config.listeners[0].groups == ("X25519MLKEM768", "X25519", "secp256r1")
    default = load_config_text(listenerText(""), "gw.ini", checkFiles=False)
    assert default.listeners[0].groups == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "groups: is empty"),
        ("X25519::secp256r1", "groups: '' is not a group name"),
        ("X25519, secp256r1", "groups: 'X25519, secp256r1' is not a group name"),
        ("X25519:x25519", "groups: x25519 is listed twice"),
    ],
)
def test_badGroupsAreProblemsAtTheirLine(value: str, message: str) -> None:
    assert f"gw.ini:7: [listener:web] {message}" in loadError(
        listenerText(f"groups = {value}\n")
    )


@given(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), min_size=1))
def test_groupListsRoundTrip(names: list[str]) -> None:
    unique = list({name.lower(): name for name in names}.values())
    text = listenerText(f"groups = {':'.join(unique)}\n")
    config = load_config_text(text, "gw.ini", checkFiles=False)
    assert config.listeners[0].groups == tuple(unique)


# --- session ticket lifetime --------------------------------------------------------


def test_ticketLifetimeIsRead() -> None:
    def lifetime(extra: str) -> int:
        config = load_config_text(listenerText(extra), "gw.ini", checkFiles=False)
        return config.listeners[0].session_ticket_lifetime

    assert lifetime("") == 300
    assert lifetime("session_ticket_lifetime = 90s\n") == 90
    assert lifetime("session_ticket_lifetime = 1h\n") == 3600
    assert lifetime("session_ticket_lifetime = 168h\n") == 7 * 86400


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "is too short"),
        ("169h", "is too long: TLS 1.3 tickets live at most 168h (7 days)"),
        ("1.5s", "is not a whole number of seconds"),
        ("soon", "session_ticket_lifetime: "),
    ],
)
def test_badTicketLifetimes(value: str, message: str) -> None:
    text = loadError(listenerText(f"session_ticket_lifetime = {value}\n"))
    assert "gw.ini:7: [listener:web] session_ticket_lifetime: " in text, text
    assert message in text, text


def pythonHandshake(
    context: SSL.Context, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLObject:
    """
    A Python C{ssl} client against a pyOpenSSL server, on memory BIOs; the
    client reads until the TLS 1.3 tickets are in.
    """
    server = SSL.Connection(context, None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    python = client.wrap_bio(
        incoming, outgoing, server_hostname="example.com", session=session
    )
    done = False
    for _ in range(20):
        if not done:
            try:
                python.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                pass
        if outgoing.pending:
            server.bio_write(outgoing.read())
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
        try:
            while True:
                incoming.write(server.bio_read(65536))
        except SSL.WantReadError:
            pass
        if done:
            with contextlib.suppress(ssl.SSLWantReadError):
                python.read(1)
            if python.session is not None and python.session.has_ticket:
                break
    assert done
    return python


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("lifetime", [None, 123])
def test_ticketLifetimeHintIsTheSetting(
    pki: PKI, tmp_path: Path, version: str, lifetime: int | None
) -> None:
    settings: dict[str, Any] = (
        {} if lifetime is None else {"session_ticket_lifetime": lifetime}
    )
    policy = serverTLS(pki.ecdsa, **settings)
    context = policy.contextFor("example.com")
    assert context.get_timeout() == (lifetime or 300)
    client = ssl.create_default_context(cafile=str(writeRoot(pki, tmp_path)))
    client.maximum_version = getattr(ssl.TLSVersion, version)
    python = pythonHandshake(context, client)
    session = python.session
    assert session is not None
    assert session.has_ticket
    assert session.ticket_lifetime_hint == (lifetime or 300)


def writeRoot(pki: PKI, tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(pki.root.cert_pem.bytes())
    return path


# --- early data -----------------------------------------------------------------------


def test_ticketsAnnounceNoEarlyData(pki: PKI) -> None:
    """
    A TLS 1.3 ticket carries the most early data the server takes: zero,
    so a client never sends any.
    """
    handshake = connect(serverTLS(pki.ecdsa), "example.com", clientContext(pki.root))
    session = handshake.client.get_session()
    assert session is not None
    assert _lib.SSL_SESSION_get_max_early_data(session._session) == 0


# --- client CRLs --------------------------------------------------------------------------


def caKey(ca: trustme.CA) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # trustme's default
    return key


def caCertificate(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


def leafSerial(leaf: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


def makeCRL(
    ca: trustme.CA,
    revoked: Sequence[trustme.LeafCert] = (),
    *,
    lastUpdate: datetime.datetime = NOW - DAY,
    nextUpdate: datetime.datetime = NOW + 7 * DAY,
    signer: trustme.CA | None = None,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(caCertificate(ca).subject)
        .last_update(lastUpdate)
        .next_update(nextUpdate)
    )
    for leaf in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leafSerial(leaf))
            .revocation_date(NOW - DAY)
            .build()
        )
    return builder.sign(caKey(signer or ca), hashes.SHA256())


def writeCRL(
    pki: PKI, crl: x509.CertificateRevocationList, encoding: str = "PEM"
) -> str:
    return pki.files.write(
        f"clients.{encoding.lower()}.crl",
        crl.public_bytes(getattr(serialization.Encoding, encoding)),
    )


def crlPolicy(pki: PKI, *paths: str, **settings: Any) -> ServerTLS:
    return serverTLS(
        pki.rsa,
        client_ca=pki.files.ca(pki.clientCA),
        verify_client="on",
        client_crl=paths,
        **settings,
    )


@pytest.mark.parametrize("encoding", ["PEM", "DER"])
def test_revokedClientIsRefusedAndOthersPass(pki: PKI, encoding: str) -> None:
    revokedLeaf = pki.clientCA.issue_cert("revoked.example", common_name="revoked")
    policy = crlPolicy(
        pki, writeCRL(pki, makeCRL(pki.clientCA, [revokedLeaf]), encoding)
    )
    for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
        good = connect(
            policy, None, clientContext(certificate=pki.client, maxVersion=version)
        )
        assert good.ok, (good.serverError, good.clientError)
        refused = connect(
            policy, None, clientContext(certificate=revokedLeaf, maxVersion=version)
        )
        assert isinstance(refused.serverError, TLSHandshakeError), refused.serverError
        assert str(refused.serverError).startswith(
            "the client certificate is refused: certificate revoked"
            " (at depth 0: CN=revoked,"
        ), refused.serverError


def test_severalCRLFilesAndBlocksAreAllUsed(pki: PKI) -> None:
    """
    A PEM file may hold several CRLs; several files may be listed.  Each
    CA's clients are checked against its own.
    """
    otherCA = trustme.CA()
    revokedHere = pki.clientCA.issue_cert("a.example", common_name="a")
    revokedThere = otherCA.issue_cert("b.example", common_name="b")
    goodThere = otherCA.issue_cert("c.example", common_name="c")
    bundle = pki.files.write(
        "cas.pem", pki.clientCA.cert_pem.bytes() + otherCA.cert_pem.bytes()
    )
    both = pki.files.write(
        "both.crl",
        makeCRL(pki.clientCA, [revokedHere]).public_bytes(serialization.Encoding.PEM)
        + makeCRL(otherCA, [revokedThere]).public_bytes(serialization.Encoding.PEM),
    )
    policy = serverTLS(
        pki.rsa, client_ca=bundle, verify_client="on", client_crl=(both,)
    )
    for leaf, ok in [
        (pki.client, True),
        (goodThere, True),
        (revokedHere, False),
        (revokedThere, False),
    ]:
        handshake = connect(policy, None, clientContext(certificate=leaf))
        assert handshake.ok is ok, leaf
    split = serverTLS(
        pki.rsa,
        client_ca=bundle,
        verify_client="optional",
        client_crl=(
            writeCRL(pki, makeCRL(pki.clientCA, [revokedHere])),
            writeCRL(pki, makeCRL(otherCA, [revokedThere]), "DER"),
        ),
    )
    assert connect(split, None, clientContext(certificate=goodThere)).ok
    assert not connect(split, None, clientContext(certificate=revokedThere)).ok
    assert connect(split, None, clientContext()).ok  # optional: no certificate


def test_untrustedClientReasonSaysWhy(pki: PKI) -> None:
    stranger = trustme.CA().issue_cert("s.example", common_name="stranger")
    policy = serverTLS(
        pki.rsa, client_ca=pki.files.ca(pki.clientCA), verify_client="on"
    )
    refused = connect(policy, None, clientContext(certificate=stranger))
    assert isinstance(refused.serverError, TLSHandshakeError)
    assert "the client certificate is refused: unable to get local issuer" in str(
        refused.serverError
    )


def fromConfig(
    pki: PKI, *paths: str
) -> tuple[ServerTLS | None, list[Problem], list[ConfigWarning]]:
    listener = ListenerConfig(
        name="web",
        listen=("tcp:0",),
        mode="terminate",
        upstream="app",
        certificate=pki.rsa.certificate,
        private_key=pki.rsa.key,
        client_ca=pki.files.ca(pki.clientCA),
        verify_client="on",
        client_crl=paths,
        location=Location(INI, 7, keys={"client_crl": 15}),
    )
    return ServerTLS.fromConfig(listener, {})


def test_expiredCRLIsAWarningAtItsKey(pki: PKI) -> None:
    expired = writeCRL(
        pki, makeCRL(pki.clientCA, lastUpdate=NOW - 9 * DAY, nextUpdate=NOW - DAY)
    )
    policy, problems, warnings = fromConfig(pki, expired)
    assert problems == []
    assert policy is not None
    [warning] = warnings
    assert re.match(
        rf"{re.escape(f'{INI}:15: [listener:web] client_crl: ')}"
        rf"(warning: )?{re.escape(expired)}: the CRL of ",
        str(warning),
    ), warning
    assert "expired on" in str(warning)
    # OpenSSL then refuses the clients it covers: fail closed.
    refused = connect(policy, None, clientContext(certificate=pki.client))
    assert "CRL has expired" in str(refused.serverError)

    future = writeCRL(pki, makeCRL(pki.clientCA, lastUpdate=NOW + DAY))
    _, problems, [warning] = fromConfig(pki, future)
    assert problems == []
    assert "is not valid yet" in str(warning)


def test_badCRLsAreProblemsAtTheirKey(pki: PKI, tmp_path: Path) -> None:
    stranger = trustme.CA()
    missing = str(tmp_path / "missing.crl")
    cases = {
        missing: f"cannot read {missing}",
        pki.files.write("garbage.crl", b"hello"): "no CRL found",
        pki.files.write(
            "corrupt.crl", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
        ): "is not a valid X.509 CRL",
        writeCRL(pki, makeCRL(stranger)): "which is not a client_ca certificate",
        # The client CA's name, a stranger's signature.
        writeCRL(
            pki, makeCRL(pki.clientCA, signer=stranger)
        ): "signature does not verify",
    }
    for path, message in cases.items():
        policy, [problem], _ = fromConfig(pki, path)
        assert policy is None
        text = str(problem)
        assert text.startswith(f"{INI}:15: [listener:web] client_crl: "), text
        assert message in text, text


def test_clientCRLNeedsVerifyClient() -> None:
    text = loadError(listenerText("client_crl = a.crl, b.crl\n"))
    assert "gw.ini:7: [listener:web] client_crl: client_crl checks client" in text
    config = load_config_text(
        listenerText(
            "client_ca = ca.pem\nverify_client = on\nclient_crl = a.crl, sub/b.crl\n"
        ),
        "/etc/gw/gw.ini",
        checkFiles=False,
    )
    assert config.listeners[0].client_crl == ("/etc/gw/a.crl", "/etc/gw/sub/b.crl")


def test_everyBadKeyIsReportedAtOnce(pki: PKI, tmp_path: Path) -> None:
    """
    An unknown group, an unreadable client_ca and a missing CRL: three
    problems, each at its own key, from one load.
    """
    listener = ListenerConfig(
        name="web",
        listen=("tcp:0",),
        mode="terminate",
        upstream="app",
        certificate=pki.rsa.certificate,
        private_key=pki.rsa.key,
        client_ca=str(tmp_path / "no-ca.pem"),
        verify_client="on",
        client_crl=(str(tmp_path / "no.crl"),),
        groups=("X25519", "bogus"),
        location=Location(
            INI, 7, keys={"groups": 12, "client_ca": 13, "client_crl": 14}
        ),
    )
    policy, problems, _ = ServerTLS.fromConfig(listener, {})
    assert policy is None
    assert sorted((p.line, p.key) for p in problems) == [
        (12, "groups"),
        (13, "client_ca"),
        (14, "client_crl"),
    ], problems
    assert "cannot read" in next(p.message for p in problems if p.key == "client_crl")


def test_groupsOfAPassthroughListenerAreCheckedToo(tmp_path: Path) -> None:
    path = tmp_path / "gw.ini"
    path.write_text(
        "[listener:web]\nlisten = tcp:0\nupstream = app\ngroups = X25519:nope\n"
        "[upstream:app]\nservers = 127.0.0.1:1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}:4: [listener:web] groups: nope: not a key exchange group" in str(
        caught.value
    )
