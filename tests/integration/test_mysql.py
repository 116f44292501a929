"""
C{protocol = mysql}, end to end: two throwaway MariaDB servers
(L{tests.integration.mariadb}; C{alpha} without TLS, C{beta} with TLS for
re-encryption) behind a real gateway process, reached by the stock
C{mariadb} command-line client, PyMySQL and mysql-connector-python.

What is shown: login and queries over TLS with the gateway's certificate,
each client verifying it; SNI routing (PyMySQL and mysql-connector-python
send the host name; the C{mariadb} client sends none and lands on the
default route), the routed server re-authenticating the client with its own
scramble; the server's own error for a wrong password; plaintext refused
with an error each client prints, and accepted with C{allow_plaintext};
re-encryption (the server's C{Ssl_cipher} shows its side is TLS); a 10 MB
value intact both ways; an upstream killed in the middle of a query; the
access log line of each.

The clients reach C{*.test} names through a test resolver: the pure-Python
drivers resolve with C{socket.getaddrinfo}, which this module points at
127.0.0.1 for those names only, so the host name (and SNI) is the route's
while the socket goes to the gateway on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql  # type: ignore[import-untyped]
import pytest

from .harness import (
    CertificateAuthority,
    Gateway,
    ServerCertificate,
    freePort,
    iniSection,
)
from .mariadb import MariaDBServer, Unavailable

pytestmark = pytest.mark.timeout(120)

GatewayStarter = Callable[..., Gateway]

USER, PASSWORD = "app", "s3cret-pw"

WHO = (
    "SELECT @@port, (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
    " WHERE VARIABLE_NAME = 'Ssl_cipher')"
)
"""Which server a session reached, and the cipher of its side (or empty)."""


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority
) -> Iterator[dict[str, MariaDBServer]]:
    """C{alpha} (no TLS) and C{beta} (TLS, certificate for C{beta.db})."""
    started: dict[str, MariaDBServer] = {}
    try:
        directory = tmp_path_factory.mktemp("mariadb")
        certificate = ca.issue("beta.db")
        for name, tls in (
            ("alpha", None),
            (
                "beta",
                (certificate.certificatePath, certificate.privateKeyPath, ca.pemPath),
            ),
        ):
            try:
                server = MariaDBServer(directory / name)
            except Unavailable as e:
                pytest.skip(str(e))
            server.start(tls=tls)
            started[name] = server
            server.addUser(USER, PASSWORD)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def gatewayCertificate(ca: CertificateAuthority) -> ServerCertificate:
    return ca.issue("alpha.test", "beta.test", "localhost", "127.0.0.1")


@pytest.fixture
def resolveTestNames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve C{*.test} to 127.0.0.1 (IPv4 only) in this process."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def mysqlIni(
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    certificate: ServerCertificate,
    **extra: dict[str, str | list[str]],
) -> str:
    """
    Listener C{mysql}: routes C{alpha.test} and the default to C{alpha},
    C{beta.test} to C{beta} (re-encrypted); listener C{plain}: one
    upstream, C{allow_plaintext = on}; plus C{extra} listeners.
    """
    tls = {
        "mode": "terminate",
        "protocol": "mysql",
        "certificate": str(certificate.certificatePath),
        "private_key": str(certificate.privateKeyPath),
    }
    listeners: dict[str, dict[str, str | list[str]]] = {
        "mysql": {
            **tls,
            "routes": ["alpha.test alpha", "beta.test beta", "default alpha"],
        },
        "plain": {**tls, "upstream": "alpha", "allow_plaintext": "on"},
        **extra,
    }
    text = iniSection(
        "gateway", {"access_log": "access.log", "access_log_format": "json"}
    )
    for name, keys in listeners.items():
        listen = {"listen": f"tcp:{freePort()}:interface=127.0.0.1"}
        text += "\n" + iniSection(f"listener:{name}", {**listen, **keys})
    text += "\n" + iniSection(
        "upstream:alpha", {"servers": f"127.0.0.1:{servers['alpha'].port}"}
    )
    text += "\n" + iniSection(
        "upstream:beta",
        {
            "servers": f"127.0.0.1:{servers['beta'].port}",
            "tls": "on",
            "tls_ca": str(ca.pemPath),
            "tls_server_name": "beta.db",
        },
    )
    return text


@pytest.fixture
def gw(
    gateway: GatewayStarter,
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> Gateway:
    return gateway(mysqlIni(servers, ca, gatewayCertificate))


def entries(gw: Gateway, listener: str, count: int) -> list[dict[str, Any]]:
    found = gw.waitForEntries(
        count, 10.0, predicate=lambda entry: entry["listener"] == listener
    )
    return sorted(found, key=lambda entry: str(entry["time"]))[:count]


def pymysqlConnect(
    gw: Gateway,
    ca: CertificateAuthority,
    host: str,
    listener: str = "mysql",
    *,
    password: str = PASSWORD,
    tls: bool = True,
) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=host,
        port=gw.ports[listener],
        user=USER,
        password=password,
        database="mysql",
        connect_timeout=10,
        read_timeout=30,
        ssl={"ca": str(ca.pemPath), "check_hostname": True} if tls else None,
        # PyMySQL 1.2+ tries TLS when the server offers it unless told not to.
        ssl_disabled=not tls,
    )


def who(connection: Any) -> tuple[int, str]:
    cursor = connection.cursor()
    cursor.execute(WHO)
    port, cipher = cursor.fetchone()
    return int(port), cipher or ""


def mariadbCLI(
    server: MariaDBServer, port: int, sql: str, *options: str, password: str = PASSWORD
) -> Any:

    return subprocess.run(
        [
            server.client,
            "--no-defaults",
            "--host=127.0.0.1",
            f"--port={port}",
            "--protocol=TCP",
            f"--user={USER}",
            f"--password={password}",
            "--batch",
            "--skip-column-names",
            "--connect-timeout=10",
            *options,
            f"--execute={sql}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- the mariadb command-line client ----------------------------------------------


def test_mariadbClientOverTLSLandsOnTheDefaultRoute(
    gw: Gateway, servers: dict[str, MariaDBServer], ca: CertificateAuthority
) -> None:
    alpha = servers["alpha"]
    result = mariadbCLI(
        alpha,
        gw.ports["mysql"],
        WHO + "; SELECT CONCAT('tls ', VARIABLE_VALUE) FROM"
        " information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_version'",
        "--ssl",
        f"--ssl-ca={ca.pemPath}",
        "--ssl-verify-server-cert",
    )
    assert result.returncode == 0, (result.stderr, gw.explain())
    lines = result.stdout.strip().splitlines()
    # alpha has no TLS: its side of the session is plaintext (empty cipher).
    assert lines[0].split("\t") == [str(alpha.port), ""]
    [entry] = entries(gw, "mysql", 1)
    assert (entry["action"], entry["status"], entry["sni"]) == ("terminate", "ok", None)
    assert entry["upstream"] == f"127.0.0.1:{alpha.port}"
    assert entry["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert entry["cipher"]
    assert entry["db_user"] == USER


def test_mariadbClientWithoutTLSIsRefused(
    gw: Gateway, servers: dict[str, MariaDBServer]
) -> None:
    result = mariadbCLI(servers["alpha"], gw.ports["mysql"], "SELECT 1", "--skip-ssl")
    assert result.returncode != 0
    assert "over TLS only" in result.stderr, result.stderr
    [entry] = entries(gw, "mysql", 1)
    assert entry["status"] == "plaintext_refused"
    assert entry["db_user"] == USER


def test_mariadbClientWithoutTLSIsAllowedWithAllowPlaintext(
    gw: Gateway, servers: dict[str, MariaDBServer]
) -> None:
    alpha = servers["alpha"]
    result = mariadbCLI(alpha, gw.ports["plain"], "SELECT @@port", "--skip-ssl")
    assert (result.returncode, result.stdout.strip()) == (0, str(alpha.port)), (
        result.stderr,
        gw.explain(),
    )
    [entry] = entries(gw, "plain", 1)
    assert (entry["action"], entry["status"]) == ("tcp", "ok")
    assert entry["bytes_in"] > 0
    assert entry["bytes_out"] > 0


# -- PyMySQL and mysql-connector-python: SNI routing and re-encryption -------------


@pytest.mark.usefixtures("resolveTestNames")
def test_pymysqlIsRoutedBySNIAndReauthenticated(
    gw: Gateway, servers: dict[str, MariaDBServer], ca: CertificateAuthority
) -> None:
    # The greeting comes from alpha (the default route); beta.test is beta,
    # whose own scramble the client must hash its password with.
    with pymysqlConnect(gw, ca, "beta.test") as connection:
        port, cipher = who(connection)
    assert port == servers["beta"].port
    assert cipher, "beta's side of the session is TLS: re-encrypted"
    with pymysqlConnect(gw, ca, "alpha.test") as connection:
        assert who(connection) == (servers["alpha"].port, "")
    beta, alpha = entries(gw, "mysql", 2)
    assert (beta["sni"], beta["upstream"], beta["status"]) == (
        "beta.test",
        f"127.0.0.1:{servers['beta'].port}",
        "ok",
    )
    assert beta["action"] == "terminate"
    assert beta["tls_version"]
    assert (alpha["sni"], alpha["upstream"]) == (
        "alpha.test",
        f"127.0.0.1:{servers['alpha'].port}",
    )


@pytest.mark.usefixtures("resolveTestNames")
def test_connectorIsRoutedBySNIAndReauthenticated(
    gw: Gateway, servers: dict[str, MariaDBServer], ca: CertificateAuthority
) -> None:
    connection = mysql.connector.connect(
        host="beta.test",
        port=gw.ports["mysql"],
        user=USER,
        password=PASSWORD,
        ssl_ca=str(ca.pemPath),
        ssl_verify_cert=True,
        ssl_verify_identity=True,
        use_pure=True,
        connection_timeout=10,
    )
    try:
        port, cipher = who(connection)
        # COM_CHANGE_USER: the client answers with the scramble it was
        # given last, the routed server's own.
        connection.cmd_change_user(username=USER, password=PASSWORD)
        assert who(connection) == (port, cipher)
    finally:
        connection.close()
    assert port == servers["beta"].port
    assert cipher
    [entry] = entries(gw, "mysql", 1)
    assert (entry["sni"], entry["status"]) == ("beta.test", "ok")


@pytest.mark.usefixtures("resolveTestNames")
@pytest.mark.parametrize("host", ["alpha.test", "beta.test"])
def test_wrongPasswordGetsTheServersAccessDenied(
    gw: Gateway, ca: CertificateAuthority, host: str
) -> None:
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysqlConnect(gw, ca, host, password="wrong")
    assert caught.value.args[0] == 1045, caught.value.args
    assert f"Access denied for user '{USER}'" in caught.value.args[1]
    assert time.monotonic() - started < 10, "refused, not timed out"
    [entry] = entries(gw, "mysql", 1)
    assert entry["status"] == "ok"
    assert "Access denied" in entry["reason"]


def test_pymysqlWithoutTLSIsRefused(gw: Gateway, ca: CertificateAuthority) -> None:
    with pytest.raises(pymysql.err.OperationalError) as caught:
        pymysqlConnect(gw, ca, "127.0.0.1", tls=False)
    assert caught.value.args[0] == 3159
    assert "over TLS only" in caught.value.args[1]
    [entry] = entries(gw, "mysql", 1)
    assert (entry["status"], entry["action"]) == ("plaintext_refused", None)


@pytest.mark.usefixtures("resolveTestNames")
def test_tenMegabytesBothWays(gw: Gateway, ca: CertificateAuthority) -> None:
    blob = hashlib.sha256(b"seed").digest() * (10 * 1024 * 1024 // 32)
    with pymysqlConnect(gw, ca, "beta.test") as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT MD5(%s), %s", (blob, blob))
        digest, echoed = cursor.fetchone()
    assert digest == hashlib.md5(blob).hexdigest()  # noqa: S324 - MySQL's MD5()
    assert echoed == blob
    [entry] = entries(gw, "mysql", 1)
    assert entry["bytes_in"] > len(blob)
    assert entry["bytes_out"] > len(blob)


class CountingPipe:
    """
    One client connection to the gateway carried through a socket pair by
    two threads that count the bytes each way as they cross the gateway's
    client socket: what its access log must say, to the byte.

    @ivar client: the client's end, for C{pymysql}'s C{connect(sock)}.
    """

    def __init__(self, port: int) -> None:
        self.client, self._near = socket.socketpair()
        self._far = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._near.settimeout(30)
        self.counts = {"sent": 0, "received": 0}
        self._threads = [
            threading.Thread(target=self._pump, args=ends, daemon=True)
            for ends in (
                (self._near, self._far, "sent"),
                (self._far, self._near, "received"),
            )
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, way: str) -> None:
        """
        Copy C{source} to C{sink} until its EOF.  What the gateway sends is
        counted as read from its socket, even once the client has gone (a
        last C{close_notify}); what the client sends, once written to it.
        """
        fromGateway = source is self._far
        delivering = True
        try:
            while data := source.recv(65536):
                if fromGateway:
                    self.counts[way] += len(data)
                if delivering:
                    try:
                        sink.sendall(data)
                    except OSError:
                        delivering = False
                        continue
                    if not fromGateway:
                        self.counts[way] += len(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def join(self) -> dict[str, int]:
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "the connection did not end"
        for end in (self._near, self._far):
            end.close()
        return self.counts


def test_bytesAreWhatCrossedTheClientsSocket(
    gw: Gateway, ca: CertificateAuthority
) -> None:
    """
    C{bytes_in} and C{bytes_out} are the bytes on the client's socket, to
    the byte: the greeting and the C{SSLRequest} in the clear, then TLS
    records, all counted by the connection's owner (and what it hands its
    count to), whichever stage wrote them.
    """
    pipe = CountingPipe(gw.ports["mysql"])
    connection = pymysql.connect(
        host="beta.test",
        user=USER,
        password=PASSWORD,
        database="mysql",
        connect_timeout=10,
        read_timeout=30,
        ssl={"ca": str(ca.pemPath), "check_hostname": True},
        defer_connect=True,
    )
    connection.connect(pipe.client)
    cursor = connection.cursor()
    cursor.execute("SELECT REPEAT('x', 100000)")
    assert cursor.fetchone()[0] == "x" * 100000
    connection.close()
    counts = pipe.join()
    [entry] = entries(gw, "mysql", 1)
    assert entry["status"] == "ok", entry
    assert counts["received"] > 100000, counts
    assert (entry["bytes_in"], entry["bytes_out"]) == (
        counts["sent"],
        counts["received"],
    ), (entry, counts)


def singleListenerIni(
    certificate: ServerCertificate,
    server: MariaDBServer,
    gateway: dict[str, str] | None = None,
    **listener: str,
) -> str:
    """One C{mysql} listener terminating for one server's upstream C{db}."""
    return (
        iniSection(
            "gateway",
            {
                "access_log": "access.log",
                "access_log_format": "json",
                **(gateway or {}),
            },
        )
        + "\n"
        + iniSection(
            "listener:mysql",
            {
                "listen": f"tcp:{freePort()}:interface=127.0.0.1",
                "mode": "terminate",
                "protocol": "mysql",
                "certificate": str(certificate.certificatePath),
                "private_key": str(certificate.privateKeyPath),
                "upstream": "db",
                **listener,
            },
        )
        + "\n"
        + iniSection("upstream:db", {"servers": f"127.0.0.1:{server.port}"})
    )


