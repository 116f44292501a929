"""
The words of the access log for clients that leave early, end to end
through a real gateway process: a client that closes before sending
anything, or that rejects the gateway's certificate (C{openssl s_client}
with a CA that did not sign it, C{psql} with C{sslmode=verify-full}), is
C{client_closed}; bytes that are not a ClientHello, or a ClientHello cut
short, stay C{bad_client_hello}; a client without a server name is
C{no_route} with C{sni} null and a reason in words.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from .harness import (
    CertificateAuthority,
    Gateway,
    ServerCertificate,
    freePort,
    httpRequest,
    requireTools,
)
from .postgres import Installation, conninfo, runPsql
from .test_termination import GW_NAME, sClient, terminatingIni

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def gwCert(ca: CertificateAuthority) -> ServerCertificate:
    return ca.issue(GW_NAME)


@pytest.fixture
def strangerCA(tmp_path: Path) -> Path:
    """A CA that signed nothing the gateway serves: a client trusting only
    it rejects the gateway's certificate."""
    path = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def startRouted(
    gateway: Any,
    backend: Any,
    certificate: ServerCertificate,
    metricsPort: int | None = None,
) -> Gateway:
    """A terminating gateway with one route (no default) to a plaintext backend."""
    app = backend("app", tls=False)
    text = terminatingIni(
        freePort(),
        certificate=certificate,
        routes=[(GW_NAME, "app")],
        upstreams={"app": app.address},
    )
    if metricsPort is not None:
        metrics = f"metrics = tcp:{metricsPort}:interface=127.0.0.1\n"
        text = text.replace("[gateway]\n", "[gateway]\n" + metrics, 1)
    return gateway(text)  # type: ignore[no-any-return]


def connectionsByStatus(metricsPort: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{metricsPort}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tlsgateway_connections"
        for sample in family.samples
        if sample.name == "tlsgateway_connections_total"
    }


def entryFor(gw: Gateway, client: tuple[str, int]) -> dict[str, Any]:
    address = f"{client[0]}:{client[1]}"
    return gw.waitForLog(lambda e: e["client"] == address)


def test_connectAndCloseIsClientClosedAndGarbageABadHello(
    gateway: Any, backend: Any, gwCert: ServerCertificate
) -> None:
    metricsPort = freePort()
    gw = startRouted(gateway, backend, gwCert, metricsPort)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        silent = sock.getsockname()
    entry = entryFor(gw, silent)
    assert (entry["status"], entry["sni"], entry["action"]) == (
        "client_closed",
        None,
        None,
    ), entry
    assert entry["reason"] == "client closed before sending anything", entry

    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        garbage = sock.getsockname()
        sock.sendall(b"\x16\x03\x01\x00\x05garbage that is not a handshake")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(100)
    assert entryFor(gw, garbage)["status"] == "bad_client_hello"

    # A ClientHello cut short, then a close: a truncated hello is a bad one.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        truncated = sock.getsockname()
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(100)
    entry = entryFor(gw, truncated)
    assert entry["status"] == "bad_client_hello", entry
    assert "before a complete ClientHello" in entry["reason"], entry
    # The metrics count them under the same words.
    assert connectionsByStatus(metricsPort) == {
        "client_closed": 1.0,
        "bad_client_hello": 2.0,
    }


def test_clientRejectingTheCertificateIsClientClosed(
    gateway: Any, backend: Any, gwCert: ServerCertificate, strangerCA: Path
) -> None:
    requireTools("openssl")
    gw = startRouted(gateway, backend, gwCert)
    for count, version in enumerate(("-tls1_3", "-tls1_2"), 1):
        code, output = sClient(gw.port, strangerCA, version, send=httpRequest(GW_NAME))
        assert code != 0, output[-2000:]
        assert "unable to get local issuer certificate" in output, output[-2000:]
        [*_, entry] = gw.waitForEntries(count)
        assert entry["status"] == "client_closed", (version, entry)
        assert entry["sni"] == GW_NAME, entry
        assert "rejected the gateway's certificate" in entry["reason"], entry
        assert "unknown ca" in entry["reason"], entry


def test_noServerNameIsNoRouteInWords(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    requireTools("openssl")
    gw = startRouted(gateway, backend, gwCert)
    code, output = sClient(gw.port, ca, serverName=None, send=httpRequest(GW_NAME))
    assert code != 0, output[-2000:]
    [entry] = gw.waitForEntries(1)
    assert (entry["status"], entry["sni"]) == ("no_route", None), entry
    assert "no server name" in entry["reason"], entry
    assert "None" not in gw.accessLogPath.read_text()


def test_psqlRejectingTheCertificateIsClientClosed(
    gateway: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    strangerCA: Path,
    pgdebian: Installation,
) -> None:
    """
    psql with C{sslmode=verify-full}: a CA it does not know ends the
    handshake with an alert; a name the certificate is not for is found
    after the handshake, and psql closes right then.  Neither is a bad
    hello, and neither reaches the (absent) upstream.
    """
    port = freePort()
    gw = gateway(
        terminatingIni(
            port,
            certificate=gwCert,
            upstream="pg",
            upstreams={"pg": f"127.0.0.1:{freePort()}"},
            listenerKeys={"protocol": "postgres"},
        )
    )
    common = {"hostaddr": "127.0.0.1", "port": port, "user": "u", "dbname": "d"}
    unknownCA = runPsql(
        pgdebian,
        conninfo(host=GW_NAME, sslmode="verify-full", sslrootcert=strangerCA, **common),
        "SELECT 1",
    )
    assert unknownCA.returncode != 0, unknownCA.explain()
    assert "certificate verify failed" in unknownCA.stderr, unknownCA.explain()
    [entry] = gw.waitForEntries(1)
    assert (entry["status"], entry["sni"]) == ("client_closed", GW_NAME), entry

    otherName = runPsql(
        pgdebian,
        conninfo(
            host="other.example.test",
            sslmode="verify-full",
            sslrootcert=ca.pemPath,
            **common,
        ),
        "SELECT 1",
    )
    assert otherName.returncode != 0, otherName.explain()
    assert "does not match host name" in otherName.stderr, otherName.explain()
    entry = gw.waitForEntries(2)[1]
    assert entry["status"] == "client_closed", entry
    assert "right after the TLS handshake" in entry["reason"], entry
    assert entry["upstream"] is None, entry
