"""
C{protocol = postgres} and C{mode = tcp}, end to end: real PostgreSQL
servers (L{tests.integration.postgres}) behind a real gateway process,
reached by stock C{psql} and C{pgbench}, and a MariaDB server (or a small
server-speaks-first backend) behind a C{mode = tcp} listener.

What is shown: SNI routing of two clusters on one port in passthrough, with
the client verifying each database server's own certificate (and the same
with PostgreSQL 17's C{sslnegotiation=direct}); termination with the
gateway's certificate, to a plaintext upstream and re-encrypted (with what
that means for SCRAM channel binding); the database user and name in the
access log; plaintext refused with an error psql prints, and accepted with
C{allow_plaintext}; a query cancelled with Ctrl-C through a terminating
gateway, whose C{CancelRequest} carries no name and must find its server by
its key; pgbench through passthrough and termination, compared with a
direct connection.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from .harness import (
    CertificateAuthority,
    Gateway,
    ServerCertificate,
    freePort,
    iniSection,
)
from .mariadb import MariaDBServer, Unavailable
from .postgres import (
    COMMAND_TIMEOUT,
    Installation,
    PostgresCluster,
    PsqlResult,
    conninfo,
    runPsql,
)

pytestmark = pytest.mark.timeout(120)

GatewayStarter = Callable[..., Gateway]
ClusterStarter = Callable[..., PostgresCluster]

WHO = (
    "SELECT current_setting('cluster_name') || ' ' || (SELECT CASE WHEN ssl "
    "THEN 'tls' ELSE 'plain' END FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)
"""Which server a session reached, and whether that server sees TLS."""

PGBENCH_SECONDS = 5


# -- configuration ---------------------------------------------------------------


def gatewayIni(
    listeners: Mapping[str, Mapping[str, str | Sequence[str]]],
    upstreams: Mapping[str, Mapping[str, str | Sequence[str]]],
) -> str:
    """
    A gateway with a JSON access log; each listener listens on a fresh
    loopback port (C{listen} is added).
    """
    text = iniSection(
        "gateway", {"access_log": "access.log", "access_log_format": "json"}
    )
    for name, keys in listeners.items():
        listen = {"listen": f"tcp:{freePort()}:interface=127.0.0.1"}
        text += "\n" + iniSection(f"listener:{name}", {**listen, **keys})
    for name, keys in upstreams.items():
        text += "\n" + iniSection(f"upstream:{name}", keys)
    return text


def servers(cluster: PostgresCluster) -> dict[str, str]:
    return {"servers": f"{cluster.host}:{cluster.port}"}


def reencrypted(cluster: PostgresCluster, ca: CertificateAuthority) -> dict[str, str]:
    return {
        **servers(cluster),
        "tls": "on",
        "tls_ca": str(ca.pemPath),
        "tls_server_name": cluster.serverName,
    }


def termination(certificate: ServerCertificate) -> dict[str, str]:
    return {
        "mode": "terminate",
        "certificate": str(certificate.certificatePath),
        "private_key": str(certificate.privateKeyPath),
    }


def waitForEntries(
    gateway: Gateway, listener: str, count: int, timeout: float = 10.0
) -> list[dict[str, object]]:
    """
    The first C{count} access-log entries of C{listener}, polling, in the
    order the connections were accepted (lines are written when they end,
    and a client may leave before the gateway is done with its upstream).
    """
    found = gateway.waitForEntries(
        count, timeout, predicate=lambda entry: entry["listener"] == listener
    )
    return sorted(found, key=lambda entry: str(entry["time"]))[:count]


def assertReached(result: PsqlResult, expected: str) -> None:
    assert (result.returncode, result.value) == (0, expected), result.explain()


# -- servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def clusters(
    ca: CertificateAuthority,
    pgdebian: Installation,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """
    Two clusters, C{db1} and C{db2} (certificates for C{db1.test} and
    C{db2.test}), shared by the tests of this module that do not need
    PostgreSQL 17.  Both also accept plaintext (C{hostnossl}) so that a
    terminating gateway can reach them without TLS; whether a session
    arrived over TLS is read from C{pg_stat_ssl} on the server.
    """
    directory = tmp_path_factory.mktemp("clusters")
    started: list[PostgresCluster] = []
    try:
        for name in ("db1", "db2"):
            cluster = PostgresCluster(
                pgdebian,
                directory / name,
                ca.issue(f"{name}.test"),
                ca.pemPath,
                name=name,
                allowPlaintext=True,
            )
            started.append(cluster)
            cluster.start()
        yield started[0], started[1]
    finally:
        for cluster in started:
            cluster.stop()


@pytest.fixture(scope="module")
def gatewayCertificate(ca: CertificateAuthority) -> ServerCertificate:
    """The terminating gateway's own certificate, for both database names."""
    return ca.issue("db1.test", "db2.test")