def test_upstreamKilledMidQuery(
    gateway: GatewayStarter,
    tmp_path: Path,
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    """
    The server reads the gateway's PROXY header (MariaDB's
    C{proxy_protocol_networks}), so it sees the client's own address and
    port; then it is killed in the middle of a query.
    """
    server = MariaDBServer(tmp_path / "doomed")
    server.start(options=("--proxy-protocol-networks=127.0.0.1",))
    try:
        server.addUser(USER, PASSWORD)
        gw = gateway(singleListenerIni(gatewayCertificate, server, proxy_protocol="v1"))
        connection = pymysqlConnect(gw, ca, "127.0.0.1")
        clientPort = connection._sock.getsockname()[1]
        cursor = connection.cursor()
        cursor.execute(
            "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
        )
        # HOST:PORT (the host name-resolved): the client's own port, not
        # the one the gateway connected from.
        host = cursor.fetchone()[0]
        assert host.rpartition(":")[2] == str(clientPort), host
        failure: list[BaseException] = []

        def sleep() -> None:
            try:
                cursor.execute("SELECT SLEEP(30)")
            except BaseException as e:  # noqa: BLE001 - the test reads it
                failure.append(e)

        query = threading.Thread(target=sleep)
        query.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "SLEEP" not in server.adminQuery(
            "SHOW PROCESSLIST"
        ):
            time.sleep(0.05)
        server.kill()
        query.join(20)
        assert not query.is_alive()
        [error] = failure
        assert isinstance(error, pymysql.err.OperationalError)
        assert error.args[0] == 2013, error.args  # lost connection during query
    finally:
        server.stop()
    [entry] = entries(gw, "mysql", 1)
    assert entry["action"] == "terminate"
    assert entry["upstream"] == f"127.0.0.1:{server.port}"


def test_reloadKeepsSessionsAndDrainCutsThemAtItsDeadline(
    gateway: GatewayStarter,
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    alpha = servers["alpha"]
    metricsPort = freePort()
    settings = {
        "drain_timeout": "2s",
        "metrics": f"tcp:{metricsPort}:interface=127.0.0.1",
    }
    gw = gateway(singleListenerIni(gatewayCertificate, alpha, settings))
    before = pymysqlConnect(gw, ca, "127.0.0.1")
    assert who(before) == (alpha.port, "")
    # A reload that changes the listener (a new idle_timeout): the session
    # keeps its connection, and new ones get the new configuration.
    ini = gw.configPath.read_text()
    gw.configPath.write_text(
        ini.replace("upstream = db", "upstream = db\nidle_timeout = 1h")
    )
    gw.sendSignal(signal.SIGHUP)
    gw.waitForOutput("#info] reloaded")
    assert who(before) == (alpha.port, "")
    after = pymysqlConnect(gw, ca, "127.0.0.1")
    assert who(after) == (alpha.port, "")
    with urllib.request.urlopen(
        f"http://127.0.0.1:{metricsPort}/metrics", timeout=5
    ) as response:
        page = response.read().decode()
    assert 'tlsgateway_active_connections{listener="mysql"} 2.0' in page, page
    assert "tlsgateway_handshake_seconds_count 2.0" in page, page
    # SIGTERM: both sessions stay open, so the drain cuts them at 2s.
    gw.sendSignal(signal.SIGTERM)
    assert gw.waitForExit(15) == 0
    logged = entries(gw, "mysql", 2)
    assert [entry["status"] for entry in logged] == ["shutdown", "shutdown"]
    for connection in (before, after):
        with pytest.raises(pymysql.err.OperationalError):
            who(connection)


def test_failoverToTheNextServerAndConnectionLimits(
    gateway: GatewayStarter,
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    alpha = servers["alpha"]
    dead = freePort()  # nothing listens there
    ini = singleListenerIni(gatewayCertificate, alpha, max_connections="1").replace(
        f"servers = 127.0.0.1:{alpha.port}",
        f"servers =\n    127.0.0.1:{dead}\n    127.0.0.1:{alpha.port}",
    )
    assert f"127.0.0.1:{dead}" in ini
    gw = gateway(ini)
    with pymysqlConnect(gw, ca, "127.0.0.1") as connection:
        assert who(connection) == (alpha.port, "")
        with pytest.raises(pymysql.err.OperationalError):
            pymysqlConnect(gw, ca, "127.0.0.1")
        refused = gw.waitForEntries(1, 10.0)
        assert [entry["status"] for entry in refused] == ["limited"]
    entry = entries(gw, "mysql", 2)[0]
    assert (entry["status"], entry["upstream"]) == ("ok", f"127.0.0.1:{alpha.port}")


@pytest.mark.usefixtures("resolveTestNames")
def test_withoutADefaultTheFirstRouteGreetsAndNoSNIIsNoRoute(
    gateway: GatewayStarter,
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    alpha, beta = servers["alpha"], servers["beta"]
    gw = gateway(
        mysqlIni(
            servers,
            ca,
            gatewayCertificate,
            nodefault={
                "mode": "terminate",
                "protocol": "mysql",
                "certificate": str(gatewayCertificate.certificatePath),
                "private_key": str(gatewayCertificate.privateKeyPath),
                "routes": ["beta.test beta", "alpha.test alpha"],
            },
        )
    )
    # beta greets (the first route); alpha.test is re-authenticated on alpha.
    with pymysqlConnect(gw, ca, "alpha.test", "nodefault") as connection:
        assert who(connection) == (alpha.port, "")
    # The mariadb client sends no SNI: no route, once its ClientHello is in.
    result = mariadbCLI(
        alpha, gw.ports["nodefault"], "SELECT 1", "--ssl", f"--ssl-ca={ca.pemPath}"
    )
    assert result.returncode != 0
    routed, refused = entries(gw, "nodefault", 2)
    assert (routed["status"], routed["upstream"]) == ("ok", f"127.0.0.1:{alpha.port}")
    assert (refused["status"], refused["sni"]) == ("no_route", None)
    assert refused["upstream"] == f"127.0.0.1:{beta.port}"  # the greeting's


@pytest.mark.usefixtures("resolveTestNames")
def test_aDeadDefaultServerDoesNotTakeTheListenerDown(
    gateway: GatewayStarter,
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    """
    The default route's only server is down: the greeting comes from a
    live server of another route, so that route still works (PyMySQL,
    routed by SNI and re-authenticated there); the default route itself
    answers with an error naming its upstream.  And a default route whose
    first server is dead greets (and serves) from its next one.
    """
    alpha = servers["alpha"]
    terminate = {
        "mode": "terminate",
        "protocol": "mysql",
        "certificate": str(gatewayCertificate.certificatePath),
        "private_key": str(gatewayCertificate.privateKeyPath),
    }
    dead = f"127.0.0.1:{freePort()}"  # nothing listens there
    text = mysqlIni(
        servers,
        ca,
        gatewayCertificate,
        downdefault={**terminate, "routes": ["alpha.test alpha", "default down"]},
        halfdown={**terminate, "routes": ["beta.test beta", "default half"]},
    )
    text += "\n" + iniSection("upstream:down", {"servers": dead})
    text += "\n" + iniSection(
        "upstream:half", {"servers": [dead, f"127.0.0.1:{alpha.port}"]}
    )
    gw = gateway(text)

    with pymysqlConnect(gw, ca, "alpha.test", "downdefault") as connection:
        assert who(connection) == (alpha.port, "")
    routed = gw.waitForLog(lambda e: e["listener"] == "downdefault")
    assert (routed["status"], routed["sni"]) == ("ok", "alpha.test"), routed
    assert routed["upstream"] == f"127.0.0.1:{alpha.port}", routed

    # No SNI (the mariadb client): the default route, whose server is down.
    result = mariadbCLI(
        alpha, gw.ports["downdefault"], "SELECT 1", "--ssl", f"--ssl-ca={ca.pemPath}"
    )
    assert result.returncode != 0, result
    assert "no MySQL server of upstream 'down'" in result.stderr, result.stderr
    refused = entries(gw, "downdefault", 2)[1]
    assert refused["status"] == "upstream_unavailable", refused
    assert dead in refused["reason"], refused

    # The default route's first server is dead, its second alive.
    result = mariadbCLI(
        alpha, gw.ports["halfdown"], "SELECT @@port", "--ssl", f"--ssl-ca={ca.pemPath}"
    )
    assert (result.returncode, result.stdout.strip()) == (0, str(alpha.port)), result


@pytest.mark.usefixtures("resolveTestNames")
def test_denyJA4RefusesAMySQLClientByItsClientHello(
    gateway: GatewayStarter,
    servers: dict[str, MariaDBServer],
    ca: CertificateAuthority,
    gatewayCertificate: ServerCertificate,
) -> None:
    """
    C{deny_ja4} refuses a MySQL client as it refuses any TLS client (the
    listener's verdict on the ClientHello it sends inside the protocol):
    C{denied}, before any server sees its login.
    """
    probe = gateway(mysqlIni(servers, ca, gatewayCertificate))
    with pymysqlConnect(probe, ca, "alpha.test") as connection:
        who(connection)
    fingerprint = probe.waitForLog(lambda e: e["status"] == "ok")["ja4"]
    assert fingerprint, "the access log shows the client's JA4"
    gw = gateway(
        mysqlIni(
            servers,
            ca,
            gatewayCertificate,
            guarded={
                "mode": "terminate",
                "protocol": "mysql",
                "certificate": str(gatewayCertificate.certificatePath),
                "private_key": str(gatewayCertificate.privateKeyPath),
                "routes": ["default alpha"],
                "deny_ja4": fingerprint,
            },
        )
    )
    with pytest.raises(pymysql.err.OperationalError):
        pymysqlConnect(gw, ca, "alpha.test", "guarded")
    [refused] = entries(gw, "guarded", 1)
    assert (refused["status"], refused["ja4"]) == ("denied", fingerprint), refused
    assert "deny_ja4" in refused["reason"], refused
    assert refused["sni"] == "alpha.test", refused
