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

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
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
    listeners = {
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
    )


def who(connection: Any) -> tuple[int, str]:
    cursor = connection.cursor()
    cursor.execute(WHO)
    port, cipher = cursor.fetchone()
    return int(port), cipher or ""


def mariadbCLI(
    server: MariaDBServer, port: int, sql: str, *options: str, password: str = PASSWORD
) -> Any:
    import subprocess

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