# -- passthrough -----------------------------------------------------------------


def test_passthroughRoutesTwoClustersBySNI(
    clusters: tuple[PostgresCluster, PostgresCluster], gateway: GatewayStarter
) -> None:
    db1, db2 = clusters
    gw = gateway(
        gatewayIni(
            {
                "pg": {
                    "protocol": "postgres",
                    "routes": ["db1.test one", "db2.test two"],
                },
                "open": {
                    "protocol": "postgres",
                    "allow_plaintext": "on",
                    "upstream": "one",
                },
            },
            {"one": servers(db1), "two": servers(db2)},
        )
    )
    port, openPort = gw.ports["pg"], gw.ports["open"]
    # verify-full against each server's own certificate: the gateway has
    # none, so this is end to end.
    assertReached(db1.psql(WHO, port=port), "db1 tls")
    assertReached(db2.psql(WHO, port=port), "db2 tls")
    # The same name with the other server's address is still routed by name.
    assertReached(db2.psql(WHO, port=port, host="db2.test"), "db2 tls")

    refused = db1.psql(WHO, port=port, sslmode="disable")
    assert refused.returncode != 0, refused.explain()
    assert "FATAL:  this gateway accepts PostgreSQL connections over TLS only" in (
        refused.stderr
    ), refused.explain()

    allowed = db1.psql(WHO, port=openPort, sslmode="disable")
    assertReached(allowed, "db1 plain")

    first, second, third, refusal = waitForEntries(gw, "pg", 4)
    for entry, name, cluster in (
        (first, "db1.test", db1),
        (second, "db2.test", db2),
        (third, "db2.test", db2),
    ):
        assert (entry["action"], entry["status"], entry["sni"]) == (
            "passthrough",
            "ok",
            name,
        )
        assert entry["upstream"] == f"127.0.0.1:{cluster.port}"
        assert "db_user" not in entry  # encrypted end to end: never read
    assert (refusal["status"], refusal["action"]) == ("plaintext_refused", None)
    assert (refusal["db_user"], refusal["db_name"]) == ("tlsgw", "postgres")
    [plain] = waitForEntries(gw, "open", 1)
    assert (plain["action"], plain["status"], plain["sni"]) == ("tcp", "ok", None)
    assert (plain["db_user"], plain["db_name"]) == ("tlsgw", "postgres")
    assert db1.password not in gw.accessLogPath.read_text()


def test_directTLSWithPostgres17(
    pg17: Installation,
    pgcluster: ClusterStarter,
    gateway: GatewayStarter,
    gatewayCertificate: ServerCertificate,
) -> None:
    """
    C{sslnegotiation=direct}: the client starts with a ClientHello that
    offers ALPN C{postgresql}, which the server must select.  In
    passthrough the servers are PostgreSQL 17 for that reason (the gateway
    still sends them an C{SSLRequest}); a terminating gateway selects it
    itself, whatever the server behind it.
    """
    db1 = pgcluster("db1", installation=pg17, allowPlaintext=True)
    db2 = pgcluster("db2", installation=pg17)
    gw = gateway(
        gatewayIni(
            {
                "pg": {
                    "protocol": "postgres",
                    "routes": ["db1.test one", "db2.test two"],
                },
                "term": {
                    "protocol": "postgres",
                    "upstream": "one",
                    **termination(gatewayCertificate),
                },
            },
            {"one": servers(db1), "two": servers(db2)},
        )
    )
    pgPort = gw.ports["pg"]
    for cluster, expected in ((db1, "db1 tls"), (db2, "db2 tls")):
        reached = cluster.psql(WHO, client=pg17, port=pgPort, sslnegotiation="direct")
        assertReached(reached, expected)
    # The PostgreSQL 17 client with the traditional SSLRequest, too.
    assertReached(db2.psql(WHO, port=gw.ports["pg"], client=pg17), "db2 tls")
    assertReached(
        db1.psql(WHO, client=pg17, port=gw.ports["term"], sslnegotiation="direct"),
        "db1 plain",
    )

    for entry in waitForEntries(gw, "pg", 3):
        assert (entry["action"], entry["status"]) == ("passthrough", "ok")
        assert entry["alpn"] == ["postgresql"]
    [terminated] = waitForEntries(gw, "term", 1)
    assert (terminated["action"], terminated["status"]) == ("terminate", "ok")
    assert terminated["alpn_selected"] == "postgresql"


