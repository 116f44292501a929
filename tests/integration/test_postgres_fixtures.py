"""
Self-test of the PostgreSQL fixtures (L{tests.integration.postgres}), and of
L{gateway.wire.postgres} against what real PostgreSQL clients and servers send.

No gateway is involved: these tests show that the servers and clients the
gateway's end-to-end tests rely on behave as those tests will assume (a
cluster reached directly over verified TLS names itself; plaintext is
refused unless allowed; only PostgreSQL 17 speaks direct TLS), and that the
parser's hand-written golden bytes match what libpq and the server really
put on the wire.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from gateway.wire.clienthello import ClientHello
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.pgbackend import (
    BackendKeyDataScanner,
    SSLAccepted,
    SSLAnswerReader,
    decodeErrorResponse,
)
from gateway.wire.postgres import (
    SSL_REQUEST,
    CancelKey,
    DirectTLS,
    PreambleReader,
    SSLRequest,
    StartupMessage,
    cancelRequest,
)

from .backends import IO_TIMEOUT
from .postgres import Installation, PostgresCluster, conninfo, runPsql

ClusterStarter = Callable[..., PostgresCluster]
CLUSTER_NAME = "SELECT current_setting('cluster_name')"
SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


# -- The fixtures --------------------------------------------------------------


def test_clusterIsReachedOverVerifiedTLS(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-alpha")
    result = cluster.psql(f"{CLUSTER_NAME}; {SSL_IN_USE}")
    assert result.returncode == 0, result.explain()
    assert result.value.splitlines() == ["pg-alpha", "t"]
    assert cluster.installation.major >= 15


def test_psqlWithAHandWrittenConninfo(
    pgcluster: ClusterStarter, pgdebian: Installation
) -> None:
    # The form the brief gives: host= names the server for verify-full and
    # SNI, hostaddr= is where to connect.
    cluster = pgcluster("pg-beta")
    connection = (
        f"host=pg-beta.test hostaddr=127.0.0.1 port={cluster.port} "
        f"user={cluster.user} dbname=postgres "
        f"sslmode=verify-full sslrootcert={cluster.caPath}"
    )
    result = runPsql(pgdebian, connection, CLUSTER_NAME, password=cluster.password)
    assert (result.returncode, result.value) == (0, "pg-beta"), result.explain()


def test_twoClustersAreToldApart(pgcluster: ClusterStarter) -> None:
    first, second = pgcluster("pg-one"), pgcluster("pg-two")
    assert first.port != second.port
    assert first.psql(CLUSTER_NAME).value == "pg-one"
    assert second.psql(CLUSTER_NAME).value == "pg-two"


def test_wrongServerNameFailsVerification(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-gamma")
    result = cluster.psql(CLUSTER_NAME, host="elsewhere.test")
    assert result.returncode != 0
    assert "does not match host name" in result.stderr, result.explain()


def test_wrongPasswordIsRefused(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-delta")
    result = runPsql(cluster.installation, cluster.conninfo(), "SELECT 1", password="x")
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr, result.explain()


def test_plaintextIsRefusedByDefault(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-epsilon")
    result = cluster.psql(CLUSTER_NAME, sslmode="disable")
    assert result.returncode != 0
    assert "no encryption" in result.stderr, result.explain()


def test_plaintextWhenAllowed(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-zeta", allowPlaintext=True)
    result = cluster.psql(f"{CLUSTER_NAME}; {SSL_IN_USE}", sslmode="disable")
    assert result.value.splitlines() == ["pg-zeta", "f"], result.explain()


def test_trustNeedsNoPassword(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-eta", auth="trust")
    result = runPsql(cluster.installation, cluster.conninfo(), CLUSTER_NAME)
    assert (result.returncode, result.value) == (0, "pg-eta"), result.explain()


def test_stopEndsTheServerAndRemovesItsData(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-theta")
    data = cluster.dataDirectory
    assert data.is_dir()
    assert cluster.stop() == 0
    assert not cluster.running
    assert not data.exists()
    assert "database system is shut down" in cluster.logTail()


def test_pg17DirectTLS(pgcluster: ClusterStarter, pg17: Installation) -> None:
    assert pg17.major == 17
    cluster = pgcluster("pg-direct", installation=pg17)
    result = cluster.psql(
        f"{CLUSTER_NAME}; {SSL_IN_USE}", client=pg17, sslnegotiation="direct"
    )
    assert result.value.splitlines() == ["pg-direct", "t"], result.explain()


def test_pg17ClientNegotiatesWithTheDebianServer(
    pgcluster: ClusterStarter, pg17: Installation
) -> None:
    cluster = pgcluster("pg-iota")
    assert cluster.psql(CLUSTER_NAME, client=pg17).value == "pg-iota"


def test_directTLSNeedsPostgreSQL17OnTheServer(
    pgcluster: ClusterStarter, pgdebian: Installation, pg17: Installation
) -> None:
    # What the gateway is for: a PostgreSQL 15 server does not understand a
    # connection that opens with a ClientHello.
    if pgdebian.major >= 17:
        pytest.skip(f"Debian's PostgreSQL is {pgdebian.version}: it speaks direct TLS")
    cluster = pgcluster("pg-kappa")
    result = cluster.psql(CLUSTER_NAME, client=pg17, sslnegotiation="direct")
    assert result.returncode != 0, result.explain()


# -- Real clients against the preamble reader ------------------------------------


class FirstBytes:
    """
    A one-connection TCP listener that records what a client sends first
    and answers with a fixed reply, then hangs up.
    """

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self.received = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            connection, _ = self.listener.accept()
            with connection:
                connection.settimeout(IO_TIMEOUT)
                self.received = connection.recv(65536)
                if self.reply:
                    connection.sendall(self.reply)

    def close(self) -> bytes:
        self.thread.join(IO_TIMEOUT)
        self.listener.close()
        return self.received


@pytest.fixture
def firstBytes() -> Iterator[Callable[..., FirstBytes]]:
    made: list[FirstBytes] = []

    def make(reply: bytes = b"") -> FirstBytes:
        made.append(FirstBytes(reply))
        return made[-1]

    yield make
    for server in made:
        server.close()


def clientStart(
    client: Installation, server: FirstBytes, **parameters: object
) -> bytes:
    runPsql(
        client,
        conninfo(
            host="db.test",
            hostaddr="127.0.0.1",
            port=server.port,
            user="alice",
            dbname="sales",
            gssencmode="disable",
            **parameters,
        ),
        "SELECT 1",
        password="unused",
        timeout=IO_TIMEOUT,
    )
    return server.close()


def test_libpqSSLRequestIsTheGoldenOne(
    pgdebian: Installation, firstBytes: Callable[..., FirstBytes]
) -> None:
    # Answered N, libpq with sslmode=require gives up: we only look at what
    # it sent.
    received = clientStart(pgdebian, firstBytes(b"N"), sslmode="require")
    assert received == SSL_REQUEST
    assert PreambleReader().feed(received) == SSLRequest()


def test_libpqStartupMessageIsRead(
    pgdebian: Installation, firstBytes: Callable[..., FirstBytes]
) -> None:
    received = clientStart(pgdebian, firstBytes(), sslmode="disable")
    message = PreambleReader().feed(received)
    assert isinstance(message, StartupMessage)
    assert message.version == (3, 0)
    assert (message.user, message.database, message.applicationName) == (
        "alice",
        "sales",
        "psql",
    )
    assert message.raw == received
    assert "unused" not in repr(message.parameters)


def test_libpq17DirectTLSIsHandedToTheClientHelloReader(
    pg17: Installation, firstBytes: Callable[..., FirstBytes]
) -> None:
    received = clientStart(
        pg17, firstBytes(), sslmode="require", sslnegotiation="direct"
    )
    event = PreambleReader().feed(received)
    assert isinstance(event, DirectTLS)
    hello = ClientHelloReader().feed(event.rest)
    assert isinstance(hello, ClientHello)
    assert (hello.serverName, hello.alpn) == ("db.test", ("postgresql",))


# -- A real server against the answer reader and the key scanner -----------------


def exchange(cluster: PostgresCluster, data: bytes) -> socket.socket:
    sock = socket.create_connection((cluster.host, cluster.port), timeout=IO_TIMEOUT)
    sock.sendall(data)
    return sock


def startupPacket(**parameters: str) -> bytes:
    body = (3 << 16).to_bytes(4, "big")
    body += b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items()
    )
    body += b"\0"
    return (4 + len(body)).to_bytes(4, "big") + body


def readMessage(sock: socket.socket, header: bytes = b"") -> bytes:
    """Read one whole server message, of which C{header} was read already."""
    while len(header) < 5:
        chunk = sock.recv(5 - len(header))
        assert chunk, "server hung up"
        header += chunk
    body = b""
    length = int.from_bytes(header[1:], "big") - 4
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "server hung up"
        body += chunk
    return header + body


def test_serverAcceptsTheGatewaysSSLRequest(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-lambda")
    with exchange(cluster, SSL_REQUEST) as sock:
        # One byte, S: nothing more until the client starts TLS.
        assert SSLAnswerReader().feed(sock.recv(16)) == SSLAccepted()


def test_serverErrorResponseDecodes(pgcluster: ClusterStarter) -> None:
    # Plaintext to a TLS-only cluster: the server's own refusal, the model
    # for the gateway's plaintext_refused answer.
    cluster = pgcluster("pg-mu")
    with exchange(
        cluster, startupPacket(user=cluster.user, database="postgres")
    ) as sock:
        message = readMessage(sock)
    error = decodeErrorResponse(message)
    assert (error.severity, error.code) == ("FATAL", "28000")
    assert "no pg_hba.conf entry" in error.message


def test_backendKeyDataCancelsARealQuery(pgcluster: ClusterStarter) -> None:
    """
    The key the scanner finds, sent back with L{cancelRequest}, cancels a
    running query: the scanner and the encoder agree with the server.
    """
    cluster = pgcluster("pg-nu", allowPlaintext=True, auth="trust")
    scanner = BackendKeyDataScanner()
    keys: list[CancelKey] = []
    with exchange(
        cluster, startupPacket(user=cluster.user, database="postgres")
    ) as sock:
        while not scanner.done:
            message = readMessage(sock)
            assert message[:1] != b"E", decodeErrorResponse(message)
            # Fed in two pieces, as TCP may deliver it.
            keys += scanner.feed(message[:3]) + scanner.feed(message[3:])
        assert len(keys) == 1
        query = b"SELECT pg_sleep(60)\0"
        sock.sendall(b"Q" + (4 + len(query)).to_bytes(4, "big") + query)
        # A cancel that reaches a backend before its query starts is
        # ignored, and nothing says when it starts: cancel every half second
        # until the ErrorResponse comes (RowDescription may come first).
        message = b""
        for _ in range(40):
            with exchange(cluster, cancelRequest(keys[0])) as cancel:
                assert cancel.recv(1) == b""  # nothing is answered to a cancel
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                first = sock.recv(1)
                sock.settimeout(IO_TIMEOUT)
                message = readMessage(sock, first)
                if message[:1] == b"E":
                    break
                assert message[:1] == b"T", message
    assert message[:1] == b"E", "the query was never cancelled"
    error = decodeErrorResponse(message)
    assert error.code == "57014", error  # query_canceled


def test_scannerReadsARealServerByteByByte(pgcluster: ClusterStarter) -> None:
    cluster = pgcluster("pg-xi", allowPlaintext=True, auth="trust")
    scanner = BackendKeyDataScanner()
    keys: list[CancelKey] = []
    with exchange(
        cluster, startupPacket(user=cluster.user, database="postgres")
    ) as sock:
        while not scanner.done:
            chunk = sock.recv(1)
            assert chunk, "server hung up"
            keys += scanner.feed(chunk)
    assert len(keys) == 1
    assert len(keys[0].secretKey) == 4  # protocol 3.0
