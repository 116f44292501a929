"""
A fleet of gateways through etcd, end to end: real C{tlsgateway run}
replicas with C{[cluster]}, a throwaway etcd (Debian's C{etcd-server}),
tenants written with C{etcdctl}, real TLS clients.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .backends import waitUntil
from .conftest import BackendStarter, GatewayStarter
from .etcd import Etcd, runningEtcd
from .harness import Gateway, freePort, httpsFetch, okBody, runCommand

PREFIX = "/tlsgateway/"


def fleetIni(port: int, statusPort: int, etcdURL: str, name: str, app: str) -> str:
    return f"""\
[gateway]
access_log = access.log
access_log_format = json
metrics = tcp:{statusPort}:interface=127.0.0.1

[listener:web]
listen = tcp:{port}:interface=127.0.0.1
routes =
    www.example.com app

[upstream:app]
servers = {app}

[cluster]
etcd = {etcdURL}
name = {name}
lease_ttl = 3s
"""


@pytest.fixture(name="etcd")
def etcdServer(tmp_path: Path) -> Iterator[Etcd]:
    with runningEtcd(tmp_path / "etcd") as server:
        yield server


class Replica:
    """
    One gateway of the fleet: its process, its listener and status ports.
    """

    def __init__(self, process: Gateway, statusPort: int, name: str) -> None:
        self.process = process
        self.port = process.port
        self.statusPort = statusPort
        self.name = name

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.statusPort}/status.json"
        with urllib.request.urlopen(url, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def page(self) -> str:
        url = f"http://127.0.0.1:{self.statusPort}/status"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())


def startFleet(
    gateway: GatewayStarter, etcd: Etcd, app: str, count: int = 2
) -> list[Replica]:
    """
    C{count} replicas, every second one run as C{twistd -n tlsgateway},
    the others as C{tlsgateway run} (C{python -m gateway run}).
    """
    replicas = []
    for number in range(1, count + 1):
        port, statusPort, name = freePort(), freePort(), f"edge-{number}"
        process = gateway(
            fleetIni(port, statusPort, etcd.url, name, app),
            command="twistd" if number % 2 == 0 else "module",
        )
        replicas.append(Replica(process, statusPort, name))
    for replica in replicas:
        waitUntil(
            lambda: replica.status()["cluster"]["members"],
            10,
            lambda: replica.process.explain(),
        )
    return replicas


def routedTo(port: int, client: ssl.SSLContext, name: str) -> str | None:
    """
    The body the backend behind C{name} answers through the gateway, or
    L{None} when the gateway does not route C{name}.
    """
    try:
        response, _, _ = httpsFetch(port, client, name, name)
    except (OSError, ssl.SSLError):
        return None
    return okBody(response) if response else None


def echoes(port: int, client: ssl.SSLContext, name: str) -> bool:
    """
    Whether a new connection for C{name} reaches an echo backend.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname=name) as stream,
    ):
        stream.sendall(b"ping\n")
        return stream.recv(100) == b"ping\n"


def test_aTenantAddedWithEtcdctlIsRoutedOnEveryReplicaThenRemoved(
    gateway: GatewayStarter,
    backend: BackendStarter,
    client: ssl.SSLContext,
    etcd: Etcd,
) -> None:
    app = backend("app", mode="echo", names=["www.example.com"])
    tenant = backend("tenant", names=["tenant.example.com"])
    replicas = startFleet(gateway, etcd, app.address)
    # An established connection, through each replica, that must survive.
    streams = []
    for replica in replicas:
        raw = socket.create_connection(("127.0.0.1", replica.port), timeout=10)
        stream = client.wrap_socket(raw, server_hostname="www.example.com")
        stream.sendall(b"before\n")
        assert stream.recv(100) == b"before\n"
        streams.append(stream)
    for replica in replicas:
        assert routedTo(replica.port, client, "tenant.example.com") is None

    etcd.ctl("put", PREFIX + "upstreams/tenant", f"servers = {tenant.address}")
    etcd.ctl("put", PREFIX + "routes/web/tenant.example.com", "tenant")
    written = time.monotonic()
    for replica in replicas:
        waitUntil(
            lambda: routedTo(replica.port, client, "tenant.example.com") == "tenant",
            2.0 - (time.monotonic() - written),
            lambda: "not routed within 2 s of the write\n" + replica.process.explain(),
        )
    for replica in replicas:
        status = replica.status()["cluster"]
        assert status["applied"] == [
            "upstreams/tenant",
            "routes/web/tenant.example.com",
        ]
        assert status["refused"] == []

    etcd.ctl("del", PREFIX + "routes/web/tenant.example.com")
    deleted = time.monotonic()
    for replica in replicas:
        waitUntil(
            lambda: routedTo(replica.port, client, "tenant.example.com") is None,
            2.0 - (time.monotonic() - deleted),
            lambda: "still routed 2 s after the delete\n" + replica.process.explain(),
        )
        # The file's own route never moved.
        assert echoes(replica.port, client, "www.example.com")
    for stream in streams:
        stream.sendall(b"after\n")
        assert stream.recv(100) == b"after\n"
        stream.close()


