"""
End-to-end tests of QUIC passthrough: a real gateway process, aioquic
HTTP/3 backends and clients, datagrams on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.crypto import CryptoPair
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.wire.quic import parseLongHeader
from tests.integration.conftest import BackendStarter, GatewayStarter
from tests.integration.harness import (
    CertificateAuthority,
    commandFor,
    curlGet,
    freePort,
    gatewayEnvironment,
    requireTools,
)
from tests.integration.quic import (
    H3Backend,
    fetchMetrics,
    freeUDPPort,
    h3Command,
    h3Get,
    longHeader,
    metricValue,
    quicIni,
    realInitial,
    waitUntil,
)

H3Starter = Callable[..., H3Backend]


@pytest.fixture
def h3backend(ca: CertificateAuthority) -> Iterator[H3Starter]:
    started: list[H3Backend] = []

    def start(name: str, **options: Any) -> H3Backend:
        backend = H3Backend(ca, name, **options)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def test_http3ReachesTheBackendOfItsServerName(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    one, two = h3backend("one.example"), h3backend("two.example")
    port = freeUDPPort()
    running = gateway(
        quicIni(
            port,
            routes=[("one.example", "one"), ("two.example", "two")],
            upstreams={"one": one.address, "two": two.address},
            listenerKeys={"quic_idle_timeout": "1s"},
        ),
        command="module",  # python -m gateway run: tlsgateway run
    )
    for name in ("one.example", "two.example"):
        result = h3Get(ca, port, name)
        assert result.returncode == 0, result.stderr + running.explain()
        assert result.stdout == f"{name} /r0\n"
    entries = running.waitForEntries(2, timeout=15)
    for entry in entries:
        assert entry["transport"] == "udp"
        assert entry["status"] == "ok"
        assert entry["quic_version"] == "v1"
        assert entry["action"] == "passthrough"
        assert entry["packets_in"] > 2
        assert entry["packets_out"] > 2
        assert entry["bytes_in"] >= 1200
    assert {e["sni"] for e in entries} == {"one.example", "two.example"}
    assert {e["upstream"] for e in entries} == {one.address, two.address}
    assert entries[0]["alpn"][0] == "h3"


def test_aClientHelloOverSeveralInitialsIsRouted(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    one, two = h3backend("one.example"), h3backend("two.example")
    port = freeUDPPort()
    running = gateway(
        quicIni(
            port,
            routes=[("one.example", "one"), ("two.example", "two")],
            upstreams={"one": one.address, "two": two.address},
            listenerKeys={"quic_idle_timeout": "1s"},
        )
    )
    # 150 more ALPN protocols: a ClientHello of about 4 kB, four Initials.
    result = h3Get(ca, port, "two.example", "--extra-alpn", "150")
    assert result.returncode == 0, result.stderr + running.explain()
    assert result.stdout == "two.example /r0\n"
    (entry,) = running.waitForEntries(1, timeout=15)
    assert len(entry["alpn"]) == 151
    assert entry["upstream"] == two.address
    assert entry["bytes_in"] > 4 * 1200


def test_aClientThatChangesItsPortKeepsItsBackend(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    one = h3backend("one.example")
    port = freeUDPPort()
    running = gateway(
        quicIni(
            port,
            routes=[("one.example", "one")],
            upstreams={"one": one.address},
            listenerKeys={"quic_idle_timeout": "1s"},
        )
    )
    result = h3Get(ca, port, "one.example", "--requests", "3", "--migrate")
    assert result.returncode == 0, result.stderr + running.explain()
    assert result.stdout.splitlines() == [
        "one.example /r0",
        "one.example /r1",
        "one.example /r2",
    ]
    # One flow, followed across three client ports.
    (entry,) = running.waitForEntries(1, timeout=15)
    assert entry["status"] == "ok"
    assert entry["packets_in"] >= 6


def test_aBackendsRetryKeepsTheFlow(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    one = h3backend("one.example", retry=True)
    port = freeUDPPort()
    running = gateway(
        quicIni(
            port,
            routes=[("default", "one")],
            upstreams={"one": one.address},
            listenerKeys={"quic_idle_timeout": "1s"},
        )
    )
    result = h3Get(ca, port, "one.example")
    assert result.returncode == 0, result.stderr + running.explain()
    assert result.stdout == "one.example /r0\n"
    (entry,) = running.waitForEntries(1, timeout=15)
    assert entry["status"] == "ok"
    # Two client Initials (before and after the Retry) at least 1200 each.
    assert entry["bytes_in"] >= 2400


def test_anUnknownVersionGetsVersionNegotiation(
    gateway: GatewayStarter, h3backend: H3Starter
) -> None:
    one = h3backend("one.example")
    port = freeUDPPort()
    metricsPort = freePort()
    running = gateway(
        quicIni(
            port,
            routes=[("default", "one")],
            upstreams={"one": one.address},
            gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
        )
    )
    dcid, scid = os.urandom(8), os.urandom(5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(longHeader(0x1A2A3A4A, dcid, scid, 1200), ("127.0.0.1", port))
        answer = sock.recv(2048)
    assert answer[0] & 0x80
    assert answer[1:5] == b"\0\0\0\0"
    assert answer[5] == len(scid)
    assert answer[6 : 6 + len(scid)] == scid
    rest = answer[6 + len(scid) :]
    assert rest[0] == len(dcid)
    assert rest[1 : 1 + len(dcid)] == dcid
    versions = rest[1 + len(dcid) :]
    assert {versions[i : i + 4] for i in range(0, len(versions), 4)} == {
        b"\x00\x00\x00\x01",
        b"\x6b\x33\x43\xcf",
    }
    # Smaller than an Initial may be: no answer (no amplification), counted.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(longHeader(0x1A2A3A4A, dcid, scid, 1000), ("127.0.0.1", port))
    waitUntil(
        lambda: (
            metricValue(
                fetchMetrics(metricsPort),
                "tlsgateway_quic_dropped_datagrams_total",
                listener="quic",
                reason="unsupported_version",
            )
            == 1
        )
    )
    assert running.accessLog() == []


def test_garbageAndSpoofedDatagramsAreDroppedAndCounted(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    """
    While a real client's connection is open, a flood of garbage, short
    headers of no flow, small and undecryptable Initials, and real Initials
    from a hundred other sources: none of the first kinds is answered, and
    each is counted by reason; the flows stop at C{quic_max_flows} (the
    rest are C{limited}); the real client's requests go on; memory stays
    bounded.
    """
    one = h3backend("one.example")
    port = freeUDPPort()
    metricsPort = freePort()
    running = gateway(
        quicIni(
            port,
            routes=[("default", "one")],
            upstreams={"one": one.address},
            listenerKeys={"quic_max_flows": "50", "quic_idle_timeout": "2s"},
            gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
        )
    )
    client = subprocess.Popen(
        [
            *h3Command(ca, port, "one.example"),
            *("--requests", "10", "--interval", "0.3", "--timeout", "30"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=gatewayEnvironment(),
    )
    kinds: dict[str, Callable[[], bytes]] = {
        "not_quic": lambda: bytes([os.urandom(1)[0] & 0x3F]) + os.urandom(39),
        "unknown_flow": lambda: b"\x41" + os.urandom(60),
        "too_small": lambda: longHeader(1, os.urandom(8), b"", 1100),
        "undecryptable": lambda: longHeader(1, os.urandom(8), b"", 1200),
    }
    rounds = 20
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "one.example /r0\n"
        before = running.rss()
        # Spoofed clients, and other sources for the rest: a datagram from
        # a flow's address is that flow's (its server drops what is not).
        spoofed = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
        try:
            for sock in spoofed:
                sock.sendto(realInitial("one.example"), ("127.0.0.1", port))
            for _ in range(rounds):
                for index, sock in enumerate(sockets):
                    for make in kinds.values():
                        sock.sendto(make(), ("127.0.0.1", port))
                    if index % 10 == 9:
                        time.sleep(0.005)  # pace: a flood, not a socket overflow
                    sock.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        answer = sock.recv(2048)
                        raise AssertionError(f"answered: {answer!r}")
            assert client.wait(40) == 0, client.stderr.read() if client.stderr else ""
        finally:
            for sock in spoofed + sockets:
                sock.close()
        assert len(client.stdout.read().splitlines()) == 9
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(5)
    text = fetchMetrics(metricsPort)
    for kind in kinds:
        dropped = metricValue(
            text,
            "tlsgateway_quic_dropped_datagrams_total",
            listener="quic",
            reason=kind,
        )
        # Loopback may lose some of a burst in the socket buffer: most
        # arrive, and none is counted twice.
        assert rounds * len(sockets) / 2 <= dropped <= rounds * len(sockets), (
            kind,
            text,
        )
    entries = running.waitForEntries(100, timeout=15)
    limited = [e for e in entries if e["status"] == "limited"]
    assert len(limited) >= 100 - 50
    assert all("quic_max_flows: 50" in e["reason"] for e in limited)
    assert running.rss() - before < 40 * 1024 * 1024


def maxOverlap(entries: list[dict[str, Any]]) -> int:
    """
    The most flows of C{entries} open at one moment (from C{time} and
    C{duration_ms}).
    """
    events = []
    for entry in entries:
        start = datetime.fromisoformat(entry["time"]).timestamp()
        events += [(start, 1), (start + entry["duration_ms"] / 1000, -1)]
    open_ = most = 0
    for _, step in sorted(events):
        open_ += step
        most = max(most, open_)
    return most


def test_threeHundredConcurrentFlows(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    names = ("www.example",)
    one, two = h3backend("one", names=names), h3backend("two", names=names)
    port = freeUDPPort()
    metricsPort = freePort()
    running = gateway(
        quicIni(
            port,
            routes=[("www.example", "pool")],
            upstreams={"pool": [one.address, two.address]},
            listenerKeys={"quic_idle_timeout": "10s"},
            gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
        )
    )
    # Bounded: on a busy machine 300 aioquic handshakes take a while.
    result = h3Get(
        ca, port, "www.example", "--flows", "300", "--timeout", "90", timeout=120
    )
    assert result.stdout == "ok 300 failed 0\n", result.stderr + running.explain()
    entries = running.waitForEntries(300, timeout=30)
    assert [e["status"] for e in entries] == ["ok"] * 300
    assert maxOverlap(entries) >= 100
    # Balanced round robin over both servers.
    assert {e["upstream"] for e in entries} == {one.address, two.address}
    text = fetchMetrics(metricsPort)
    assert (
        metricValue(text, "tlsgateway_connections_total", listener="quic", status="ok")
        == 300
    )
    assert metricValue(text, "tlsgateway_active_connections", listener="quic") == 0


def test_tcpAndUdpOnOneListenerShareTheRoutes(
    gateway: GatewayStarter,
    h3backend: H3Starter,
    backend: BackendStarter,
    ca: CertificateAuthority,
) -> None:
    """
    One listener on C{tcp:P} and C{udp:P}; each upstream server is a TCP
    TLS backend and an HTTP/3 backend on the same port.
    """
    tcpOne, tcpTwo = backend("one.example"), backend("two.example")
    h3backend("one.example", port=tcpOne.port)
    h3backend("two.example", port=tcpTwo.port)
    port = freeUDPPort()
    running = gateway(
        quicIni(
            port,
            tcp=True,
            routes=[("one.example", "one"), ("two.example", "two")],
            upstreams={
                "one": f"127.0.0.1:{tcpOne.port}",
                "two": f"127.0.0.1:{tcpTwo.port}",
            },
            listenerKeys={"quic_idle_timeout": "1s"},
        )
    )
    for name in ("one.example", "two.example"):
        overTCP = curlGet(port, ca, name)
        assert overTCP.returncode == 0, overTCP.stderr + running.explain()
        assert name in overTCP.stdout
        overUDP = h3Get(ca, port, name)
        assert overUDP.returncode == 0, overUDP.stderr + running.explain()
        assert overUDP.stdout == f"{name} /r0\n"
    entries = running.waitForEntries(4, timeout=15)
    assert sorted((e["transport"], e["sni"]) for e in entries) == [
        ("tcp", "one.example"),
        ("tcp", "two.example"),
        ("udp", "one.example"),
        ("udp", "two.example"),
    ]
    for entry in entries:
        if entry["transport"] == "tcp":
            assert "packets_in" not in entry
            assert "quic_version" not in entry


def test_aReloadKeepsEstablishedFlows(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    """
    A flow established before C{SIGHUP} stays on its backend; a new flow
    after it follows the new routes.  C{SIGTERM} then drains the flow.
    """
    one, two = h3backend("one.example"), h3backend("two.example")
    port = freeUDPPort()
    text = quicIni(
        port,
        routes=[("default", "one")],
        upstreams={"one": one.address, "two": two.address},
        listenerKeys={"quic_idle_timeout": "3s"},
        gatewayKeys={"drain_timeout": "20s"},
    )
    running = gateway(text)
    client = subprocess.Popen(
        [
            *h3Command(ca, port, "any.example"),
            *("--requests", "6", "--interval", "0.5", "--timeout", "30"),
            "--insecure",  # one name, whichever backend answers
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=gatewayEnvironment(),
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "one.example /r0\n"
        running.configPath.write_text(text.replace("default one", "default two"))
        running.sendSignal(signal.SIGHUP)
        running.waitForOutput("reloaded")
        after = h3Get(ca, port, "any.example", "--insecure")
        assert after.stdout == "two.example /r0\n", after.stderr + running.explain()
        running.sendSignal(signal.SIGTERM)
        assert client.wait(40) == 0, client.stderr.read() if client.stderr else ""
        assert client.stdout.read().splitlines() == [
            f"one.example /r{n}" for n in range(1, 6)
        ]
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(5)
    assert running.waitForExit(30) == 0
    entries = running.accessLog()
    assert sorted(e["upstream"] for e in entries) == sorted([one.address, two.address])


def test_withWorkersTheSupervisorServesQuic(
    gateway: GatewayStarter,
    h3backend: H3Starter,
    backend: BackendStarter,
    ca: CertificateAuthority,
) -> None:
    """
    C{workers = 2}: TCP goes to the workers, QUIC to the supervisor, whose
    flows outlive a reload that replaces the workers; /metrics adds both.
    """
    tcpOne = backend("one.example")
    one = h3backend("one.example", port=tcpOne.port)
    two = h3backend("two.example")
    port = freeUDPPort()
    metricsPort = freePort()
    text = quicIni(
        port,
        tcp=True,
        routes=[("default", "one")],
        upstreams={"one": one.address, "two": two.address},
        listenerKeys={"quic_idle_timeout": "2s"},
        gatewayKeys={
            "workers": "2",
            "metrics": f"tcp:{metricsPort}:interface=127.0.0.1",
        },
    )
    running = gateway(text)
    overTCP = curlGet(port, ca, "one.example")
    assert overTCP.returncode == 0, overTCP.stderr + running.explain()
    client = subprocess.Popen(
        [
            *h3Command(ca, port, "one.example"),
            *("--requests", "6", "--interval", "0.5", "--timeout", "30"),
            "--insecure",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=gatewayEnvironment(),
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "one.example /r0\n"
        running.configPath.write_text(text.replace("default one", "default two"))
        running.sendSignal(signal.SIGHUP)
        running.waitForOutput("reloaded: generation 2", timeout=30)
        after = h3Get(ca, port, "two.example")
        assert after.stdout == "two.example /r0\n", after.stderr + running.explain()
        assert client.wait(40) == 0, client.stderr.read() if client.stderr else ""
        assert client.stdout.read().splitlines() == [
            f"one.example /r{n}" for n in range(1, 6)
        ]
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(5)
    entries = running.waitForEntries(3, timeout=15)
    assert sorted((e["transport"], e["upstream"]) for e in entries) == sorted(
        [
            ("tcp", f"127.0.0.1:{tcpOne.port}"),
            ("udp", one.address),
            ("udp", two.address),
        ]
    )
    waitUntil(
        lambda: (
            metricValue(
                fetchMetrics(metricsPort),
                "tlsgateway_connections_total",
                listener="quic",
                status="ok",
            )
            == 3
        )  # one TCP connection (a worker), two flows (the supervisor)
    )


def test_checkRefusesTerminationOnAUDPListener(tmp_path: Path) -> None:
    config = tmp_path / "gw.ini"
    config.write_text(
        "[listener:web]\n"
        "listen = tcp:8443, udp:8443\n"
        "mode = terminate\n"
        "certificate = cert.pem\n"
        "private_key = key.pem\n"
        "upstream = app\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:9443\n"
    )
    result = subprocess.run(
        commandFor("module", "check", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        env=gatewayEnvironment(),
        check=False,
    )
    assert result.returncode == 1
    assert (
        f"{config}:3: [listener:web] mode: mode = terminate on a listener with UDP"
        " endpoint 'udp:8443'"
    ) in result.stdout + result.stderr


def test_anIPv6Endpoint(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    one = h3backend("one.example")
    port = freeUDPPort()
    text = quicIni(
        port,
        routes=[("one.example", "one")],
        upstreams={"one": one.address},
        listenerKeys={"quic_idle_timeout": "1s"},
    ).replace(
        f"listen = udp:{port}:interface=127.0.0.1",
        f"listen = udp6:{port}:interface=\\:\\:1",
    )
    running = gateway(text)
    result = h3Get(ca, port, "one.example", "--host", "::1")
    assert result.returncode == 0, result.stderr + running.explain()
    assert result.stdout == "one.example /r0\n"
    (entry,) = running.waitForEntries(1, timeout=15)
    assert entry["client"].startswith("[::1]:")
    assert entry["transport"] == "udp"


def spkiPin(certificatePath: Path) -> str:
    """
    The base64 SHA-256 of a certificate's public key, as Chromium's
    C{--ignore-certificate-errors-spki-list} takes it.
    """
    certificate = x509.load_pem_x509_certificate(certificatePath.read_bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_chromiumOverHTTP3(
    gateway: GatewayStarter,
    h3backend: H3Starter,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    """
    A stock browser: headless Chromium, forced onto QUIC for the origin,
    reaches the backend of its server name through the gateway.
    """
    requireTools("chromium")
    one, two = h3backend("one.example"), h3backend("two.example")
    port = freeUDPPort()
    running = gateway(
        quicIni(
            port,
            routes=[("one.example", "one"), ("two.example", "two")],
            upstreams={"one": one.address, "two": two.address},
            listenerKeys={"quic_idle_timeout": "1s"},
        )
    )
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-quic",
            f"--origin-to-force-quic-on=two.example:{port}",
            "--host-resolver-rules=MAP two.example 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={spkiPin(two.certificatePath)}",
            "--dump-dom",
            f"https://two.example:{port}/browser",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert "two.example /browser" in result.stdout, result.stderr + running.explain()
    entries = running.waitForEntries(1, timeout=15)
    assert {(e["transport"], e["sni"], e["upstream"]) for e in entries} == {
        ("udp", "two.example", two.address)
    }
    assert "h3" in entries[0]["alpn"]


def test_aNameWithNoRouteIsLoggedOnceAndRefused(
    gateway: GatewayStarter, h3backend: H3Starter, ca: CertificateAuthority
) -> None:
    """
    An Initial for a name with no route is logged once, however often it
    is retransmitted, and answered with CONNECTION_CLOSE
    (CONNECTION_REFUSED) under the server's Initial keys: the first
    retransmissions are answered again, and a real HTTP/3 client gives up
    at once instead of at its timeout.
    """
    one = h3backend("one.example")
    port = freeUDPPort()
    running = gateway(
        quicIni(port, routes=[("one.example", "one")], upstreams={"one": one.address})
    )
    initial = realInitial("nobody.example")
    sent = parseLongHeader(initial)
    answers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for attempt in range(4):  # the client's retransmissions
            sock.sendto(initial, ("127.0.0.1", port))
            if attempt < 3:
                answers.append(sock.recv(2048))
        (entry,) = running.waitForEntries(1)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # three answers, no more
            sock.recv(2048)
    pair = CryptoPair()
    pair.setup_initial(cid=sent.dcid, is_client=True, version=sent.version)
    for answer in answers:
        header = parseLongHeader(answer)
        assert (header.dcid, header.scid) == (sent.scid, sent.dcid)
        _, payload, _ = pair.decrypt_packet(answer, header.headerLength, 0)
        assert payload[:4] == bytes([0x1C, 0x02, 0x00, 0x00])
    assert (entry["status"], entry["sni"], entry["transport"]) == (
        "no_route",
        "nobody.example",
        "udp",
    )
    assert entry["quic_version"] == "v1"
    assert (entry["packets_out"], entry["bytes_out"]) == (1, len(answers[0]))
    assert len(running.accessLog()) == 1

    started = time.monotonic()
    result = h3Get(ca, port, "nobody.example", "--timeout", "10")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result
    assert "ConnectionError" in result.stderr, result.stderr
    # Refused, not timed out (10 s): ConnectionError, well before then.
    assert elapsed < 8, f"the client waited {elapsed:.1f}s"
    waitUntil(lambda: len(running.accessLog()) == 2)
    assert running.accessLog()[1]["status"] == "no_route"
