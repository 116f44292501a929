"""
End-to-end tests of QUIC passthrough: a real gateway process, aioquic
HTTP/3 backends and clients, datagrams on loopback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import GatewayStarter
from tests.integration.harness import CertificateAuthority, freePort
from tests.integration.quic import (
    H3Backend,
    fetchMetrics,
    freeUDPPort,
    h3Get,
    longHeader,
    metricValue,
    quicIni,
    waitUntil,
)

H3Starter = Callable[..., H3Backend]


@pytest.fixture
def h3backend(ca: CertificateAuthority) -> Iterator[H3Starter]:
    started: list[H3Backend] = []

    def start(name: str, **options: bool) -> H3Backend:
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
        )
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
