"""
TLS termination, end to end: a real gateway process holds the certificates
and keys (trustme leaves written as PEM files), real TLS clients
(C{openssl s_client}, C{curl}, Python C{ssl}, pyOpenSSL) talk to it, and
plaintext TCP backends behind it record exactly what reached them.

What is shown here is what CONTRACT.md promises about termination: the TLS
policy (versions, ciphers), certificate choice by SNI and by signature
algorithm, resumption, ALPN, mutual TLS, re-encryption to upstreams with
verification, byte-exact relaying with half-close, the negotiated key
exchange group, the handshake deadline, the access-log fields of a
terminated connection, and certificate problems reported by
C{tlsgateway check}.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .backends import (
    Backend,
    connect,
    downloadAll,
    readUntilEof,
    readUntilTcpEof,
    tlsConnect,
    uploadPattern,
)
from .conftest import GatewayStarter
from .harness import (
    CertificateAuthority,
    Gateway,
    ServerCertificate,
    commandFor,
    curlGet,
    dnsNames,
    freePort,
    gatewayIni,
    httpRequest,
    httpsFetch,
    ja4Fingerprint,
    okBody,
    requireTools,
    runCommand,
    writeLeaf,
)

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024

GW_NAME = "gw.example.test"  # the gateway's own certificate in most tests
A_NAME = "a.example.test"
WILDCARD = "*.wild.example.test"
WILD_ONE = "x.wild.example.test"
FALLBACK = "fallback.example.test"
UNKNOWN = "unknown.example.test"
BACKEND_NAME = "backend.example.test"
CLIENT_NAME = "client.example.test"

#: Groups OpenSSL may name in lower or upper case depending on the API.
X25519 = "x25519"
X25519MLKEM768 = "x25519mlkem768"


# -- certificates ----------------------------------------------------------------


def issue(
    ca: CertificateAuthority | trustme.CA,
    directory: Path,
    stem: str,
    *names: str,
    keyType: trustme.KeyType = trustme.KeyType.ECDSA,
    **options: Any,
) -> ServerCertificate:
    """A leaf from C{ca} (the session CA by default) for C{names}, on disk."""
    authority = ca.ca if isinstance(ca, CertificateAuthority) else ca
    leaf = authority.issue_cert(*names, key_type=keyType, **options)
    return writeLeaf(directory, stem, leaf, *names)


def derOf(certificate: ServerCertificate) -> bytes:
    """The DER bytes of the leaf (the first certificate of the chain)."""
    pem = certificate.leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# -- the gateway's INI -------------------------------------------------------------


def terminatingIni(
    port: int,
    *,
    upstreams: Mapping[str, str | Mapping[str, str]],
    certificate: ServerCertificate | None = None,
    certificates: Mapping[str, ServerCertificate] | None = None,
    upstream: str | None = None,
    routes: Sequence[tuple[str, str]] = (),
    mode: str = "terminate",
    listenerKeys: Mapping[str, str] = {},
) -> str:
    """
    A one-listener gateway (JSON access log) that terminates TLS.

    @param upstreams: name -> C{servers} line, or -> all keys of the section
        (C{servers} and the C{tls*} keys, say).
    @param certificates: C{[certificate:NAME]} sections, listed in this order
        in the listener's C{certificates} key (the first is the fallback).
    @param routes: C{(pattern, "upstream [action]")} lines.
    """
    keys: dict[str, str] = {"mode": mode}
    if certificate is not None:
        keys["certificate"] = str(certificate.certificatePath)
        keys["private_key"] = str(certificate.privateKeyPath)
    if certificates:
        keys["certificates"] = ", ".join(certificates)
    keys.update(listenerKeys)
    text = gatewayIni(
        port, routes=routes, upstream=upstream, upstreams={}, listenerKeys=keys
    )
    sections = []
    for name, spec in upstreams.items():
        body = {"servers": spec} if isinstance(spec, str) else dict(spec)
        sections.append(
            f"[upstream:{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())
        )
    for name, cert in (certificates or {}).items():
        sections.append(
            f"[certificate:{name}]\n"
            f"certificate = {cert.certificatePath}\n"
            f"private_key = {cert.privateKeyPath}\n"
        )
    return text.rstrip("\n") + "\n\n" + "\n".join(sections)


# -- clients ----------------------------------------------------------------------


@pytest.fixture
def openssl() -> None:
    requireTools("openssl")


def sClient(
    port: int,
    ca: CertificateAuthority | Path,
    *options: str,
    serverName: str | None = GW_NAME,
    send: bytes | None = None,
    timeout: float = 15,
) -> tuple[int, str]:
    """
    Run C{openssl s_client} against the gateway; (exit code, stdout+stderr).

    With C{send}, the bytes go out after the handshake and s_client waits
    (C{-ign_eof}) until the server closes: long enough to read TLS 1.3
    session tickets, and the response shows up in the output.
    """
    caPath = ca.pemPath if isinstance(ca, CertificateAuthority) else ca
    nameOptions = ["-servername", serverName] if serverName else ["-noservername"]
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        *nameOptions,
        "-CAfile",
        str(caPath),
        "-verify_return_error",
        *options,
    ]
    if send is not None:
        argv.append("-ign_eof")
    result = subprocess.run(
        argv,
        input=send if send is not None else b"",
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    output = (result.stdout + b"\n" + result.stderr).decode(errors="replace")
    return result.returncode, output


def sessionLine(output: str) -> str:
    """The first C{New, ...} or C{Reused, ...} line of s_client's output."""
    match = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", output, re.MULTILINE)
    assert match, output[-3000:]
    return match.group(0)


