"""
ACME without a network: the configuration keys, the challenge certificate
and its answer, the pending state and the swap of L{ServerTLS}, the state
directory, renewal times and the expiry gauge's values.

The protocol itself runs against a real ACME server in
C{tests/integration/test_acme.py}.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from pathlib import Path

import attrs
import pytest
import trustme
from cryptography import x509
from OpenSSL import SSL

from gateway.acme.issuer import Issuer, challengeCertificate, newKeyPEM
from gateway.acme.manager import ChallengeResponder, renewalTime, retryDelay
from gateway.acme.state import Locked, StateDirectory, writePrivate
from gateway.config import (
    DEFAULT_RENEW_BEFORE,
    AcmeSettings,
    CertificateConfig,
    ConfigError,
    GatewayConfig,
    Location,
)
from gateway.connection.challenge import offersOnlyAcmeTLS
from gateway.run.loading import load_config_text
from gateway.tls.certificates import LoadedCertificate, loadCertificate
from gateway.tls.contexts import servedCertificates
from gateway.tls.server import CertificatePending, ServerTLS
from tests.helpers import frameworksImportedBy
from tests.tls.fixtures import (
    INI,
    PKI,
    certificateSection,
    clientContext,
    connect,
    listenerConfig,
    pki,
    shake,
)

__all__ = ["pki"]  # the fixture, shared with tests/tls

LISTENER = """
[listener:web]
listen = tcp:0
mode = terminate
upstream = app
certificates = site

[upstream:app]
servers = 127.0.0.1:8080
"""

ACME = """
[acme]
directory = https://acme.example.test/directory
state_dir = acme-state
"""

SITE = """
[certificate:site]
acme = on
names = example.com, www.example.com
"""


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, str(tmp_path / "gw.ini"), checkFiles=False)
    return [str(p).removeprefix(str(tmp_path) + "/") for p in caught.value.problems]


# --- configuration ----------------------------------------------------------------


def test_acmeSectionAndCertificate(tmp_path: Path) -> None:
    config = load_config_text(
        ACME + "email = mailto:ops@example.com\nrenew_before = 20d\n" + SITE + LISTENER,
        str(tmp_path / "gw.ini"),
    )
    assert config.acme is not None
    assert config.acme.directory == "https://acme.example.test/directory"
    assert config.acme.state_dir == str(tmp_path / "acme-state")
    assert config.acme.email == "ops@example.com"
    assert config.acme.renew_before == 20 * 86400
    assert config.acme.ca_bundle is None
    site = config.certificates["site"]
    assert site.acme
    assert site.names == ("example.com", "www.example.com")
    assert site.certificate is None


def test_renewBeforeDefaultsTo30Days(tmp_path: Path) -> None:
    config = load_config_text(ACME + SITE + LISTENER, str(tmp_path / "gw.ini"))
    assert config.acme is not None
    assert config.acme.renew_before == DEFAULT_RENEW_BEFORE == 30 * 86400


def test_everyAcmeProblemAtOnce(tmp_path: Path) -> None:
    text = """
[acme]
directory = ftp://acme.example.test
email = nobody
renew_before = soon

[certificate:site]
acme = on
names = *.example.com
certificate = site.pem

