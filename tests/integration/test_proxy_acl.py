"""
PROXY protocol, address filtering, limits and JA4 filtering, end to end:
real gateway processes, real TLS clients (Python C{ssl}, C{curl}, C{openssl
s_client}), and real PROXY protocol peers: HAProxy (C{bind ... accept-proxy},
whose log shows the client address it read) and NGINX (C{listen ...
proxy_protocol} in a C{stream} server that answers with
C{$proxy_protocol_addr}), so the headers are checked by implementations
that are not ours.

Clients connect from distinct loopback addresses (C{127.0.0.2},
C{127.0.0.3}, ...: Linux routes all of 127/8 to C{lo}) so a test can tell
clients apart and filter them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord
from gateway.wire.proxyprotocol import (
    NEED_MORE,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    Command,
    ProxyAddress,
    ProxyHeader,
    authorityTLV,
    connectionHeader,
    encode,
)
from gateway.wire.proxyreader import ProxyHeaderReader

from .backends import (
    IO_TIMEOUT,
    TLSStream,
    accepting,
    expectClosed,
    loopbackListener,
    readUntilTcpEof,
    waitUntil,
)
from .harness import (
    CertificateAuthority,
    Gateway,
    curlGet,
    freePort,
    gatewayIni,
    httpRequest,
    okBody,
    opensslGet,
    requireTools,
)

pytestmark = pytest.mark.timeout(120)

NAME = "app.example.test"


# -- clients ------------------------------------------------------------------


def connectFrom(source: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:C{port} from the loopback address C{source}."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def clientName(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def tlsGet(
    port: int,
    context: ssl.SSLContext,
    *,
    source: str = "127.0.0.1",
    serverName: str = NAME,
    before: bytes = b"",
) -> tuple[str, str]:
    """
    An HTTPS request from C{source}, optionally preceded by raw bytes (a
    PROXY header of the test's own).

    @return: the response body and the client's C{ip:port}.
    """
    sock = connectFrom(source, port)
    client = clientName(sock)
    try:
        if before:
            sock.sendall(before)
        stream = TLSStream(sock, context, serverHostname=serverName)
        stream.handshake()
        stream.send(httpRequest(serverName))
        return okBody(readUntilTcpEof(stream)), client
    finally:
        sock.close()


def tlsRefused(port: int, context: ssl.SSLContext, *, source: str = "127.0.0.1") -> str:
    """A TLS handshake from C{source} the gateway must cut off; the client's C{ip:port}."""
    sock = connectFrom(source, port)
    client = clientName(sock)
    try:
        stream = TLSStream(sock, context, serverHostname=NAME)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            stream.handshake()
    finally:
        sock.close()
    return client


def byClient(client: str) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: entry["client"] == client


# -- PROXY protocol peers: HAProxy and NGINX ----------------------------------


class Peer:
    """
    A server process started for one test, stopped by PID at teardown.

    @ivar port: where it accepts PROXY protocol connections, on 127.0.0.1.
    """

    def __init__(self, argv: list[str], directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.logPath = directory / "stdout.log"
        with self.logPath.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{argv[0]} did not start:\n{self.output()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        # A connect, not a probe that sends anything: the peer would log
        # a bad header.
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def output(self) -> str:
        return self.logPath.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


class HAProxy(Peer):
    """
    HAProxy in C{mode tcp} with C{bind ... accept-proxy} (v1 and v2), in
    front of one server; one log line per connection with the client and
    destination addresses it read from the header, and the v2 authority.
    """

    LINE = re.compile(r"PPLOG client=(\S+) dest=(\S+) authority=(\S+)")

    def __init__(self, directory: Path, server: str) -> None:
        port = freePort()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "haproxy.cfg"
        config.write_text(
            "global\n"
            "    log stdout format raw local0 info\n"
            "    nbthread 1\n"
            "defaults\n"
            "    mode tcp\n"
            "    log global\n"
            "    timeout connect 5s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend fe\n"
            f"    bind 127.0.0.1:{port} accept-proxy\n"
            '    log-format "PPLOG client=%ci:%cp dest=%fi:%fp'
            ' authority=%[fc_pp_authority]"\n'
            "    default_backend be\n"
            "backend be\n"
            f"    server s1 {server}\n"
        )
        super().__init__(["haproxy", "-f", str(config), "-db"], directory, port)

    def entries(self) -> list[tuple[str, str, str]]:
        return [(m[1], m[2], m[3]) for m in self.LINE.finditer(self.output())]

    def waitForClient(self, client: str, timeout: float = 10.0) -> tuple[str, str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.entries():
                if entry[0] == client:
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"HAProxy logged no connection from {client}:\n{self.output()}"
                )
            time.sleep(0.05)


class NginxStream(Peer):
    """
    NGINX with C{listen ... proxy_protocol} in a C{stream} server that
    answers every connection with the addresses of its PROXY header.
    """

    MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

    def __init__(self, directory: Path) -> None:
        port = freePort()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "nginx.conf"
        load = f"load_module {self.MODULE};\n" if self.MODULE.exists() else ""
        config.write_text(
            f"{load}"
            "daemon off;\n"
            "master_process off;\n"
            "worker_processes 1;\n"
            f"pid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "stream {\n"
            "    server {\n"
            f"        listen 127.0.0.1:{port} proxy_protocol;\n"
            '        return "$proxy_protocol_addr $proxy_protocol_port'
            ' $proxy_protocol_server_addr $proxy_protocol_server_port\\n";\n'
            "    }\n"
            "}\n"
        )
        super().__init__(
            ["nginx", "-c", str(config), "-p", str(directory)], directory, port
        )


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A starter: C{peers("haproxy", server)} or C{peers("nginx")}."""
    started: list[Peer] = []

    def start(kind: str, *args: Any) -> Any:
        if shutil.which(kind) is None:
            pytest.skip(
                f"{kind} is not installed (apt-get install {kind}): it is the real"
                " PROXY protocol peer this test checks the gateway against"
            )
        directory = tmp_path / f"{kind}{len(started) + 1}"
        peer = (
            HAProxy(directory, *args) if kind == "haproxy" else NginxStream(directory)
        )
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


# -- sending the PROXY protocol ---------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxyReadsTheClientAddressFromTheGatewaysHeader(
    gateway: Any, backend: Any, ca: CertificateAuthority, peers: Any, version: str
) -> None:
    """
    Passthrough: the header goes before the replayed ClientHello, so the
    client's TLS session with the backend behind HAProxy still works, and
    HAProxy logs the client's own address.
    """
    upstream = backend("app", names=[NAME])
    haproxy = peers("haproxy", upstream.address)
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": f"127.0.0.1:{haproxy.port}"},
            listenerKeys={"proxy_protocol": version},
        )
    )
    answer, client = tlsGet(gw.port, ca.clientContext(), source="127.0.0.2")
    assert answer == "app"
    logged = haproxy.waitForClient(client)
    assert logged == (
        client,
        f"127.0.0.1:{gw.port}",
        NAME if version == "v2" else "-",
    ), haproxy.output()
    entry = gw.waitForLog(byClient(client))
    assert entry["status"] == "ok", entry


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginxReadsTheClientAddressFromTheGatewaysHeader(
    gateway: Any, peers: Any, version: str
) -> None:
    nginx = peers("nginx")
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="ng",
            upstreams={"ng": f"127.0.0.1:{nginx.port}"},
            listenerKeys={"proxy_protocol": version},
        )
    )
    sock = connectFrom("127.0.0.3", gw.port)
    host, port = sock.getsockname()[:2]
    try:
        sock.sendall(makeClientHello(NAME))
        answer = expectClosed(sock, timeout=10.0)
    finally:
        sock.close()
    assert answer == f"{host} {port} 127.0.0.1 {gw.port}\n".encode(), (
        answer,
        nginx.output(),
    )


def test_terminatedConnectionsSendTheirTLSFactsInV2(
    gateway: Any, ca: CertificateAuthority, tmp_path: Path
) -> None:
    """
    C{PP2_TYPE_SSL}: the TLS version and cipher the access log shows, and
    the client certificate flags, verification and common name; read by a
    plain TCP upstream that captures the header.
    """
    capture = CaptureServer()
    certificate = ca.issue(NAME)
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="plain",
            upstreams={"plain": capture.address},
            listenerKeys={
                "mode": "terminate",
                "certificate": str(certificate.certificatePath),
                "private_key": str(certificate.privateKeyPath),
                "client_ca": str(ca.pemPath),
                "verify_client": "optional",
                "proxy_protocol": "v2",
            },
        )
    )
    try:
        anonymous = ca.clientContext()
        answer, client = tlsGet(gw.port, anonymous, source="127.0.0.2")
        assert answer == "captured"
        withCertificate = ca.clientContext()
        ca.ca.issue_cert("alice@example.test", common_name="alice").configure_cert(
            withCertificate
        )
        answer, certified = tlsGet(gw.port, withCertificate, source="127.0.0.3")
        assert answer == "captured"
        headers = capture.waitForHeaders(2)
    finally:
        capture.stop()
    byAddress = {str(header.source): header for header in headers}
    for address, flags, verify, commonName in [
        (client, PP2_CLIENT_SSL, 1, None),
        (
            certified,
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
            0,
            "alice",
        ),
    ]:
        header = byAddress[address]
        entry = gw.waitForLog(byClient(address))
        assert header.destination == ProxyAddress("127.0.0.1", gw.port)
        assert header.authority == NAME
        assert header.ssl is not None
        assert (header.ssl.client, header.ssl.verify) == (flags, verify)
        assert header.ssl.commonName == commonName
        assert (header.ssl.version, header.ssl.cipher) == (
            entry["tls_version"],
            entry["cipher"],
        ), entry


def test_reencryptedConnectionsSendTheHeaderBeforeTheirHandshake(
    gateway: Any, backend: Any, ca: CertificateAuthority, peers: Any
) -> None:
    """
    With C{tls = on} the header is written on the raw TCP connection before
    the gateway's own handshake: HAProxy reads it, then relays the
    handshake to the TLS backend, whose certificate the gateway verifies.
    """
    upstream = backend("secure", names=["backend.example.test"])
    haproxy = peers("haproxy", upstream.address)
    certificate = ca.issue(NAME)
    text = gatewayIni(
        freePort(),
        upstream="secure",
        upstreams={},
        listenerKeys={
            "mode": "terminate",
            "certificate": str(certificate.certificatePath),
            "private_key": str(certificate.privateKeyPath),
            "proxy_protocol": "v1",
        },
    )
    text += (
        "[upstream:secure]\n"
        f"servers = 127.0.0.1:{haproxy.port}\n"
        "tls = on\n"
        f"tls_ca = {ca.pemPath}\n"
        "tls_server_name = backend.example.test\n"
    )
    gw = gateway(text)
    answer, client = tlsGet(gw.port, ca.clientContext(), source="127.0.0.4")
    assert answer == "secure"
    assert haproxy.waitForClient(client)[:2] == (client, f"127.0.0.1:{gw.port}")
    assert gw.waitForLog(byClient(client))["status"] == "ok"


def test_chainedGatewaysPassTheOriginalClientAlong(
    gateway: Any, backend: Any, ca: CertificateAuthority, peers: Any
) -> None:
    """
    client -> gateway A (sends v2) -> gateway B (accepts it, sends v1) ->
    HAProxy (accept-proxy) -> backend: B logs the original client, and
    passes it and the original destination on.
    """
    upstream = backend("app", names=[NAME])
    haproxy = peers("haproxy", upstream.address)
    inner = gateway(
        gatewayIni(
            freePort(),
            upstream="lb",
            upstreams={"lb": f"127.0.0.1:{haproxy.port}"},
            listener="inner",
            listenerKeys={"accept_proxy_protocol": "on", "proxy_protocol": "v1"},
        )
    )
    outer = gateway(
        gatewayIni(
            freePort(),
            upstream="inner",
            upstreams={"inner": f"127.0.0.1:{inner.port}"},
            listener="outer",
            listenerKeys={"proxy_protocol": "v2"},
        )
    )
    answer, client = tlsGet(outer.port, ca.clientContext(), source="127.0.0.5")
    assert answer == "app"
    outerEntry = outer.waitForLog(byClient(client))
    innerEntry = inner.waitForLog(byClient(client))
    assert (outerEntry["status"], innerEntry["status"]) == ("ok", "ok")
    assert innerEntry["sni"] == NAME
    # B counts what it received: A's header, then the client's bytes.
    host, port = client.rsplit(":", 1)
    sent = connectionHeader(
        2,
        ProxyAddress(host, int(port)),
        ProxyAddress("127.0.0.1", outer.port),
        [authorityTLV(NAME)],
    )
    assert innerEntry["bytes_in"] == outerEntry["bytes_in"] + len(encode(sent))
    assert haproxy.waitForClient(client)[:2] == (client, f"127.0.0.1:{outer.port}")


# -- accepting the PROXY protocol ---------------------------------------------------


@pytest.fixture
def behindBalancer(gateway: Any, backend: Any) -> tuple[Gateway, Any]:
    upstream = backend("app", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": upstream.address},
            listenerKeys={
                "accept_proxy_protocol": "on",
                "preread_timeout": "1s",
                "deny": "127.0.0.1, 198.51.100.0/24",
            },
        )
    )
    return gw, upstream


def test_headerAddressIsTheClientAndTheBalancerIsNotFiltered(
    behindBalancer: tuple[Gateway, Any], ca: CertificateAuthority
) -> None:
    """
    The balancer (127.0.0.1, denied) is not filtered; the client in its
    header is, and is what the log shows.  A header may come byte by byte.
    """
    gw, upstream = behindBalancer
    header = encode(
        ProxyHeader(
            2,
            Command.PROXY,
            ProxyAddress("203.0.113.5", 41000),
            ProxyAddress("192.0.2.1", 443),
        )
    )
    sock = connectFrom("127.0.0.1", gw.port)
    try:
        for i in range(len(header)):
            sock.sendall(header[i : i + 1])
            time.sleep(0.005)
        stream = TLSStream(sock, ca.clientContext(), serverHostname=NAME)
        stream.handshake()
        stream.send(httpRequest(NAME))
        assert okBody(readUntilTcpEof(stream)) == "app"
    finally:
        sock.close()
    entry = gw.waitForLog(byClient("203.0.113.5:41000"))
    assert (entry["status"], entry["sni"]) == ("ok", NAME), entry
    assert entry["bytes_in"] > len(header)

    denied = b"PROXY TCP4 198.51.100.7 192.0.2.1 41001 443\r\n"
    sock = connectFrom("127.0.0.1", gw.port)
    try:
        sock.sendall(denied + makeClientHello(NAME))
        # Refused for the address in the header: the alert a TLS server sends.
        assert expectClosed(sock, timeout=10.0) == alertRecord(
            AlertDescription.ACCESS_DENIED, 0x0301
        )
    finally:
        sock.close()
    entry = gw.waitForLog(byClient("198.51.100.7:41001"))
    assert (entry["status"], entry["action"], entry["sni"]) == ("denied", None, None)
    assert upstream.accepted == 1


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (makeClientHello(NAME), "missing"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 443\r\n", "bad_address"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 443\n", "malformed"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00", "truncated"),
        (b"PROXY TCP4 ", "timeout"),
        (b"", "timeout"),
    ],
    ids=["no-header", "bad-port", "bare-lf", "truncated", "slow", "silent"],
)
def test_badProxyHeadersAreRefused(
    behindBalancer: tuple[Gateway, Any], sent: bytes, reason: str
) -> None:
    gw, upstream = behindBalancer
    sock = connectFrom("127.0.0.6", gw.port)
    client = clientName(sock)
    started = time.monotonic()
    try:
        sock.sendall(sent)
        if reason == "truncated":
            sock.shutdown(socket.SHUT_WR)
        expectClosed(sock, timeout=10.0)
    finally:
        sock.close()
    entry = gw.waitForLog(byClient(client))
    assert entry["status"] == "bad_proxy_header", entry
    assert entry["reason"].startswith(f"{reason}:"), entry
    assert (entry["action"], entry["sni"], entry["bytes_in"]) == (None, None, len(sent))
    if reason == "timeout":
        assert time.monotonic() - started >= 0.9
    assert upstream.accepted == 0


# -- address filtering and limits ----------------------------------------------------


def test_allowAndDenyBySourceAddress(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    upstream = backend("app", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": upstream.address},
            listenerKeys={
                "allow": "127.0.0.2, 127.0.0.3, 2001:db8::/32",
                "deny": "127.0.0.3",  # deny wins
            },
        )
    )
    answer, allowed = tlsGet(gw.port, ca.clientContext(), source="127.0.0.2")
    assert answer == "app"
    deniedByDeny = tlsRefused(gw.port, ca.clientContext(), source="127.0.0.3")
    notAllowed = tlsRefused(gw.port, ca.clientContext(), source="127.0.0.4")
    assert gw.waitForLog(byClient(allowed))["status"] == "ok"
    for client in (deniedByDeny, notAllowed):
        entry = gw.waitForLog(byClient(client))
        assert (entry["status"], entry["action"], entry["upstream"]) == (
            "denied",
            None,
            None,
        ), entry
        assert (entry["sni"], entry["ja4"], entry["bytes_in"]) == (None, None, 0)
        assert "allow/deny" in entry["reason"]
    assert upstream.accepted == 1


def openTLS(port: int, context: ssl.SSLContext, source: str) -> TLSStream:
    """An established TLS connection through the gateway, left open."""
    sock = connectFrom(source, port)
    stream = TLSStream(sock, context, serverHostname=NAME)
    stream.handshake()
    return stream


def test_maxConnectionsRefusesTheExtraConnection(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    upstream = backend("echo", "echo", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="echo",
            upstreams={"echo": upstream.address},
            listenerKeys={"max_connections": "2"},
        )
    )
    context = ca.clientContext()
    first = openTLS(gw.port, context, "127.0.0.2")
    firstClient = clientName(first.sock)
    second = openTLS(gw.port, context, "127.0.0.3")
    try:
        extra = tlsRefused(gw.port, context, source="127.0.0.4")
        entry = gw.waitForLog(byClient(extra))
        assert (entry["status"], entry["action"], entry["bytes_in"]) == (
            "limited",
            None,
            0,
        ), entry
        assert "max_connections" in entry["reason"]
        second.send(b"still here")
        assert second.recv() == b"still here"
    finally:
        first.close()
    gw.waitForLog(byClient(firstClient))  # its place is free once it is logged
    try:
        third = openTLS(gw.port, context, "127.0.0.4")
        third.send(b"ping")
        assert third.recv() == b"ping"
        third.close()
    finally:
        second.close()


def test_maxConnectionsPerClientCountsEachAddress(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    upstream = backend("echo", "echo", names=[NAME])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="echo",
            upstreams={"echo": upstream.address},
            listenerKeys={"max_connections_per_client": "1"},
        )
    )
    context = ca.clientContext()
    held = openTLS(gw.port, context, "127.0.0.2")
    try:
        extra = tlsRefused(gw.port, context, source="127.0.0.2")
        entry = gw.waitForLog(byClient(extra))
        assert entry["status"] == "limited", entry
        assert "from 127.0.0.2" in entry["reason"]
        other = openTLS(gw.port, context, "127.0.0.3")
        other.send(b"ok")
        assert other.recv() == b"ok"
        other.close()
    finally:
        held.close()


# -- JA4 ---------------------------------------------------------------------------


def test_denyJa4RefusesCurlWhilePythonPasses(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    requireTools("curl")
    upstream = backend("app", names=[NAME])
    probe = gateway(
        gatewayIni(freePort(), upstream="app", upstreams={"app": upstream.address})
    )
    result = curlGet(probe.port, ca, NAME)
    assert result.returncode == 0, result.stderr
    fingerprint = probe.waitForLog(lambda e: e["status"] == "ok")["ja4"]
    assert fingerprint
    head, _, hashes = fingerprint.partition("_")
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="app",
            upstreams={"app": upstream.address},
            listenerKeys={"deny_ja4": f"{head}_{hashes.upper()}"},  # any case
        )
    )
    result = curlGet(gw.port, ca, NAME)
    assert result.returncode != 0, result.stdout
    refused = gw.waitForLog(lambda e: e["status"] == "denied")
    assert (refused["ja4"], refused["sni"], refused["action"]) == (
        fingerprint,
        NAME,
        None,
    ), refused
    assert "deny_ja4" in refused["reason"]
    answer, client = tlsGet(gw.port, ca.clientContext())
    assert answer == "app"
    passed = gw.waitForLog(byClient(client))
    assert passed["status"] == "ok"
    assert passed["ja4"] != fingerprint
    assert upstream.accepted == 2  # the probe's curl and Python


def test_clientsGetDistinctStableFingerprints(
    gateway: Any, backend: Any, ca: CertificateAuthority
) -> None:
    """
    curl, openssl s_client and Python's ssl, twice each, through one
    gateway: the same client twice has the same ja4, different clients
    different ones.  Each client asks for a name of its own, so its log
    lines can be told apart.
    """
    requireTools("curl", "openssl")
    names = {c: f"{c}.example.test" for c in ("curl", "openssl", "python")}
    upstream = backend("app", names=list(names.values()))
    gw = gateway(
        gatewayIni(freePort(), upstream="app", upstreams={"app": upstream.address})
    )
    for _ in range(2):
        result = curlGet(gw.port, ca, names["curl"])
        assert result.returncode == 0, result.stderr
        output = opensslGet(
            gw.port, ca, "-servername", names["openssl"], host=names["openssl"]
        )
        assert output.returncode == 0, output.stderr
        assert (
            tlsGet(gw.port, ca.clientContext(), serverName=names["python"])[0] == "app"
        )
    fingerprints: dict[str, set[str]] = {}
    for entry in gw.waitForEntries(6, timeout=10):
        assert entry["status"] == "ok", entry
        fingerprints.setdefault(entry["sni"], set()).add(entry["ja4"])
    assert all(len(seen) == 1 for seen in fingerprints.values()), fingerprints
    distinct = {next(iter(seen)) for seen in fingerprints.values()}
    assert len(distinct) == 3, fingerprints


# -- a capturing upstream --------------------------------------------------------------


class CaptureServer:
    """
    A plain TCP upstream that reads a PROXY header (with our reader) and
    the HTTP request after it, then answers C{captured}.
    """

    def __init__(self) -> None:
        self.headers: list[ProxyHeader] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._listener, self.address = loopbackListener(16)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for sock in accepting(self._listener, self._stopping):
            with sock:
                try:
                    self._one(sock)
                except (OSError, ValueError) as e:
                    with self._lock:
                        self.errors.append(repr(e))

    def _one(self, sock: socket.socket) -> None:
        sock.settimeout(IO_TIMEOUT)
        reader = ProxyHeaderReader()
        result = reader.feed(sock.recv(65536))
        while result is NEED_MORE:
            result = reader.feed(sock.recv(65536))
        header, rest = result
        while b"\r\n\r\n" not in rest:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        with self._lock:
            self.headers.append(header)
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ncaptured"
        )
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def waitForHeaders(self, count: int) -> list[ProxyHeader]:
        waitUntil(
            lambda: len(self.headers) >= count or self.errors,
            10,
            lambda: f"headers {self.headers}, errors {self.errors}",
        )
        assert not self.errors, self.errors
        return list(self.headers)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