def capturedClientHello(argv: Sequence[str]) -> bytes:
    """
    The first TLS record a client command sends, caught on a socket of our own.

    Shows what a client really offers before we point it at the gateway.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(10)
                data = b""
                while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                    chunk = peer.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        finally:
            process.wait(10)
    return data


def lastEntry(gw: Gateway, count: int) -> dict[str, Any]:
    """The C{count}th access-log entry (1-based), waiting for it."""
    return gw.waitForEntries(count)[count - 1]


def assertTerminatedOk(entry: Mapping[str, Any], backend: Backend) -> None:
    assert entry["action"] == "terminate", entry
    assert entry["status"] == "ok", entry
    assert entry["upstream"] == backend.address, entry
    for key in ("tls_version", "cipher", "tls_group"):
        assert entry.get(key), (key, entry)


def assertRefused(entry: Mapping[str, Any]) -> None:
    assert entry["status"] == "handshake_failed", entry
    assert entry.get("reason"), ("handshake_failed without a reason", entry)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def gateway(gateway: Any) -> Iterator[Any]:
    """
    The shared starter, plus a check at teardown: no traceback in any log.

    Refusing a client is an everyday event in termination; it must end in
    an access-log line, never in an unhandled error.
    """
    started: list[Gateway] = []

    def start(iniText: str, **options: Any) -> Gateway:
        process: Gateway = gateway(iniText, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        output = process.output()
        for marker in ("Traceback", "Unhandled Error"):
            assert marker not in output, process.explain(80)


@pytest.fixture
def gwCert(ca: CertificateAuthority) -> ServerCertificate:
    """The gateway's certificate for GW_NAME, from the session CA."""
    return ca.issue(GW_NAME)


def startSimple(
    gateway: Any,
    backend: Any,
    certificate: ServerCertificate,
    *,
    mode: str = "name",
    listenerKeys: Mapping[str, str] = {},
    **backendOptions: Any,
) -> tuple[Gateway, Backend]:
    """A terminating gateway in front of one plaintext backend."""
    app = backend("app", mode, tls=False, **backendOptions)
    gw = gateway(
        terminatingIni(
            freePort(),
            certificate=certificate,
            upstream="app",
            upstreams={"app": app.address},
            listenerKeys=listenerKeys,
        )
    )
    return gw, app


# -- protocol versions and ciphers -------------------------------------------------


