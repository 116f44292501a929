"""
ACME for a fleet, end to end: three C{tlsgateway run} replicas with
C{[cluster]} and C{[acme]}, a throwaway etcd and pebble.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from .backends import waitUntil
from .conftest import BackendStarter, GatewayStarter
from .etcd import Etcd, runningEtcd
from .harness import Gateway, freePort, httpsFetch, okBody
from .pebble import ChallengeDNS, Pebble

NAME = "site.example.test"
PREFIX = "/tlsgateway/"
ISSUED = "acme: issued certificate site"


@pytest.fixture(name="etcd")
def etcdServer(tmp_path: Path) -> Iterator[Etcd]:
    with runningEtcd(tmp_path / "etcd") as server:
        yield server


@pytest.fixture(name="dns")
def challengeDNS(tmp_path: Path) -> Iterator[ChallengeDNS]:
    (tmp_path / "dns").mkdir()
    dns = ChallengeDNS(tmp_path / "dns")
    yield dns
    dns.stop()


def replicaIni(
    port: int,
    directory: str,
    caBundle: str,
    state: Path,
    etcd: Etcd,
    name: str,
    plain: str,
) -> str:
    return f"""\
[gateway]
access_log = access.log
access_log_format = json

[acme]
directory = {directory}
state_dir = {state}
ca_bundle = {caBundle}

[certificate:site]
acme = on
names = {NAME}

[listener:secure]
listen = tcp:{port}:interface=127.0.0.1
mode = terminate
upstream = plain
certificates = site

[upstream:plain]
servers = {plain}

[cluster]
etcd = {etcd.url}
name = {name}
lease_ttl = 3s
"""


def served(port: int, roots: ssl.SSLContext) -> bytes | None:
    """
    The DER of the certificate served for L{NAME}, or L{None} while there
    is none the CA's root verifies.
    """
    try:
        response, _, der = httpsFetch(port, roots, NAME, NAME)
    except (OSError, ssl.SSLError):
        return None
    assert okBody(response) == "plain"
    return der


def test_oneIssuanceForThreeReplicasEveryOneServingIt(
    gateway: GatewayStarter,
    backend: BackendStarter,
    etcd: Etcd,
    dns: ChallengeDNS,
    tmp_path: Path,
) -> None:
    """
    pebble validates on the first replica's port only, as a CA's
    validation reaches whichever replica the balancer picks; that replica
    is given an ACME directory that does not answer, so another replica
    orders and the first answers that order's challenge from etcd.
    """
    plain = backend("plain", tls=False)
    ports = [freePort() for _ in range(3)]
    (tmp_path / "pebble").mkdir()
    server = Pebble(tmp_path / "pebble", dns, ports[0])
    try:
        dead = f"https://127.0.0.1:{freePort()}/dir"
        replicas: list[Gateway] = []
        for number, port in enumerate(ports, start=1):
            replicas.append(
                gateway(
                    replicaIni(
                        port,
                        dead if number == 1 else server.directory,
                        str(server.caBundle),
                        tmp_path / f"state{number}",
                        etcd,
                        f"edge-{number}",
                        plain.address,
                    ),
                    command="module",
                )
            )
        roots = server.rootContext()
        for replica, port in zip(replicas, ports, strict=True):
            waitUntil(
                lambda port=port: served(port, roots) is not None,
                90,
                replica.explain,
            )
        certificates = {served(port, roots) for port in ports}
        assert len(certificates) == 1
        assert server.issued() == 1, server.output()
        issuers = [r for r in replicas if ISSUED in r.output()]
        assert len(issuers) == 1
        assert issuers[0] is not replicas[0]
        stored = etcd.ctl("get", "--prefix", "--keys-only", PREFIX + "acme/")
        assert stored.split() == [PREFIX + "acme/certs/site"]
    finally:
        server.stop()