def test_aBadValueIsRefusedAloneTheRestApplies(
    gateway: GatewayStarter,
    backend: BackendStarter,
    client: ssl.SSLContext,
    etcd: Etcd,
) -> None:
    app = backend("app", names=["www.example.com"])
    tenant = backend("tenant", names=["good.example.com"])
    etcd.ctl("put", PREFIX + "upstreams/good", f"servers = {tenant.address}")
    etcd.ctl("put", PREFIX + "upstreams/broken", "servers = 127.0.0.1:1 weight=0")
    etcd.ctl("put", PREFIX + "upstreams/app", "servers = 127.0.0.1:1")
    etcd.ctl("put", PREFIX + "routes/web/bad.example.com", "nowhere")
    etcd.ctl("put", PREFIX + "routes/web/www.example.com", "good")
    etcd.ctl("put", PREFIX + "routes/web/good.example.com", "good")
    replicas = startFleet(gateway, etcd, app.address)
    for replica in replicas:
        waitUntil(
            lambda: routedTo(replica.port, client, "good.example.com") == "tenant",
            10,
            replica.process.explain,
        )
        # The file wins for its own pattern.
        assert routedTo(replica.port, client, "www.example.com") == "app"
        cluster = replica.status()["cluster"]
        assert cluster["applied"] == ["upstreams/good", "routes/web/good.example.com"]
        refused = {r["key"]: r["reason"] for r in cluster["refused"]}
        assert sorted(refused) == [
            "routes/web/bad.example.com",
            "routes/web/www.example.com",
            "upstreams/app",
            "upstreams/broken",
        ]
        assert (
            "upstream 'nowhere' is not defined" in refused["routes/web/bad.example.com"]
        )
        assert "0 is too small" in refused["upstreams/broken"]
        page = replica.page()
        assert "/tlsgateway/routes/web/bad.example.com" in page
        replica.process.waitForOutput(
            "cluster key /tlsgateway/routes/web/bad.example.com refused"
        )


def memberNames(replica: Replica) -> list[str]:
    return [member["name"] for member in replica.status()["cluster"]["members"]]


def test_membersAreListedAndAKilledReplicaDisappearsAfterItsLease(
    gateway: GatewayStarter,
    backend: BackendStarter,
    etcd: Etcd,
) -> None:
    app = backend("app", names=["www.example.com"])
    one, two, three = startFleet(gateway, etcd, app.address, count=3)
    for replica in (one, two, three):
        waitUntil(
            lambda: memberNames(replica) == ["edge-1", "edge-2", "edge-3"],
            10,
            replica.process.explain,
        )
    members = {m["name"]: m for m in one.status()["cluster"]["members"]}
    assert members["edge-2"]["listeners"] == {
        "web": [f"tcp:{two.port}:interface=127.0.0.1"]
    }
    assert members["edge-2"]["pid"] == two.process.pid
    assert members["edge-2"]["version"]
    assert members["edge-2"]["started"]
    waitUntil(
        lambda: all(
            (m.get("last_reload") or {}).get("result") == "applied"
            for m in one.status()["cluster"]["members"]
        ),
        10,
        "a member without its last reload",
    )
    assert "edge-3" in one.page()

    # SIGKILL: no goodbye; the key goes when the lease (3 s) runs out.
    two.process.kill()
    for replica in (one, three):
        waitUntil(
            lambda: memberNames(replica) == ["edge-1", "edge-3"],
            3 + 10,
            replica.process.explain,
        )
    # A clean stop gives the lease back: gone at once.
    three.process.stop()
    assert "edge-3" not in etcd.ctl("get", "--prefix", PREFIX + "members/")
    waitUntil(lambda: memberNames(one) == ["edge-1"], 5, one.process.explain)