# -- termination -----------------------------------------------------------------


def test_terminationToPlaintextAndReencrypted(
    clusters: tuple[PostgresCluster, PostgresCluster],
    gateway: GatewayStarter,
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    db1, db2 = clusters
    gw = gateway(
        gatewayIni(
            {
                "term": {
                    "protocol": "postgres",
                    "routes": ["db1.test plain", "db2.test secure"],
                    **termination(gatewayCertificate),
                },
            },
            {"plain": servers(db1), "secure": reencrypted(db2, ca)},
        )
    )
    port = gw.ports["term"]
    # verify-full against the gateway's certificate (same CA, same names).
    assertReached(db1.psql(WHO, port=port), "db1 plain")
    # Re-encrypted: SCRAM channel binding would bind to the gateway's
    # certificate on the client's side and to the server's own on the
    # server's, so it must be off through a terminating gateway.
    bound = db2.psql(WHO, port=port, channel_binding="require")
    assert bound.returncode != 0, bound.explain()
    assert "channel binding" in bound.stderr, bound.explain()
    assertReached(db2.psql(WHO, port=port, channel_binding="disable"), "db2 tls")

    plain, boundEntry, secure = waitForEntries(gw, "term", 3)
    for entry, cluster in ((plain, db1), (boundEntry, db2), (secure, db2)):
        assert entry["action"] == "terminate"
        assert entry["upstream"] == f"127.0.0.1:{cluster.port}"
        assert (entry["db_user"], entry["db_name"]) == ("tlsgw", "postgres")
        assert entry["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert (plain["status"], secure["status"]) == ("ok", "ok")
    log = gw.accessLogPath.read_text()
    assert db1.password not in log
    assert db2.password not in log


def startPsql(
    cluster: PostgresCluster, sql: str, **overrides: object
) -> subprocess.Popen[str]:
    """C{psql} running C{sql} in the background, as L{runPsql} would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        LC_ALL="C",
        PGCONNECT_TIMEOUT="10",
        PGPASSFILE=os.path.join(os.devnull, "pgpass"),
        PGPASSWORD=cluster.password,
    )
    return subprocess.Popen(
        [
            str(cluster.installation.tool("psql")),
            "--no-psqlrc",
            "--no-align",
            "--tuples-only",
            "--no-password",
            f"--command={sql}",
            f"--dbname={cluster.conninfo(**overrides)}",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cancelThroughTermination(
    clusters: tuple[PostgresCluster, PostgresCluster],
    gateway: GatewayStarter,
    gatewayCertificate: ServerCertificate,
) -> None:
    """
    Ctrl-C in psql sends a C{CancelRequest} on a new plaintext connection
    to the same address: no TLS, no server name.  The default route leads
    to the other cluster, so the query ends early only if the gateway sent
    the cancel to the server whose C{BackendKeyData} it saw.
    """
    db1, db2 = clusters
    gw = gateway(
        gatewayIni(
            {
                "term": {
                    "protocol": "postgres",
                    "routes": ["db1.test one", "default two"],
                    **termination(gatewayCertificate),
                },
            },
            {"one": servers(db1), "two": servers(db2)},
        )
    )
    psql = startPsql(db1, "SELECT pg_sleep(30)", port=gw.ports["term"])
    try:
        deadline = time.monotonic() + 15
        while True:
            sleeping = db1.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            )
            if sleeping.value == "1":
                break
            assert psql.poll() is None, psql.communicate()
            assert time.monotonic() < deadline, sleeping.explain()
            time.sleep(0.1)
        started = time.monotonic()
        psql.send_signal(signal.SIGINT)
        _, stderr = psql.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait(5)
    assert "canceling statement due to user request" in stderr, (stderr, gw.explain())
    assert elapsed < 10, elapsed

    log = waitForEntries(gw, "term", 2)
    [cancel] = [e for e in log if e.get("reason") == "cancel request"]
    [session] = [e for e in log if e is not cancel]
    assert (cancel["action"], cancel["status"], cancel["sni"]) == ("tcp", "ok", None)
    assert cancel["upstream"] == session["upstream"] == f"127.0.0.1:{db1.port}"
    assert session["action"] == "terminate"


# -- pgbench ---------------------------------------------------------------------


def pgbench(cluster: PostgresCluster, *arguments: str, **overrides: object) -> str:
    """Run C{pgbench} with the cluster's connection, bounded; its output."""
    parameters = dict(
        re.findall(r"(\w+)='((?:\\.|[^'])*)'", cluster.conninfo(**overrides))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        LC_ALL="C",
        PGHOST=parameters["host"],
        PGHOSTADDR=parameters["hostaddr"],
        PGPORT=parameters["port"],
        PGUSER=parameters["user"],
        PGDATABASE=parameters["dbname"],
        PGSSLMODE=parameters["sslmode"],
        PGSSLROOTCERT=parameters["sslrootcert"],
        PGPASSWORD=cluster.password,
        PGPASSFILE=os.path.join(os.devnull, "pgpass"),
    )
    result = subprocess.run(
        [str(cluster.installation.tool("pgbench")), *arguments],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def transactionsPerSecond(output: str) -> float:
    match = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    assert match, output
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    assert failed is None or failed.group(1) == "0", output
    return float(match.group(1))


def test_pgbenchThroughPassthroughAndTermination(
    clusters: tuple[PostgresCluster, PostgresCluster],
    gateway: GatewayStarter,
    gatewayCertificate: ServerCertificate,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    db1, _ = clusters
    if not db1.installation.tool("pgbench").is_file():
        pytest.skip(f"no pgbench in {db1.installation.bin}")
    gw = gateway(
        gatewayIni(
            {
                "pass": {"protocol": "postgres", "upstream": "one"},
                "term": {
                    "protocol": "postgres",
                    "upstream": "one",
                    **termination(gatewayCertificate),
                },
            },
            {"one": servers(db1)},
        )
    )
    pgbench(db1, "--initialize", "--scale=1", "--quiet")
    # One client: each query waits for the one before, so the ratio is the
    # gateway's cost per round trip, and the run keeps one core busy, not
    # every core (the other tests of the suite run beside it).
    run = ["--select-only", "--client=1", f"--time={PGBENCH_SECONDS}", "--no-vacuum"]
    tps = {
        "direct": transactionsPerSecond(pgbench(db1, *run)),
        "passthrough": transactionsPerSecond(pgbench(db1, *run, port=gw.ports["pass"])),
        "termination": transactionsPerSecond(pgbench(db1, *run, port=gw.ports["term"])),
    }
    ratios = {mode: round(value / tps["direct"], 3) for mode, value in tps.items()}
    summary = {"seconds": PGBENCH_SECONDS, "tps": tps, "ratio_to_direct": ratios}
    record_property("pgbench", summary)
    (tmp_path / "pgbench.json").write_text(json.dumps(summary, indent=2))
    sys.stderr.write(f"\npgbench: {json.dumps(summary)}\n")
    assert all(value > 0 for value in tps.values()), summary
    for listener in ("pass", "term"):
        [session] = waitForEntries(gw, listener, 1)
        assert session["status"] == "ok", session


# -- mode = tcp ------------------------------------------------------------------


class GreetingServer:
    """
    A server that speaks first: it sends C{greeting} as soon as a client
    connects, then echoes every byte until EOF, like a tiny MySQL stand-in.
    """

    greeting = b"HELLO from a server that speaks first\n"

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(30)
        self.port: int = self._listener.getsockname()[1]
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
            with connection:
                connection.settimeout(30)
                connection.sendall(self.greeting)
                while data := connection.recv(65536):
                    connection.sendall(data)
                connection.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = e

    def stop(self) -> None:
        self._listener.close()
        self._thread.join(10)


def test_tcpModeRelaysAServerThatSpeaksFirst(gateway: GatewayStarter) -> None:
    server = GreetingServer()
    try:
        gw = gateway(
            gatewayIni(
                {"mysql": {"mode": "tcp", "upstream": "db"}},
                {"db": {"servers": f"127.0.0.1:{server.port}"}},
            )
        )
        with socket.create_connection(("127.0.0.1", gw.ports["mysql"]), 30) as sock:
            received = b""
            while len(received) < len(server.greeting):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            assert received == server.greeting  # before the client sent a byte
            sock.sendall(b"SELECT 1;")
            sock.shutdown(socket.SHUT_WR)
            echoed = b""
            while chunk := sock.recv(65536):
                echoed += chunk
        assert echoed == b"SELECT 1;"
    finally:
        server.stop()
    assert server.error is None, server.error
    [entry] = waitForEntries(gw, "mysql", 1)
    assert (entry["action"], entry["status"], entry["sni"]) == ("tcp", "ok", None)
    assert entry["upstream"] == f"127.0.0.1:{server.port}"
    assert (entry["bytes_in"], entry["bytes_out"]) == (9, len(server.greeting) + 9)


def test_mariadbThroughTCPMode(gateway: GatewayStarter, tmp_path: Path) -> None:
    try:
        server = MariaDBServer(tmp_path / "mariadb")
    except Unavailable as e:
        pytest.skip(str(e))
    server.start()
    try:
        gw = gateway(
            gatewayIni(
                {"mysql": {"mode": "tcp", "upstream": "db"}},
                {"db": {"servers": f"127.0.0.1:{server.port}"}},
            )
        )
        result = server.query(
            gw.ports["mysql"], "SELECT CONCAT('through ', 'the gateway')"
        )
        assert (result.returncode, result.stdout.strip()) == (
            0,
            "through the gateway",
        ), (
            result.stderr,
            gw.explain(),
        )
    finally:
        server.stop()
    [entry] = waitForEntries(gw, "mysql", 1)
    assert (entry["action"], entry["status"]) == ("tcp", "ok")
    assert entry["upstream"] == f"127.0.0.1:{server.port}"


def test_terminationWithEveryServerDownTellsPsqlWhy(
    gateway: GatewayStarter,
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
    pgdebian: Installation,
) -> None:
    """
    Every server of the routed upstream is down: psql prints the
    gateway's C{ErrorResponse}, naming the upstream and the last server's
    error, instead of "SSL connection has been closed unexpectedly".
    """
    dead = [f"127.0.0.1:{freePort()}" for _ in range(2)]
    gw = gateway(
        gatewayIni(
            {
                "term": {
                    "protocol": "postgres",
                    "routes": ["db1.test orders"],
                    **termination(gatewayCertificate),
                },
            },
            {"orders": {"servers": dead}},
        )
    )
    result = runPsql(
        pgdebian,
        conninfo(
            host="db1.test",
            hostaddr="127.0.0.1",
            port=gw.ports["term"],
            user="tlsgw",
            dbname="postgres",
            sslmode="verify-full",
            sslrootcert=ca.pemPath,
        ),
        "SELECT 1",
    )
    assert result.returncode != 0, result.explain()
    assert "cannot reach upstream 'orders'" in result.stderr, result.explain()
    assert any(server in result.stderr for server in dead), result.explain()
    assert "closed unexpectedly" not in result.stderr, result.explain()
    [entry] = waitForEntries(gw, "term", 1)
    assert entry["status"] == "upstream_unavailable", entry
    assert entry["action"] == "terminate", entry
