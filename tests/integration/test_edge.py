"""
Edge security, end to end: who may send a PROXY header
(C{proxy_protocol_from}), the versions a passed-through ClientHello may
offer (C{passthrough_protocols}), the rate of new connections per client
(C{max_connection_rate}), the TLS alert every refusal gets, and route
regexes that run in linear time; through real gateway processes, with
Python C{ssl}, C{curl}, C{openssl s_client} and raw sockets as clients.

Clients connect from distinct loopback addresses (C{127.0.0.2}, ...) so a
test can tell a balancer from a client and clients from one another.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord
from gateway.wire.proxyprotocol import Command, ProxyAddress, ProxyHeader, encode

from .backends import IO_TIMEOUT, TLSStream, readUntilTcpEof
from .harness import (
    CertificateAuthority,
    commandFor,
    curlGet,
    freePort,
    gatewayIni,
    httpRequest,
    okBody,
    requireTools,
    runCommand,
)

pytestmark = pytest.mark.timeout(120)

NAME = "app.example.test"
CLIENT = ProxyAddress("203.0.113.5", 41000)
HEADER = encode(ProxyHeader(2, Command.PROXY, CLIENT, ProxyAddress("192.0.2.1", 443)))


def connectFrom(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def clientOf(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def tlsAttempt(
    port: int,
    context: ssl.SSLContext,
    *,
    source: str = "127.0.0.1",
    serverName: str = NAME,
    before: bytes = b"",
) -> tuple[str, str]:
    """
    One HTTPS request from C{source}, after C{before} (a PROXY header).

    @return: the response body, or the TLS error the client reported; and
        the client's C{ip:port}.
    """
    sock = connectFrom(source, port)
    client = clientOf(sock)
    try:
        if before:
            sock.sendall(before)
        stream = TLSStream(sock, context, serverHostname=serverName)
        try:
            stream.handshake()
        except ssl.SSLError as e:
            return f"refused: {e.reason}", client
        stream.send(httpRequest(serverName))
        return okBody(readUntilTcpEof(stream)), client
    finally:
        sock.close()


def rawAnswer(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send C{data} on a plain socket; everything the gateway sends back until EOF."""
    sock = connectFrom(source, port)
    try:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received
    finally:
        sock.close()


def byClient(client: str) -> Any:
    return lambda entry: entry["client"] == client


# -- proxy_protocol_from ----------------------------------------------------------


def test_aSpoofedProxyHeaderFromOutsideProxyProtocolFromIsDenied(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    """
    The balancer (127.0.0.2) is trusted with its header; another peer
    sending the very same header, naming a client that C{allow} lets in,
    is refused at accept: its header is never read, the client it claims
    never appears, and a TLS client is told C{access_denied}.
    """
    upstream = backend("app", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": upstream.address},
            listenerKeys={
                "accept_proxy_protocol": "on",
                "proxy_protocol_from": "127.0.0.2",
                "allow": "203.0.113.0/24",
            },
        )
    )
    context = ca.clientContext()
    answer, _ = tlsAttempt(gw.port, context, source="127.0.0.2", before=HEADER)
    assert answer == "app"
    entry = gw.waitForLog(byClient(str(CLIENT)))
    assert entry["status"] == "ok", entry

    answer, spoofer = tlsAttempt(gw.port, context, source="127.0.0.3", before=HEADER)
    assert answer == "refused: TLSV1_ALERT_ACCESS_DENIED"
    entry = gw.waitForLog(byClient(spoofer))
    assert (entry["status"], entry["action"], entry["bytes_in"]) == ("denied", None, 0)
    assert entry["bytes_out"] == 7  # the alert record
    assert "127.0.0.3 is not in proxy_protocol_from" in entry["reason"]
    assert [e["client"] for e in gw.accessLog()].count(str(CLIENT)) == 1
    assert upstream.accepted == 1


def test_checkWarnsAboutAcceptProxyProtocolFromAnyone(tmp_path: Path) -> None:
    path = tmp_path / "gw.ini"
    path.write_text(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": "127.0.0.1:9"},
            listenerKeys={"accept_proxy_protocol": "on"},
        )
    )
    result = runCommand(commandFor("module", "check", str(path)), tmp_path)
    assert (result.returncode, result.stdout) == (0, "configuration OK\n"), result
    line = path.read_text().splitlines().index("accept_proxy_protocol = on") + 1
    [warning] = [text for text in result.stderr.splitlines() if text.strip()]
    assert f"{path}:{line}: [listener:web] accept_proxy_protocol: " in warning
    assert "without proxy_protocol_from" in warning


# -- passthrough_protocols ------------------------------------------------------


def test_aTLS10OnlyClientIsRefusedBeforeItReachesTheBackend(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    requireTools("openssl")
    upstream = backend("app", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": upstream.address},
            listenerKeys={"passthrough_protocols": "TLSv1.2 TLSv1.3"},
        )
    )
    # openssl s_client offering TLS 1.0 only (security level 0 allows it).
    result = runOpenssl(
        gw.port, "-servername", NAME, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0"
    )
    assert b"alert protocol version" in result, result
    [entry] = gw.waitForEntries(1)
    assert (entry["status"], entry["sni"]) == ("denied", NAME), entry
    assert entry["reason"] == (
        "ClientHello offers TLSv1 (legacy_version, no supported_versions);"
        " passthrough_protocols allows TLSv1.2, TLSv1.3"
    )
    # The same refusal, on the wire: one protocol_version alert in TLS 1.0.
    old = makeClientHello(
        NAME, minVersion=SSL.TLS1_VERSION, maxVersion=SSL.TLS1_VERSION
    )
    assert rawAnswer(gw.port, old) == alertRecord(
        AlertDescription.PROTOCOL_VERSION, 0x0301
    )
    assert upstream.accepted == 0
    # A current client passes, to the backend's own TLS.
    assert tlsAttempt(gw.port, ca.clientContext())[0] == "app"
    assert upstream.accepted == 1