@pytest.mark.usefixtures("openssl")
def test_tls12AndTls13AreServedVerifiedAndLogged(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    gw, app = startSimple(gateway, backend, gwCert)
    for count, (option, version) in enumerate(
        [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")], 1
    ):
        code, output = sClient(gw.port, ca, option, send=httpRequest(GW_NAME))
        assert code == 0, (option, output[-3000:], gw.explain())
        assert f"Protocol  : {version}" in output, output[-3000:]
        line = sessionLine(output)
        assert line.startswith(f"New, {version}, "), line
        assert "Verify return code: 0 (ok)" in output, output[-3000:]
        assert "\r\n\r\napp" in output, (option, output[-2000:])
        entry = lastEntry(gw, count)
        assertTerminatedOk(entry, app)
        assert entry["sni"] == GW_NAME, entry
        assert entry["tls_version"] == version, entry
        # The cipher as OpenSSL names it, the same name s_client prints.
        assert entry["cipher"] == line.rsplit(" ", 1)[1], (entry, line)


@pytest.mark.usefixtures("openssl")
@pytest.mark.parametrize(
    ("option", "ja4Version"), [("-tls1_1", "t11"), ("-tls1", "t10")]
)
def test_oldProtocolVersionsAreRefused(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    option: str,
    ja4Version: str,
) -> None:
    # SECLEVEL=0: Debian's OpenSSL 3 will not negotiate TLS < 1.2 otherwise,
    # and the refusal must come from the gateway, not from the client.
    clientOptions = [option, "-cipher", "DEFAULT@SECLEVEL=0"]
    hello = capturedClientHello(
        [
            "openssl",
            "s_client",
            "-connect",
            "127.0.0.1:{port}",
            "-servername",
            GW_NAME,
            *clientOptions,
        ]
    )
    assert hello, "s_client sent nothing"
    assert ja4Fingerprint(hello).startswith(ja4Version + "d"), (
        "the client does not really offer the old version at most",
        ja4Fingerprint(hello),
    )
    gw, app = startSimple(gateway, backend, gwCert)
    code, output = sClient(gw.port, ca, *clientOptions, send=httpRequest(GW_NAME))
    assert code != 0, output[-3000:]
    assert "\r\n\r\napp" not in output
    entry = lastEntry(gw, 1)
    assertRefused(entry)
    assert entry["action"] == "terminate", entry
    assert app.accepted == 0


@pytest.mark.usefixtures("openssl")
def test_tls12CipherOutsideThePolicyIsRefused(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    gw, app = startSimple(gateway, backend, gwCert)
    code, output = sClient(
        gw.port, ca, "-tls1_2", "-cipher", "AES128-SHA", send=httpRequest(GW_NAME)
    )
    assert code != 0, output[-3000:]
    assert "\r\n\r\napp" not in output
    assertRefused(lastEntry(gw, 1))
    assert app.accepted == 0


# -- which certificate is served ----------------------------------------------------


def test_certificateIsChosenBySniWithTheFirstAsFallback(
    gateway: Any, backend: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    certificates = {
        "fallback": issue(ca, tmp_path, "fallback", FALLBACK),
        "exact": issue(ca, tmp_path, "exact", A_NAME),
        "wild": issue(ca, tmp_path, "wild", WILDCARD),
    }
    app = backend("app", tls=False)
    gw = gateway(
        terminatingIni(
            freePort(),
            certificates=certificates,
            upstream="app",
            upstreams={"app": app.address},
        )
    )
    verifying = ca.clientContext()
    chainOnly = ca.clientContext()
    chainOnly.check_hostname = False  # the name is checked below, by SAN
    cases = [
        (A_NAME, verifying, {A_NAME}),
        (WILD_ONE, verifying, {WILDCARD}),
        (UNKNOWN, chainOnly, {FALLBACK}),
        (None, chainOnly, {FALLBACK}),
    ]
    for count, (name, context, expected) in enumerate(cases, 1):
        response, peer, _ = httpsFetch(gw.port, context, name, host=name or FALLBACK)
        assert okBody(response) == "app", (name, gw.explain())
        assert dnsNames(peer) == expected, (name, peer)
        entry = lastEntry(gw, count)
        assert entry["sni"] == name, entry
        assertTerminatedOk(entry, app)


@pytest.mark.usefixtures("openssl")
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_rsaOrEcdsaCertificateFollowsTheClientSignatureAlgorithms(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    tmp_path: Path,
    version: str,
) -> None:
    certificates = {
        "rsa": issue(ca, tmp_path, "rsa", A_NAME, keyType=trustme.KeyType.RSA),
        "ecdsa": issue(ca, tmp_path, "ecdsa", A_NAME, keyType=trustme.KeyType.ECDSA),
    }
    app = backend("app", tls=False)
    gw = gateway(
        terminatingIni(
            freePort(),
            certificates=certificates,
            upstream="app",
            upstreams={"app": app.address},
        )
    )
    for count, (sigalgs, keyLine, signatureType) in enumerate(
        [
            ("RSA-PSS+SHA256", "Server public key is 2048 bit", "RSA-PSS"),
            ("ECDSA+SHA256", "Server public key is 256 bit", "ECDSA"),
        ],
        1,
    ):
        code, output = sClient(
            gw.port,
            ca,
            version,
            "-sigalgs",
            sigalgs,
            serverName=A_NAME,
            send=httpRequest(A_NAME),
        )
        assert code == 0, (sigalgs, output[-3000:], gw.explain())
        assert "Verify return code: 0 (ok)" in output, output[-3000:]
        assert keyLine in output, (sigalgs, output[-3000:])
        assert f"Peer signature type: {signatureType}\n" in output, output[-3000:]
        assertTerminatedOk(lastEntry(gw, count), app)


# -- resumption ----------------------------------------------------------------------


@pytest.mark.usefixtures("openssl")
@pytest.mark.parametrize(
    ("version", "listenerKeys", "clientOptions", "expected"),
    [
        ("-tls1_3", {}, [], "Reused"),
        ("-tls1_2", {}, [], "Reused"),
        (
            "-tls1_2",
            {"session_tickets": "off", "session_cache": "on"},
            ["-no_ticket"],
            "Reused",
        ),
        ("-tls1_3", {"session_tickets": "off", "session_cache": "on"}, [], "Reused"),
        ("-tls1_2", {"session_tickets": "off", "session_cache": "off"}, [], "New"),
        ("-tls1_3", {"session_tickets": "off", "session_cache": "off"}, [], "New"),
    ],
    ids=[
        "tls13-tickets",
        "tls12-tickets",
        "tls12-cache",
        "tls13-cache",
        "tls12-both-off",
        "tls13-both-off",
    ],
)
def test_sessionResumption(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    tmp_path: Path,
    version: str,
    listenerKeys: dict[str, str],
    clientOptions: list[str],
    expected: str,
) -> None:
    gw, app = startSimple(gateway, backend, gwCert, listenerKeys=listenerKeys)
    session = tmp_path / "session.pem"
    code, first = sClient(
        gw.port,
        ca,
        version,
        *clientOptions,
        "-sess_out",
        str(session),
        send=httpRequest(GW_NAME),
    )
    assert code == 0, (first[-3000:], gw.explain())
    assert sessionLine(first).startswith("New, "), first[-3000:]
    assert "\r\n\r\napp" in first, first[-2000:]
    if not session.exists():
        # No ticket and no session ID (an empty one in TLS 1.2): the server
        # offered nothing that could be resumed, so s_client saved nothing.
        assert expected == "New", ("s_client got no session to save", first[-3000:])
        return
    code, second = sClient(
        gw.port,
        ca,
        version,
        *clientOptions,
        "-sess_in",
        str(session),
        send=httpRequest(GW_NAME),
    )
    assert code == 0, (second[-3000:], gw.explain())
    assert sessionLine(second).startswith(f"{expected}, "), (
        listenerKeys,
        sessionLine(second),
    )
    assert "\r\n\r\napp" in second, second[-2000:]
    assertTerminatedOk(lastEntry(gw, 2), app)


# -- ALPN -----------------------------------------------------------------------------


@pytest.mark.usefixtures("openssl")
def test_alpnIsSelectedAndLogged(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    gw, app = startSimple(
        gateway, backend, gwCert, listenerKeys={"alpn": "h2, http/1.1"}
    )
    code, output = sClient(gw.port, ca, "-alpn", "h2", send=httpRequest(GW_NAME))
    assert code == 0, (output[-3000:], gw.explain())
    assert "ALPN protocol: h2\n" in output, output[-3000:]
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, app)
    assert entry["alpn"] == ["h2"], entry
    assert entry["alpn_selected"] == "h2", entry

    code, output = sClient(gw.port, ca, "-alpn", "http/1.1", send=httpRequest(GW_NAME))
    assert code == 0, (output[-3000:], gw.explain())
    assert "ALPN protocol: http/1.1\n" in output, output[-3000:]
    assert lastEntry(gw, 2)["alpn_selected"] == "http/1.1"

    code, output = sClient(gw.port, ca, send=httpRequest(GW_NAME))
    assert code == 0, (output[-3000:], gw.explain())
    assert "No ALPN negotiated" in output, output[-3000:]
    entry = lastEntry(gw, 3)
    assert entry["alpn"] == [], entry
    assert entry.get("alpn_selected") is None, entry


# -- mutual TLS ---------------------------------------------------------------------


def clientCertificateField(entry: Mapping[str, Any]) -> tuple[str, Any]:
    """The access-log key holding the client certificate's subject (any name)."""
    candidates = [
        (key, value)
        for key, value in entry.items()
        if key != "client"
        and ("client" in key or "peer" in key)
        and re.search(r"subject|cert|dn", key)
    ]
    assert len(candidates) == 1, (
        "no single access-log key for the client certificate subject",
        sorted(entry),
        entry,
    )
    return candidates[0]


def mtlsGet(
    port: int, context: ssl.SSLContext, serverName: str = GW_NAME
) -> tuple[bytes, str | None]:
    """
    A request that may be refused: (response, error).

    A TLS 1.3 client finishes its side of the handshake before the server
    has looked at its certificate; the refusal is an alert on its first read.
    """
    try:
        response, _, _ = httpsFetch(port, context, serverName, GW_NAME)
    except (ssl.SSLError, ConnectionError) as e:
        return b"", repr(e)
    return response, None


@pytest.fixture
def clientCert(ca: CertificateAuthority, tmp_path: Path) -> ServerCertificate:
    return issue(ca, tmp_path, "client", CLIENT_NAME, common_name=CLIENT_NAME)


def withClientCert(
    ca: CertificateAuthority, certificate: ServerCertificate | None, maxVersion: str
) -> ssl.SSLContext:
    context = ca.clientContext()
    if certificate is not None:
        context.load_cert_chain(
            str(certificate.certificatePath), str(certificate.privateKeyPath)
        )
    context.maximum_version = getattr(ssl.TLSVersion, maxVersion)
    return context


@pytest.mark.parametrize("maxVersion", ["TLSv1_2", "TLSv1_3"])
def test_verifyClientOnAcceptsATrustedCertificateAndRefusesOthers(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    clientCert: ServerCertificate,
    tmp_path: Path,
    maxVersion: str,
) -> None:
    stranger = issue(
        trustme.CA(), tmp_path, "stranger", CLIENT_NAME, common_name=CLIENT_NAME
    )
    gw, app = startSimple(
        gateway,
        backend,
        gwCert,
        listenerKeys={"client_ca": str(ca.pemPath), "verify_client": "on"},
    )
    response, error = mtlsGet(gw.port, withClientCert(ca, clientCert, maxVersion))
    assert error is None, (error, gw.explain())
    assert okBody(response) == "app"
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, app)
    key, subject = clientCertificateField(entry)
    assert CLIENT_NAME in str(subject), (key, subject, entry)

    for count, certificate in enumerate([None, stranger], 2):
        response, error = mtlsGet(gw.port, withClientCert(ca, certificate, maxVersion))
        assert b"HTTP/1.1" not in response, (certificate, response)
        entry = lastEntry(gw, count)
        assertRefused(entry)
    assert app.accepted == 1


def test_verifyClientOptionalAcceptsWithAndWithoutACertificate(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    clientCert: ServerCertificate,
) -> None:
    gw, app = startSimple(
        gateway,
        backend,
        gwCert,
        listenerKeys={"client_ca": str(ca.pemPath), "verify_client": "optional"},
    )
    response, error = mtlsGet(gw.port, withClientCert(ca, clientCert, "TLSv1_3"))
    assert error is None, (error, gw.explain())
    assert okBody(response) == "app"
    withCert = lastEntry(gw, 1)
    assertTerminatedOk(withCert, app)
    key, subject = clientCertificateField(withCert)
    assert CLIENT_NAME in str(subject), (key, subject)

    response, error = mtlsGet(gw.port, withClientCert(ca, None, "TLSv1_3"))
    assert error is None, (error, gw.explain())
    assert okBody(response) == "app"
    without = lastEntry(gw, 2)
    assertTerminatedOk(without, app)
    assert not without.get(key), (key, without)


# -- curl, and the access log of a terminated connection ------------------------------


def test_curlGetsAnHttpResponseThroughTermination(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    requireTools("curl")
    gw, app = startSimple(gateway, backend, gwCert)
    result = curlGet(gw.port, ca, GW_NAME, "--http1.1")
    assert result.returncode == 0, (result.stderr, gw.explain())
    assert result.stdout == "app"
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, app)
    assert entry["sni"] == GW_NAME, entry
    assert entry["tls_version"] == "TLSv1.3", entry
    (record,) = app.waitForRecords(1)
    assert record.received > 0, record
    # Bytes on the client's socket: TLS records, so more than the plaintext
    # (the ClientHello in; the certificate chain and the response out).
    assert 300 < entry["bytes_in"] < 5000, entry
    assert record.received < entry["bytes_in"], (record, entry)
    assert record.sent + 400 < entry["bytes_out"] < 20000, (record, entry)


# -- a passthrough listener with a terminating route ----------------------------------


def test_mixedListenerPassesThroughOneNameAndTerminatesAnother(
    gateway: Any, backend: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    bankName, apiName = "bank.example.test", "api.example.test"
    apiCert = issue(ca, tmp_path, "api", apiName, common_name="gateway api")
    bank = backend("bank", names=[bankName])  # TLS: the backend's own certificate
    api = backend("api", tls=False)
    gw = gateway(
        terminatingIni(
            freePort(),
            mode="passthrough",
            certificate=apiCert,
            routes=[(bankName, "bank passthrough"), (apiName, "api terminate")],
            upstreams={"bank": bank.address, "api": api.address},
        )
    )
    context = ca.clientContext()
    bankResponse, bankPeer, bankDer = httpsFetch(gw.port, context, bankName, bankName)
    apiResponse, apiPeer, apiDer = httpsFetch(gw.port, context, apiName, apiName)
    assert okBody(bankResponse) == "bank", gw.explain()
    assert okBody(apiResponse) == "api", gw.explain()
    assert dnsNames(bankPeer) == {bankName}, bankPeer
    assert dnsNames(apiPeer) == {apiName}, apiPeer
    assert apiDer == derOf(apiCert)
    assert bankDer != apiDer
    assert bankPeer["issuer"] == apiPeer["issuer"]  # same CA, different holders
    assert [r.sni for r in bank.waitForRecords(1)] == [bankName]
    entries = {e["sni"]: e for e in gw.waitForEntries(2)[:2]}
    assert entries[bankName]["action"] == "passthrough", entries
    assert entries[bankName]["status"] == "ok", entries
    assertTerminatedOk(entries[apiName], api)


# -- re-encryption to the upstream ------------------------------------------------------


def reencryptingGateway(
    gateway: GatewayStarter,
    certificate: ServerCertificate,
    upstream: Backend,
    **upstreamKeys: str,
) -> Gateway:
    keys = {"servers": upstream.address, "tls": "on", **upstreamKeys}
    return gateway(
        terminatingIni(
            freePort(),
            certificate=certificate,
            upstream="secure",
            upstreams={"secure": keys},
            listenerKeys={"connect_timeout": "3s"},
        )
    )


def test_reencryptionVerifiesTheUpstreamNameAndSendsItAsSni(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    client: ssl.SSLContext,
) -> None:
    secure = backend("secure", names=[BACKEND_NAME])
    gw = reencryptingGateway(
        gateway,
        gwCert,
        secure,
        tls_ca=str(ca.pemPath),
        tls_server_name=BACKEND_NAME,
    )
    response, peer, _ = httpsFetch(gw.port, client, GW_NAME, GW_NAME)
    assert okBody(response) == "secure", gw.explain()
    assert dnsNames(peer) == {GW_NAME}  # the client sees the gateway, not the backend
    (record,) = secure.waitForRecords(1)
    assert record.sni == BACKEND_NAME, record
    assert record.error is None, record
    assertTerminatedOk(lastEntry(gw, 1), secure)


def refusedUpstream(
    gw: Gateway, client: ssl.SSLContext, upstream: Backend
) -> dict[str, Any]:
    """The client's handshake with the gateway works; then it is closed, unserved."""
    stream = tlsConnect(gw.port, client, GW_NAME)
    stream.sock.settimeout(10)
    try:
        stream.send(httpRequest(GW_NAME))
        try:
            received = readUntilTcpEof(stream)
        except (ssl.SSLError, ConnectionError):
            received = b""
    finally:
        stream.close()
    assert received == b"", (received, gw.explain())
    entry = lastEntry(gw, 1)
    assert entry["action"] == "terminate", entry
    assert entry["status"] == "upstream_unavailable", entry
    assert entry.get("reason"), entry
    for record in upstream.waitForRecords(upstream.accepted or 0):
        assert record.received == 0, ("the upstream got plaintext", record)
    return entry


def test_reencryptionToAWrongNameIsUpstreamUnavailable(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    client: ssl.SSLContext,
) -> None:
    secure = backend("secure", names=[BACKEND_NAME])
    wrong = "wrong.example.test"
    gw = reencryptingGateway(
        gateway, gwCert, secure, tls_ca=str(ca.pemPath), tls_server_name=wrong
    )
    entry = refusedUpstream(gw, client, secure)
    assert re.search(r"name|host|wrong\.example\.test", entry["reason"], re.I), entry
    assert secure.accepted >= 1, "the gateway never tried the upstream"


def test_reencryptionToAnUntrustedCaIsUpstreamUnavailable(
    gateway: Any,
    backend: Any,
    gwCert: ServerCertificate,
    client: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    otherCa = CertificateAuthority(tmp_path)
    secure = backend("secure", names=[BACKEND_NAME])
    gw = reencryptingGateway(
        gateway,
        gwCert,
        secure,
        tls_ca=str(otherCa.pemPath),
        tls_server_name=BACKEND_NAME,
    )
    refusedUpstream(gw, client, secure)
    assert secure.accepted >= 1, "the gateway never tried the upstream"


def test_reencryptionVerifiesAnIpAddressSan(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    client: ssl.SSLContext,
) -> None:
    secure = backend("secure", names=["127.0.0.1"])  # an IP-address SAN only
    gw = reencryptingGateway(gateway, gwCert, secure, tls_ca=str(ca.pemPath))
    response, _, _ = httpsFetch(gw.port, client, GW_NAME, GW_NAME)
    assert okBody(response) == "secure", gw.explain()
    (record,) = secure.waitForRecords(1)
    assert record.error is None, record
    assert record.sni is None, ("an IP address is never sent as SNI", record)
    assertTerminatedOk(lastEntry(gw, 1), secure)


# -- bulk transfer and half-close through termination ----------------------------------


def test_hundredMegabytesFromClientArriveByteExact(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    total = 100 * MiB
    gw, sink = startSimple(gateway, backend, gwCert, mode="sink-hash")
    started = time.monotonic()
    stream = tlsConnect(gw.port, client, GW_NAME)
    answer, sentDigest = uploadPattern(stream, total, seed=21)
    elapsed = time.monotonic() - started
    assert answer == f"{sentDigest} {total}\n", gw.explain()
    assert elapsed < 30, f"100 MB took {elapsed:.1f}s"
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, sink)
    assert entry["bytes_in"] == stream.rawSent > total, (entry, stream.rawSent)
    assert entry["bytes_out"] == stream.rawReceived, (entry, stream.rawReceived)


def test_hundredMegabytesFromBackendArriveByteExact(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    total = 100 * MiB
    gw, source = startSimple(
        gateway, backend, gwCert, mode="source", sourceBytes=total, sourceSeed=22
    )
    started = time.monotonic()
    stream = tlsConnect(gw.port, client, GW_NAME)
    received, receivedDigest = downloadAll(stream)
    elapsed = time.monotonic() - started
    (record,) = source.waitForRecords(1)
    assert record.error is None, record
    assert received == record.sent == total, gw.explain()
    assert receivedDigest == record.sentDigest
    assert elapsed < 30, f"100 MB took {elapsed:.1f}s"
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, source)
    assert entry["bytes_out"] == stream.rawReceived > total, entry


def test_clientCloseNotifyAndFinReachBackendWhichStillAnswers(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    """
    The sink answers only after it saw EOF, so the answer arriving proves
    the gateway turned the client's close_notify+FIN into a FIN upstream
    and kept the other direction open.
    """
    gw, sink = startSimple(gateway, backend, gwCert, mode="sink-hash")
    payload = b"half-close me " * 1000
    stream = tlsConnect(gw.port, client, GW_NAME)
    stream.sock.settimeout(10)
    try:
        stream.send(payload)
        stream.closeNotify()
        stream.shutdownWrite()
        answer = readUntilTcpEof(stream).decode()
    finally:
        stream.close()
    assert answer == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}\n", (
        gw.explain()
    )
    assert stream.tlsEof, "the gateway ended its direction without close_notify"
    (record,) = sink.waitForRecords(1)
    assert record.error is None, record
    assert record.tcpEofSeen, record
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, sink)
    # Exactly the bytes on the client's socket, TLS records both ways.
    assert entry["bytes_in"] == stream.rawSent, (entry, stream.rawSent)
    assert entry["bytes_out"] == stream.rawReceived, (entry, stream.rawReceived)


def test_backendFinReachesClientWhichCanStillSend(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    total = 1 * MiB
    gw, source = startSimple(
        gateway, backend, gwCert, mode="source", sourceBytes=total, sourceSeed=23
    )
    late = b"sent after the backend's FIN " * 100
    stream = tlsConnect(gw.port, client, GW_NAME)
    stream.sock.settimeout(10)
    digest = hashlib.sha256()
    try:
        received = readUntilEof(stream, digest)
        assert stream.tlsEof, (
            "the backend's FIN did not arrive as close_notify",
            stream.tcpEof,
            gw.explain(),
        )
        stream.send(late)
        stream.closeNotify()
        stream.shutdownWrite()
        readUntilTcpEof(stream)  # the gateway closes once both sides are done
    finally:
        stream.close()
    (record,) = source.waitForRecords(1)
    assert received == total, gw.explain()
    assert digest.hexdigest() == record.sentDigest, gw.explain()
    assert record.error is None, record
    assert record.received == len(late), (record, gw.explain())
    assert record.receivedDigest == hashlib.sha256(late).hexdigest()
    assertTerminatedOk(lastEntry(gw, 1), source)


# -- the key exchange group -------------------------------------------------------------


def pyOpenSSLGet(port: int, caPath: Path, serverName: str) -> tuple[bytes, str | None]:
    """A request with pyOpenSSL's bundled OpenSSL; (response, negotiated group)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(str(caPath))
    context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    connection = SSL.Connection(context, None)
    connection.set_tlsext_host_name(serverName.encode())
    connection.set_connect_state()
    sock = connect(port)
    sock.settimeout(10)

    def flush() -> None:
        while True:
            try:
                data = connection.bio_read(65536)
            except SSL.WantReadError:
                return
            sock.sendall(data)

    def fill() -> None:
        data = sock.recv(65536)
        if not data:
            connection.bio_shutdown()
        else:
            connection.bio_write(data)

    with sock:
        while True:
            try:
                connection.do_handshake()
                break
            except SSL.WantReadError:
                flush()
                fill()
        flush()
        group = connection.get_group_name()
        connection.sendall(httpRequest(serverName))
        flush()
        response = bytearray()
        while True:
            try:
                response += connection.recv(65536)
            except SSL.WantReadError:
                flush()
                fill()
            except SSL.ZeroReturnError:
                break
    return bytes(response), group


@pytest.mark.usefixtures("openssl")
def test_postQuantumGroupForBundledOpenSslAndX25519ForDebianOpenSsl(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    gw, app = startSimple(gateway, backend, gwCert)
    response, group = pyOpenSSLGet(gw.port, ca.pemPath, GW_NAME)
    assert okBody(response) == "app", gw.explain()
    if (group or "").lower() != X25519MLKEM768:
        pytest.fail(
            f"pyOpenSSL ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})"
            f" negotiated {group!r}, not X25519MLKEM768\n{gw.explain()}"
        )
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, app)
    assert entry["tls_group"].lower() == X25519MLKEM768, entry

    code, output = sClient(gw.port, ca, send=httpRequest(GW_NAME))
    assert code == 0, (output[-3000:], gw.explain())
    assert "Server Temp Key: X25519," in output, output[-3000:]
    entry = lastEntry(gw, 2)
    assertTerminatedOk(entry, app)
    assert entry["tls_group"].lower() == X25519, entry


# -- a handshake that never completes -----------------------------------------------------


def test_handshakeNeverCompletedIsClosedAtPrereadTimeout(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    gw, app = startSimple(
        gateway, backend, gwCert, listenerKeys={"preread_timeout": "1s"}
    )
    stream = tlsConnect(gw.port, client, GW_NAME, handshake=False)
    try:
        stream.sock.sendall(stream.takeClientHello())  # complete; then silence
        started = time.monotonic()
        stream.sock.settimeout(6)
        answered = 0
        try:
            while chunk := stream.sock.recv(65536):
                answered += len(chunk)
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - started
    finally:
        stream.close()
    assert answered > 0, "the gateway did not even answer the ClientHello"
    assert 0.8 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s\n{gw.explain()}"
    entry = lastEntry(gw, 1)
    assertRefused(entry)
    # A reason that says the deadline passed ("timed out", "timeout", or
    # "handshake not done after 1s"), not some TLS error.
    assert re.search(r"time|after 1(\.0)?\s*s", entry["reason"], re.I), entry
    assert app.accepted == 0


# -- certificate problems found by `tlsgateway check` ---------------------------------------


PROBLEM = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+): \[(?P<section>[^\]]+)\] (?P<key>[\w.-]+): (?P<message>.+)$"
)


def checkIni(
    tmp_path: Path, *, certificate: Path, privateKey: Path, section: bool
) -> Path:
    """A terminating listener using the files directly or through a section."""
    if section:
        tls = "certificates = main\n"
        extra = (
            f"\n[certificate:main]\ncertificate = {certificate}\n"
            f"private_key = {privateKey}\n"
        )
    else:
        tls = f"certificate = {certificate}\nprivate_key = {privateKey}\n"
        extra = ""
    text = (
        "[gateway]\naccess_log = off\n\n"
        f"[listener:web]\nlisten = tcp:{freePort()}:interface=127.0.0.1\n"
        f"mode = terminate\nupstream = app\n{tls}\n"
        f"[upstream:app]\nservers = 127.0.0.1:{freePort()}\n{extra}"
    )
    path = tmp_path / "gateway.ini"
    path.write_text(text)
    return path


def runCheck(path: Path) -> tuple[int, str]:
    result = runCommand(commandFor("module", "check", str(path)), cwd=path.parent)
    return result.returncode, result.stdout + result.stderr


def brokenFiles(
    kind: str, ca: CertificateAuthority, directory: Path
) -> tuple[Path, Path, Path]:
    """(certificate, private key, the file the problem is about)."""
    good = issue(ca, directory, "good", GW_NAME)
    if kind == "missing-certificate":
        missing = directory / "missing-cert.pem"
        return missing, good.privateKeyPath, missing
    if kind == "missing-key":
        missing = directory / "missing-key.pem"
        return good.certificatePath, missing, missing
    if kind == "not-pem":
        junk = directory / "junk-cert.pem"
        junk.write_text("this is not a certificate\n")
        return junk, good.privateKeyPath, junk
    if kind == "key-mismatch":
        other = issue(ca, directory, "other", GW_NAME)
        return good.certificatePath, other.privateKeyPath, other.privateKeyPath
    if kind == "encrypted-key":
        key = serialization.load_pem_private_key(
            good.leaf.private_key_pem.bytes(), password=None
        )
        encrypted = directory / "encrypted-key.pem"
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret passphrase"),
            )
        )
        encrypted.chmod(0o600)
        return good.certificatePath, encrypted, encrypted
    raise ValueError(kind)


@pytest.mark.parametrize("section", [False, True], ids=["listener", "section"])
@pytest.mark.parametrize(
    "kind",
    ["missing-certificate", "missing-key", "not-pem", "key-mismatch", "encrypted-key"],
)
def test_checkReportsCertificateProblemsWithFileAndLine(
    ca: CertificateAuthority, tmp_path: Path, kind: str, section: bool
) -> None:
    certificate, privateKey, culprit = brokenFiles(kind, ca, tmp_path)
    path = checkIni(
        tmp_path, certificate=certificate, privateKey=privateKey, section=section
    )
    code, output = runCheck(path)
    assert code == 1, (kind, output)
    assert "configuration OK" not in output, output
    problems = [m.groupdict() for m in map(PROBLEM.match, output.splitlines()) if m]
    assert problems, (kind, output)
    relevant = [p for p in problems if culprit.name in p["message"]]
    assert relevant, (f"no problem names {culprit.name}", output)
    text = path.read_text().splitlines()
    for problem in relevant:
        assert Path(problem["file"]).name == path.name, problem
        assert problem["key"] in ("certificate", "private_key"), problem
        expectedSection = "certificate:main" if section else "listener:web"
        assert problem["section"] == expectedSection, problem
        line = text[int(problem["line"]) - 1]
        assert line.startswith(problem["key"]), (problem, line)


@pytest.mark.parametrize("kind", ["expired", "group-readable-key"])
def test_checkWarnsButAcceptsExpiredCertificateOrReadableKey(
    ca: CertificateAuthority, tmp_path: Path, kind: str
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if kind == "expired":
        cert = issue(
            ca,
            tmp_path,
            "expired",
            GW_NAME,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        pattern = r"expire|not.?after|no longer valid"
    else:
        cert = issue(ca, tmp_path, "readable", GW_NAME)
        cert.privateKeyPath.chmod(0o640)
        pattern = r"group|readable|permission|mode|0o?640"
    path = checkIni(
        tmp_path,
        certificate=cert.certificatePath,
        privateKey=cert.privateKeyPath,
        section=False,
    )
    code, output = runCheck(path)
    assert code == 0, (kind, output)
    assert "configuration OK" in output, output
    warnings = [
        line
        for line in output.splitlines()
        if line.strip() and "configuration OK" not in line
    ]
    assert any(re.search(pattern, line, re.I) for line in warnings), (
        f"no {kind} warning",
        output,
    )


def test_checkAcceptsGoodTerminationFiles(
    ca: CertificateAuthority, tmp_path: Path, gwCert: ServerCertificate
) -> None:
    path = checkIni(
        tmp_path,
        certificate=gwCert.certificatePath,
        privateKey=gwCert.privateKeyPath,
        section=True,
    )
    code, output = runCheck(path)
    assert code == 0, output
    assert "configuration OK" in output, output


def test_passthroughRouteToATlsUpstreamIsNotReencrypted(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    client: ssl.SSLContext,
) -> None:
    """
    C{tls = on} re-encrypts terminated connections only: a passthrough route
    to the same upstream carries the client's own TLS, so the client sees
    the backend's certificate and the backend the client's server name.
    """
    secure = backend("secure", names=[BACKEND_NAME])
    gw = gateway(
        terminatingIni(
            freePort(),
            certificate=gwCert,
            mode="passthrough",
            routes=[
                (BACKEND_NAME, "secure passthrough"),
                (GW_NAME, "secure terminate"),
            ],
            upstreams={
                "secure": {
                    "servers": secure.address,
                    "tls": "on",
                    "tls_ca": str(ca.pemPath),
                    "tls_server_name": BACKEND_NAME,
                }
            },
        )
    )
    response, peer, _ = httpsFetch(gw.port, client, BACKEND_NAME, GW_NAME)
    assert okBody(response) == "secure", gw.explain()
    assert dnsNames(peer) == {BACKEND_NAME}
    response, peer, _ = httpsFetch(gw.port, client, GW_NAME, GW_NAME)
    assert okBody(response) == "secure", gw.explain()
    assert dnsNames(peer) == {GW_NAME}
    assert [r.sni for r in secure.waitForRecords(2)] == [BACKEND_NAME, BACKEND_NAME]
    actions = sorted(e["action"] for e in gw.waitForEntries(2)[:2])
    assert actions == ["passthrough", "terminate"]