def test_etcdStoppedUnderLoadNothingFailsAndItCatchesUpOnReturn(
    gateway: GatewayStarter,
    backend: BackendStarter,
    client: ssl.SSLContext,
    etcd: Etcd,
) -> None:
    import threading

    app = backend("app", names=["www.example.com"])
    late = backend("late", names=["late.example.com"])
    etcd.ctl("put", PREFIX + "upstreams/late", f"servers = {late.address}")
    replicas = startFleet(gateway, etcd, app.address)
    done = threading.Event()
    outcomes: list[str | None] = []

    def load() -> None:
        deadline = time.monotonic() + 90
        for turn in range(5000):
            if done.is_set() or time.monotonic() > deadline:
                return
            replica = replicas[turn % len(replicas)]
            outcomes.append(routedTo(replica.port, client, "www.example.com"))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        etcd.stop()
        for replica in replicas:
            waitUntil(
                lambda: not replica.status()["cluster"]["reachable"],
                10,
                replica.process.explain,
            )
            assert "etcd unreachable since" in replica.page()
        time.sleep(3)  # several retries, each failing
        for replica in replicas:
            assert replica.process.output().count("etcd unreachable") == 1
        etcd.start()
        etcd.ctl("put", PREFIX + "routes/web/late.example.com", "late")
        for replica in replicas:
            waitUntil(
                lambda: routedTo(replica.port, client, "late.example.com") == "late",
                15,
                replica.process.explain,
            )
            assert replica.status()["cluster"]["reachable"]
            replica.process.waitForOutput("etcd answers again")
    finally:
        done.set()
        worker.join(30)
    assert outcomes
    assert set(outcomes) == {"app"}, f"{outcomes.count(None)} of {len(outcomes)} failed"
    for replica in replicas:
        waitUntil(
            lambda: memberNames(replica) == ["edge-1", "edge-2"],
            10,
            replica.process.explain,
        )


def test_tlsgatewayClusterListsWhatTheClusterAdds(
    gateway: GatewayStarter,
    backend: BackendStarter,
    etcd: Etcd,
) -> None:
    app = backend("app", names=["www.example.com"])
    (replica,) = startFleet(gateway, etcd, app.address, count=1)
    etcd.ctl(
        "put",
        PREFIX + "upstreams/tenant",
        "servers =\n 127.0.0.1:9100\n 127.0.0.1:9101",
    )
    etcd.ctl("put", PREFIX + "routes/web/tenant.example.com", "tenant terminate")
    etcd.ctl("put", PREFIX + "routes/web/a.example.com", "tenant")
    config = str(replica.process.configPath)
    command = [sys.executable, "-m", "gateway", "cluster", "--config", config]
    shown = runCommand(command, replica.process.directory)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"etcd {etcd.url}, prefix {PREFIX} (revision ")
    assert lines[1] == "members (1):"
    assert lines[2].startswith(f"  edge-1  pid {replica.process.pid} on ")
    assert lines[3:] == [
        "applied (2):",
        f"  {PREFIX}upstreams/tenant = servers = | 127.0.0.1:9100 | 127.0.0.1:9101",
        f"  {PREFIX}routes/web/a.example.com = tenant",
        "refused (1):",
        f"  {PREFIX}routes/web/tenant.example.com: terminates TLS, but the listener"
        " has no certificate and private_key or certificates",
    ]
    asJSON = runCommand([*command, "--json"], replica.process.directory)
    report = json.loads(asJSON.stdout)
    assert report["applied"] == {
        "upstreams/tenant": "servers =\n 127.0.0.1:9100\n 127.0.0.1:9101",
        "routes/web/a.example.com": "tenant",
    }
    assert [m["name"] for m in report["members"]] == ["edge-1"]
    etcd.stop()
    away = runCommand(command, replica.process.directory)
    assert away.returncode == 1
    assert away.stderr.startswith("etcd: ")


def test_aReplicaStartedWhileEtcdIsDownServesItsFileThenCatchesUp(
    gateway: GatewayStarter,
    backend: BackendStarter,
    client: ssl.SSLContext,
    etcd: Etcd,
) -> None:
    app = backend("app", names=["www.example.com"])
    late = backend("late", names=["late.example.com"])
    etcd.ctl("put", PREFIX + "upstreams/late", f"servers = {late.address}")
    etcd.ctl("put", PREFIX + "routes/web/late.example.com", "late")
    etcd.stop()
    port, statusPort = freePort(), freePort()
    process = gateway(fleetIni(port, statusPort, etcd.url, "edge-1", app.address))
    replica = Replica(process, statusPort, "edge-1")
    assert routedTo(port, client, "www.example.com") == "app"
    waitUntil(lambda: not replica.status()["cluster"]["reachable"], 10, process.explain)
    assert routedTo(port, client, "late.example.com") is None
    etcd.start()
    waitUntil(
        lambda: routedTo(port, client, "late.example.com") == "late",
        15,
        process.explain,
    )
    waitUntil(lambda: memberNames(replica) == ["edge-1"], 10, process.explain)
    assert replica.status()["cluster"]["reachable"]
