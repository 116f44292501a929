"""
ACME for a fleet, end to end: three C{tlsgateway run} replicas with
C{[cluster]} and C{[acme]}, a throwaway etcd and pebble.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
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
    renewBefore: str = "30d",
) -> str:
    return f"""\
[gateway]
access_log = access.log
access_log_format = json

[acme]
directory = {directory}
state_dir = {state}
ca_bundle = {caBundle}
renew_before = {renewBefore}

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
                lambda: served(port, roots) is not None,
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


def startReplicas(
    gateway: GatewayStarter,
    server: Pebble,
    etcd: Etcd,
    ports: list[int],
    tmp_path: Path,
    plain: str,
    deadDirectory: Collection[int] = (),
    renewBefore: str = "30d",
    first: int = 1,
) -> list[Gateway]:
    """
    Start a replica per port, C{edge-FIRST} first (the one on pebble's
    validation port: it must be up before anyone orders).
    """
    dead = f"https://127.0.0.1:{freePort()}/dir"
    started: dict[int, Gateway] = {}
    numbers = range(1, len(ports) + 1)
    for number in sorted(numbers, key=lambda n: n != first):
        started[number] = gateway(
            replicaIni(
                ports[number - 1],
                dead if number in deadDirectory else server.directory,
                str(server.caBundle),
                tmp_path / f"state{number}",
                etcd,
                f"edge-{number}",
                plain,
                renewBefore,
            ),
            command="module",
        )
    return [started[number] for number in numbers]


def test_aRenewalReachesEveryReplicaWithoutOrdersOfTheirOwn(
    gateway: GatewayStarter,
    backend: BackendStarter,
    etcd: Etcd,
    dns: ChallengeDNS,
    tmp_path: Path,
) -> None:
    """
    30-second certificates renewed with 20 seconds left: one replica
    renews, every replica serves the new certificate within 5 seconds of
    the first that does.
    """
    plain = backend("plain", tls=False)
    ports = [freePort() for _ in range(3)]
    (tmp_path / "pebble").mkdir()
    server = Pebble(tmp_path / "pebble", dns, ports[0], validity=30)
    try:
        replicas = startReplicas(
            gateway, server, etcd, ports, tmp_path, plain.address, renewBefore="20s"
        )
        roots = server.rootContext()
        for replica, port in zip(replicas, ports, strict=True):
            waitUntil(lambda: served(port, roots), 90, replica.explain)
        (first,) = {served(port, roots) for port in ports}
        assert server.issued() == 1
        changed: list[int] = []

        def anyRenewed() -> bool:
            changed[:] = [p for p in ports if served(p, roots) not in (first, None)]
            return bool(changed)

        waitUntil(anyRenewed, 40, lambda: "\n".join(r.explain() for r in replicas))
        renewed = served(changed[0], roots)
        for replica, port in zip(replicas, ports, strict=True):
            waitUntil(
                lambda: served(port, roots) == renewed,
                5,
                replica.explain,
            )
        assert server.issued() == 2, server.output()
        lines = sum(
            r.output().count("acme: renewed certificate site") for r in replicas
        )
        assert lines == 1
    finally:
        server.stop()


class KillOnChallenge(threading.Thread):
    """
    Follows the prefix with C{etcdctl watch -w json} and, the moment a
    challenge is published, kills (SIGKILL) the process whose lease holds
    it: the member keys, leased too, say which pid a lease is.  Bounded:
    gives up after C{timeout} seconds.
    """

    def __init__(self, etcd: Etcd, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.watcher = subprocess.Popen(
            [
                "etcdctl",
                f"--endpoints={etcd.url}",
                "watch",
                "--prefix",
                PREFIX,
                "-w",
                "json",
            ],
            env={**os.environ, "ETCDCTL_API": "3"},
            stdout=subprocess.PIPE,
        )
        self.deadline = time.monotonic() + timeout
        self.killed: int | None = None

    def run(self) -> None:
        pids: dict[int, int] = {}
        stream = self.watcher.stdout
        assert stream is not None
        while self.killed is None and time.monotonic() < self.deadline:
            ready, _, _ = select.select([stream], [], [], 0.5)
            if not ready:
                continue
            line = stream.readline()
            if not line:
                return
            for event in json.loads(line).get("Events") or []:
                kv = event.get("kv", {})
                key = base64.b64decode(kv.get("key", "")).decode()
                if event.get("type") == 1:  # DELETE
                    continue
                if key.startswith(PREFIX + "members/"):
                    pids[kv["lease"]] = json.loads(base64.b64decode(kv["value"]))["pid"]
                elif key.startswith(PREFIX + "acme/challenges/"):
                    self.killed = pids[kv["lease"]]
                    os.kill(self.killed, signal.SIGKILL)
                    return

    def stop(self) -> None:
        self.watcher.kill()
        self.watcher.wait(5)
        self.join(5)


def test_theOrderingReplicaKilledMidOrderAnotherCompletesIt(
    gateway: GatewayStarter,
    backend: BackendStarter,
    etcd: Etcd,
    dns: ChallengeDNS,
    tmp_path: Path,
) -> None:
    """
    The replica holding the order lock is killed (SIGKILL) the moment its
    challenge shows up in etcd: its lock and challenge lapse with its lease
    (3 s), and another replica orders and serves; so does the third, which
    answers every validation (pebble's port) and orders nothing itself
    (its ACME directory does not answer).
    """
    plain = backend("plain", tls=False)
    ports = [freePort() for _ in range(3)]
    (tmp_path / "pebble").mkdir()
    server = Pebble(tmp_path / "pebble", dns, ports[2])
    killer = KillOnChallenge(etcd)
    killer.start()
    try:
        replicas = startReplicas(
            gateway,
            server,
            etcd,
            ports,
            tmp_path,
            plain.address,
            deadDirectory={3},
            first=3,
        )
        killer.join(60)
        assert killer.killed is not None, "no challenge published within 60 s"
        (victim,) = [r for r in replicas if r.pid == killer.killed]
        assert victim is not replicas[2]
        survivors = [
            (r, p) for r, p in zip(replicas, ports, strict=True) if r is not victim
        ]
        roots = server.rootContext()
        for replica, port in survivors:
            waitUntil(lambda: served(port, roots), 60, replica.explain)
        assert len({served(port, roots) for _, port in survivors}) == 1
        assert ISSUED not in victim.output()
        assert sum(ISSUED in r.output() for r, _ in survivors) == 1
        assert server.issued() == 1, server.output()
    finally:
        killer.stop()
        server.stop()
