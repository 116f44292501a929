"""
End-to-end tests of QUIC passthrough: a real gateway process, aioquic
HTTP/3 backends and clients, datagrams on loopback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import GatewayStarter
from tests.integration.harness import CertificateAuthority
from tests.integration.quic import H3Backend, freeUDPPort, h3Get, quicIni

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