[certificate:other]
acme = maybe
"""
    assert problems(text + LISTENER.replace("site", "other"), tmp_path) == [
        "gw.ini:2: [acme] state_dir: required key is missing",
        "gw.ini:3: [acme] directory: 'ftp://acme.example.test' is not an ACME"
        " directory URL (like https://acme-v02.api.letsencrypt.org/directory)",
        "gw.ini:4: [acme] email: 'nobody' is not an email address",
        "gw.ini:5: [acme] renew_before: 'soon' is not a duration"
        " (use 500ms, 5s, 10m, 1h or seconds)",
        "gw.ini:9: [certificate:site] names: '*.example.com': tls-alpn-01"
        " cannot validate wildcard names: list each name",
        "gw.ini:10: [certificate:site] certificate: acme = on: the certificate"
        " and its key come from the ACME server, remove this key",
        "gw.ini:13: [certificate:other] acme: 'maybe' is not a boolean (use on/off,"
        " yes/no, true/false or 1/0)",
    ]


def test_acmeCertificateNeedsNamesAndAnAcmeSection(tmp_path: Path) -> None:
    text = "[certificate:site]\nacme = on\n" + LISTENER
    assert problems(text, tmp_path) == [
        "gw.ini:1: [certificate:site] names: required key is missing"
        " (acme = on issues a certificate for names)",
        "gw.ini:2: [certificate:site] acme: acme = on needs an [acme] section"
        " (directory, state_dir)",
    ]


def test_namesWithoutAcmeAndFilesStillRequired(tmp_path: Path) -> None:
    text = "[certificate:site]\nnames = example.com\n" + LISTENER
    assert problems(text, tmp_path) == [
        "gw.ini:1: [certificate:site] certificate: required key is missing",
        "gw.ini:1: [certificate:site] private_key: required key is missing",
        "gw.ini:2: [certificate:site] names: names is for acme = on"
        " (the files name themselves)",
    ]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("192.0.2.1", "'192.0.2.1': an IP address, not a DNS name"),
        ("localhost", "'localhost' is not a DNS name (like www.example.com)"),
        (
            "a_b.example.com",
            "'a_b.example.com' is not a DNS name (like www.example.com)",
        ),
        ("a.example.com, A.example.com.", "'A.example.com.' is listed twice"),
    ],
)
def test_badNames(tmp_path: Path, names: str, message: str) -> None:
    text = ACME + f"[certificate:site]\nacme = on\nnames = {names}\n" + LISTENER
    assert problems(text, tmp_path) == [
        f"gw.ini:7: [certificate:site] names: {message}"
    ]


def test_aNameBelongsToOneAcmeCertificate(tmp_path: Path) -> None:
    text = (
        ACME
        + SITE
        + "\n[certificate:again]\nacme = on\nnames = www.example.com\n"
        + LISTENER
    )
    assert problems(text, tmp_path) == [
        "gw.ini:12: [certificate:again] names: 'www.example.com' is already issued"
        " by ACME for [certificate:site]",
    ]


def test_checkReportsAnUnusableStateDirAndCABundle(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "empty.pem").write_text("")
    text = ACME.replace("acme-state", "file/acme-state") + "ca_bundle = empty.pem\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text + SITE + LISTENER, str(tmp_path / "gw.ini"))
    assert [
        str(p).removeprefix(str(tmp_path) + "/") for p in caught.value.problems
    ] == [
        f"gw.ini:4: [acme] state_dir: {tmp_path}/file is not a folder",
        f"gw.ini:5: [acme] ca_bundle: {tmp_path}/empty.pem: no certificate found:"
        " expected PEM (-----BEGIN CERTIFICATE-----)",
    ]


def test_checkAcceptsAPendingCertificate(tmp_path: Path) -> None:
    """
    C{check} (which loads every file) has nothing to load for an ACME
    certificate: it is pending until the running gateway has it issued.
    """
    config = load_config_text(ACME + SITE + LISTENER, str(tmp_path / "gw.ini"))
    assert config.certificates["site"].acme


# --- the challenge ----------------------------------------------------------------


def test_challengeCertificateFollowsRFC8737() -> None:
    pem = challengeCertificate("example.com", "token.thumbprint")
    certificate = x509.load_pem_x509_certificate(pem)
    assert certificate.issuer == certificate.subject
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["example.com"]
    identifier = certificate.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
    )
    assert identifier.critical
    assert isinstance(identifier.value, x509.UnrecognizedExtension)
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert identifier.value.value == b"\x04\x20" + digest


def test_onlyAnAcmeTLSOfferIsAValidation() -> None:
    assert offersOnlyAcmeTLS(("acme-tls/1",))
    assert not offersOnlyAcmeTLS(("h2", "acme-tls/1"))
    assert not offersOnlyAcmeTLS(())


def test_challengeIsAnsweredFromTheStateDirectory(tmp_path: Path) -> None:
    """
    The published challenge is served with ALPN C{acme-tls/1}, to a client
    that offers only that, as the ACME server's validator does.
    """
    state = StateDirectory(str(tmp_path / "state"))
    state.prepare()
    responder = ChallengeResponder(state, ["example.com"])
    assert responder.manages("Example.COM.")
    assert not responder.manages("other.example.com")
    assert not responder.manages(None)
    assert responder.contextFor("example.com") is None  # nothing published

    pem = challengeCertificate("example.com", "token.thumbprint")
    state.publishChallenge("example.com", pem)
    assert stat.S_IMODE(os.stat(state.challengePath("example.com")).st_mode) == 0o600
    context = responder.contextFor("example.com")
    assert context is not None
    client = SSL.Connection(clientContext(alpn=[b"acme-tls/1"]), None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"example.com")
    server = SSL.Connection(context, None)
    server.set_accept_state()
    result = shake(client, server)
    assert result.ok, result
    assert client.get_alpn_proto_negotiated() == b"acme-tls/1"
    served = client.get_peer_certificate(as_cryptography=True)
    assert served == x509.load_pem_x509_certificate(pem)

    state.withdrawChallenge("example.com")
    assert responder.contextFor("example.com") is None


# --- pending and swapped certificates ------------------------------------------------


def _acmeSection(names: tuple[str, ...]) -> CertificateConfig:
    return CertificateConfig(
        name="site", acme=True, names=names, location=Location(INI, 30)
    )


def _issued(tmp_path: Path, *names: str) -> LoadedCertificate:
    """
    A certificate as the manager stores one: key and chain in one file.
    """
    leaf = trustme.CA().issue_cert(*names)
    state = StateDirectory(str(tmp_path / "issued"))
    state.prepare()
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    path = state.saveCertificate(
        f"site{len(os.listdir(state.certsDir))}", leaf.private_key_pem.bytes(), chain
    )
    loaded = loadCertificate(path, path)
    # 0600: no warning about the key file.  (trustme's root is not a
    # trusted one, so the missing-chain warning about the leaf is expected.)
    assert [w for w in loaded.warnings if w.key != "certificate"] == []
    return loaded


def test_pendingCertificateFailsItsNamesAndIsSwappedIn(
    pki: PKI, tmp_path: Path
) -> None:
    names = ("example.com", "www.example.com")
    listener = listenerConfig(certificates=("site", "other"))
    sections = {
        "site": _acmeSection(names),
        "other": certificateSection("other", pki.other),
    }
    policy, found, _ = ServerTLS.fromConfig(listener, sections, lambda name: None)
    assert found == []
    assert policy is not None
    with pytest.raises(CertificatePending, match=r"'example.com' is pending"):
        policy.contextFor("example.com")
    # The first certificate is the fallback: pending too.
    with pytest.raises(CertificatePending):
        policy.contextFor(None)
    assert connect(policy, "other.example.net", clientContext(pki.root)).ok
    config = GatewayConfig("gw.ini", certificates=sections)
    assert [c.name for c in servedCertificates([policy], config)] == ["other"]

    oldContext = policy.contextFor("other.example.net")
    issued = _issued(tmp_path, *names)
    policy.update("certificate:site", issued)
    result = connect(policy, "www.example.com", clientContext())
    assert result.peerChain()[0] == issued.leaf
    assert connect(policy, None, clientContext()).peerChain()[0] == issued.leaf
    # New contexts, so connections on the old ones keep what they had.
    assert policy.contextFor("other.example.net") is not oldContext
    served = {c.name: c for c in servedCertificates([policy], config)}
    assert (served["site"].notAfter, served["site"].source) == (issued.notAfter, "acme")
    assert served["other"].source == "files"
    assert "other.example.net" in served["other"].names


def test_issuedCertificateIsServedFromTheStart(tmp_path: Path) -> None:
    issued = _issued(tmp_path, "example.com")
    listener = listenerConfig(certificates=("site",))
    policy, found, _ = ServerTLS.fromConfig(
        listener, {"site": _acmeSection(("example.com",))}, lambda name: issued
    )
    assert found == []
    assert policy is not None
    assert connect(policy, "example.com", clientContext()).peerChain()[0] == issued.leaf


def test_listenerCertificateIsLabelledByItsListener(pki: PKI) -> None:
    policy, _, _ = ServerTLS.fromConfig(listenerConfig(pki.api), {})
    assert policy is not None
    served = servedCertificates([policy], GatewayConfig("gw.ini"))
    assert [c.name for c in served] == ["listener:web"]


# --- renewal times ----------------------------------------------------------------------


def _certificateValid(tmp_path: Path, days: float) -> LoadedCertificate:
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    return attrs.evolve(
        _issued(tmp_path, "example.com"),
        notBefore=start,
        notAfter=start + datetime.timedelta(days=days),
    )


def test_renewalIsRenewBeforeAheadOfExpiry(tmp_path: Path) -> None:
    certificate = _certificateValid(tmp_path, 90)
    assert renewalTime(
        certificate, 30 * 86400
    ) == certificate.notAfter - datetime.timedelta(days=30)


def test_renewBeforeLongerThanTheLifetimeRenewsAfterTwoThirds(tmp_path: Path) -> None:
    certificate = _certificateValid(tmp_path, 90)
    assert renewalTime(
        certificate, 100 * 86400
    ) == certificate.notBefore + datetime.timedelta(days=60)


def test_failedOrdersBackOffExponentiallyUpToAnHour() -> None:
    assert [retryDelay(n) for n in range(1, 6)] == [10, 20, 40, 80, 160]
    assert retryDelay(9) == 2560
    assert retryDelay(10) == retryDelay(1000) == 3600


# --- the state directory ---------------------------------------------------------------


def test_stateFilesArePrivateAndReplacedAtomically(tmp_path: Path) -> None:
    state = StateDirectory(str(tmp_path / "state"))
    state.prepare()
    for folder in (state.path, state.certsDir, state.challengesDir):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    key = newKeyPEM()
    path = state.saveCertificate("site", key, b"CHAIN\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_bytes() == key + b"CHAIN\n"
    writePrivate(path, b"new")
    assert Path(path).read_bytes() == b"new"
    assert sorted(os.listdir(state.certsDir)) == ["site.pem"]  # no temporary left


def testsavedAccountCountsForItsOwnDirectoryOnly(tmp_path: Path) -> None:
    """
    Moving C{directory} from staging to production registers anew, instead
    of signing orders with an account the new server does not know.
    """
    state = StateDirectory(str(tmp_path / "state"))
    state.prepare()
    staging = "https://acme-staging.example.test/directory"
    saved = {
        "directory": staging,
        "registration": {"body": {}, "uri": "https://acme-staging.example.test/acct/1"},
    }
    writePrivate(state.accountPath, json.dumps(saved).encode())
    for directory, expected in [
        (staging, "https://acme-staging.example.test/acct/1"),
        ("https://acme.example.test/directory", None),
    ]:
        issuer = Issuer(AcmeSettings(directory=directory, state_dir=state.path), state)
        account = issuer.savedAccount()
        assert (account and account.uri) == expected
    writePrivate(state.accountPath, b"not json")
    assert (
        Issuer(
            AcmeSettings(directory=staging, state_dir=state.path), state
        ).savedAccount()
        is None
    )


def test_oneHolderPerLock(tmp_path: Path) -> None:
    state = StateDirectory(str(tmp_path / "state"))
    state.prepare()
    with state.lock("site"):
        with pytest.raises(Locked), state.lock("site"):
            pass
        with state.lock("other"):
            pass
    with state.lock("site"):
        pass


def test_stateFileNamesAreChecked(tmp_path: Path) -> None:
    state = StateDirectory(str(tmp_path))
    with pytest.raises(ValueError, match="cannot be a file name"):
        state.certificatePath("../escape")


def test_stateDirectoryAndConfigNeedNoTwistedNorOpenSSL() -> None:
    """
    The state directory's files and locks, and the C{[acme]} keys, are
    plain Python: the manager runs them in a thread, C{check} reads them.
    """
    assert frameworksImportedBy("gateway.acme.state") == []
    assert frameworksImportedBy("gateway.config") == []