def runOpenssl(port: int, *options: str) -> bytes:
    import subprocess

    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *options],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    )
    return done.stdout + done.stderr


# -- max_connection_rate --------------------------------------------------------


def test_aBurstOverTheRateIsLimitedPerClient(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    requireTools("curl")
    upstream = backend("app", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": upstream.address},
            listenerKeys={"max_connection_rate": "3/m"},
        )
    )
    context = ca.clientContext()
    burst = [tlsAttempt(gw.port, context, source="127.0.0.2") for _ in range(5)]
    assert [answer for answer, _ in burst] == ["app"] * 3 + [
        "refused: TLSV1_ALERT_ACCESS_DENIED"
    ] * 2
    for _, client in burst[3:]:
        entry = gw.waitForLog(byClient(client))
        assert (entry["status"], entry["action"], entry["bytes_in"]) == (
            "limited",
            None,
            0,
        ), entry
        assert entry["reason"] == (
            "max_connection_rate: more than 3/m new connections from 127.0.0.2"
        )
    # curl says why too.
    result = curlGet(gw.port, ca, NAME, "--interface", "127.0.0.2")
    assert result.returncode != 0
    assert "alert access denied" in result.stderr, result.stderr
    # Another client has a bucket of its own.
    assert tlsAttempt(gw.port, context, source="127.0.0.3")[0] == "app"
    assert upstream.accepted == 4


# -- refusal alerts ----------------------------------------------------------------


def test_refusalsBeforeAnyUpstreamGetTheAlertATLSServerSends(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    """
    On a terminating listener (with one passthrough route): C{no_route}
    is C{unrecognized_name} (curl's "unrecognized name"), a malformed
    ClientHello is C{decode_error}, and a passthrough route whose servers
    are all down is C{internal_error}; the record version is the client's.
    """
    requireTools("curl")
    upstream = backend("app", names=["pass.example.test"], tls=True)
    plain = backend("plain", tls=False)
    served = ca.issue(NAME)
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[
                (NAME, "plain"),
                ("pass.example.test", "app passthrough"),
                ("down.example.test", "down passthrough"),
            ],
            upstreams={
                "app": upstream.address,
                "plain": plain.address,
                "down": f"127.0.0.1:{freePort()}",
            },
            listenerKeys={
                "mode": "terminate",
                "certificate": str(served.certificatePath),
                "private_key": str(served.privateKeyPath),
            },
        )
    )
    assert curlGet(gw.port, ca, NAME).stdout == "plain"
    assert curlGet(gw.port, ca, "pass.example.test").stdout == "app"

    result = curlGet(gw.port, ca, "nowhere.example.test")
    assert result.returncode != 0
    assert "unrecognized name" in result.stderr, result.stderr
    assert rawAnswer(gw.port, makeClientHello("nowhere.example.test")) == (
        alertRecord(AlertDescription.UNRECOGNIZED_NAME, 0x0303)
    )

    broken = bytearray(makeClientHello(NAME))
    broken[9] = 4  # legacy_version 0x04xx: not TLS
    assert rawAnswer(gw.port, bytes(broken)) == alertRecord(
        AlertDescription.DECODE_ERROR, 0x0301
    )

    answer, client = tlsAttempt(
        gw.port, ca.clientContext(), serverName="down.example.test"
    )
    assert answer == "refused: TLSV1_ALERT_INTERNAL_ERROR"
    assert gw.waitForLog(byClient(client))["status"] == "upstream_unavailable"

    statuses = [entry["status"] for entry in gw.waitForEntries(6)]
    assert statuses.count("no_route") == 2
    assert statuses.count("bad_client_hello") == 1


# -- route regexes ------------------------------------------------------------------


def test_aCatastrophicRegexDoesNotStallTheGateway(
    gateway: Any, backend: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    """
    With backtracking, C{^(a+)+$} against a 62-letter label that ends in
    C{b} would keep the reactor (and every listener) busy for ages; RE2
    answers at once, and the connection goes to the default route.  A
    pattern RE2 cannot run is refused by C{check}, named.
    """
    evilName = "a" * 62 + "b.example.test"
    fallback = backend("fallback", names=[evilName])
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[("~^(a+)+$", "evil"), ("default", "fallback")],
            upstreams={"evil": "127.0.0.1:9", "fallback": fallback.address},
        )
    )
    context = ca.clientContext()
    assert tlsAttempt(gw.port, context, serverName=evilName)[0] == "fallback"
    assert tlsAttempt(gw.port, context, serverName=evilName)[0] == "fallback"

    path = tmp_path / "bad.ini"
    path.write_text(
        gatewayIni(
            freePort(),
            routes=[("~^(a+)\\1$", "app"), ("default", "app")],
            upstreams={"app": "127.0.0.1:9"},
        )
    )
    result = runCommand(commandFor("module", "check", str(path)), tmp_path)
    assert result.returncode == 1
    assert "routes: bad regex '^(a+)\\\\1$': invalid escape sequence" in result.stderr
