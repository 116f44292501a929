"""
The termination policy of the edge-security work, end to end, through a
real gateway process and real clients (C{openssl s_client}, Python C{ssl},
C{psql}): key exchange groups, the session ticket lifetime, client
certificate revocation lists (and their reload), TLS 1.3 early data never
accepted, and a PostgreSQL upstream whose C{S} comes with bytes it cannot
have sent honestly.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.wire.postgres import SSL_REQUEST

from .harness import (
    CertificateAuthority,
    ServerCertificate,
    commandFor,
    freePort,
    gatewayEnvironment,
    httpRequest,
    okBody,
    requireTools,
    writeLeaf,
)
from .postgres import Installation, conninfo, runPsql
from .test_operations import reloadBySignal
from .test_termination import (
    GW_NAME,
    assertTerminatedOk,
    lastEntry,
    sClient,
    startSimple,
    terminatingIni,
)

pytestmark = pytest.mark.timeout(90)

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture
def gwCert(ca: CertificateAuthority) -> ServerCertificate:
    return ca.issue(GW_NAME)


# -- groups ------------------------------------------------------------------------


def test_groupsRefuseOtherGroupsAndNegotiateAnAllowedOne(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    requireTools("openssl")
    gw, app = startSimple(
        gateway, backend, gwCert, listenerKeys={"groups": "X25519:secp256r1"}
    )
    for count, (version, offered) in enumerate(
        [("-tls1_3", "secp384r1"), ("-tls1_2", "secp384r1"), ("-tls1_3", "X448")], 1
    ):
        code, output = sClient(
            gw.port, ca, version, "-groups", offered, send=httpRequest(GW_NAME)
        )
        assert code != 0, output[-2000:]
        assert "\r\n\r\napp" not in output
        entry = lastEntry(gw, count)
        assert entry["status"] == "handshake_failed", entry
        assert entry.get("reason"), entry

    for count, (version, offered, expected) in enumerate(
        [
            ("-tls1_3", "secp256r1", "secp256r1"),
            ("-tls1_2", "secp384r1:secp256r1", "secp256r1"),
            ("-tls1_3", "X25519", "x25519"),
        ],
        4,
    ):
        code, output = sClient(
            gw.port, ca, version, "-groups", offered, send=httpRequest(GW_NAME)
        )
        assert code == 0, (output[-3000:], gw.explain())
        assert "\r\n\r\napp" in output, output[-2000:]
        entry = lastEntry(gw, count)
        assertTerminatedOk(entry, app)
        assert entry["tls_group"].lower() == expected, entry
    assert app.accepted == 3


def runCheck(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        commandFor("module", "check", str(path)),
        env=gatewayEnvironment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_checkNamesAnUnknownGroupAtItsLine(
    tmp_path: Path, gwCert: ServerCertificate
) -> None:
    text = terminatingIni(
        freePort(),
        certificate=gwCert,
        upstream="app",
        upstreams={"app": "127.0.0.1:1"},
        listenerKeys={"groups": "X25519MLKEM768:X25519:brainpoolX999"},
    )
    path = tmp_path / "gw.ini"
    path.write_text(text)
    line = text.splitlines().index("groups = X25519MLKEM768:X25519:brainpoolX999") + 1
    result = runCheck(path)
    assert result.returncode == 1, result
    assert (
        f"{path}:{line}: [listener:web] groups: brainpoolX999: not a key exchange"
        " group this OpenSSL knows"
    ) in result.stderr, result.stderr
    assert "X25519MLKEM768," not in result.stderr  # only the unknown one is named


# -- session ticket lifetime ------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_ticketLifetimeHintIsTheSetting(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    version: str,
) -> None:
    gw, app = startSimple(
        gateway, backend, gwCert, listenerKeys={"session_ticket_lifetime": "90s"}
    )
    context = ca.clientContext()
    context.maximum_version = getattr(ssl.TLSVersion, version)
    with (
        socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=GW_NAME) as tls,
    ):
        tls.sendall(httpRequest(GW_NAME))
        response = b""
        while chunk := tls.recv(65536):  # TLS 1.3 tickets come with the data
            response += chunk
        session = tls.session
    assert okBody(response) == "app"
    assert session is not None
    assert session.has_ticket
    assert session.ticket_lifetime_hint == 90
    assertTerminatedOk(lastEntry(gw, 1), app)


# -- early data ---------------------------------------------------------------------


def test_earlyDataIsNeverAccepted(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    tmp_path: Path,
) -> None:
    """
    A client resuming with a ticket and early data to send: the tickets
    allow none, and nothing is taken as early data.
    """
    requireTools("openssl")
    gw, app = startSimple(gateway, backend, gwCert)
    session = tmp_path / "session.pem"
    code, first = sClient(
        gw.port, ca, "-tls1_3", "-sess_out", str(session), send=httpRequest(GW_NAME)
    )
    assert code == 0, first[-3000:]
    assert session.exists(), first[-3000:]
    assert "Max Early Data: 0" in first, first[-3000:]
    early = tmp_path / "early.txt"
    early.write_bytes(httpRequest(GW_NAME))
    code, second = sClient(
        gw.port,
        ca,
        "-tls1_3",
        "-sess_in",
        str(session),
        "-early_data",
        str(early),
        send=httpRequest(GW_NAME),
    )
    assert "Reused, TLSv1.3" in second, second[-3000:]
    assert "Early data was accepted" not in second, second[-3000:]
    assert "Early data was not sent" in second or "Early data was rejected" in second, (
        second[-3000:]
    )
    assertTerminatedOk(lastEntry(gw, 2), app)


# -- client CRLs ------------------------------------------------------------------------


def caKey(authority: trustme.CA) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(authority.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def writeCRL(
    path: Path,
    authority: trustme.CA,
    revoked: Sequence[ServerCertificate],
    *,
    nextUpdate: datetime.datetime = NOW + 7 * DAY,
    encoding: serialization.Encoding = serialization.Encoding.PEM,
) -> Path:
    issuer = x509.load_pem_x509_certificate(authority.cert_pem.bytes())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(min(NOW, nextUpdate) - DAY)
        .next_update(nextUpdate)
    )
    for certificate in revoked:
        serial = x509.load_pem_x509_certificate(
            certificate.certificatePath.read_bytes()
        ).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - DAY)
            .build()
        )
    crl = builder.sign(caKey(authority), hashes.SHA256())
    path.write_bytes(crl.public_bytes(encoding))
    return path


def clientLeaf(authority: trustme.CA, directory: Path, name: str) -> ServerCertificate:
    leaf = authority.issue_cert(f"{name}.clients.test", common_name=name)
    return writeLeaf(directory, name, leaf, f"{name}.clients.test")


def clientContext(
    ca: CertificateAuthority, certificate: ServerCertificate
) -> ssl.SSLContext:
    context = ca.clientContext()
    context.load_cert_chain(
        str(certificate.certificatePath), str(certificate.privateKeyPath)
    )
    return context


@attrs.define
class Fetched:
    """A request's body (L{None}: refused), and the session, to resume."""

    body: str | None
    session: ssl.SSLSession | None = None
    resumed: bool = False


def mtlsGet(
    port: int,
    ca: CertificateAuthority,
    certificate: ServerCertificate,
    *,
    context: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
) -> Fetched:
    context = context or clientContext(ca, certificate)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=GW_NAME, session=session) as tls,
        ):
            tls.sendall(httpRequest(GW_NAME))
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            return Fetched(
                okBody(response) if response else None,
                tls.session,
                bool(tls.session_reused),
            )
    except (ssl.SSLError, ConnectionError):
        return Fetched(None)


@pytest.fixture
def clientPKI(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path / "clients-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def test_revokedClientIsRefusedAndANewCRLAppliesOnReload(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    clientPKI: tuple[trustme.CA, Path],
    tmp_path: Path,
) -> None:
    authority, caPath = clientPKI
    alice = clientLeaf(authority, tmp_path, "alice")
    mallory = clientLeaf(authority, tmp_path, "mallory")
    crl = writeCRL(tmp_path / "clients.crl", authority, [mallory])
    gw, app = startSimple(
        gateway,
        backend,
        gwCert,
        listenerKeys={
            "client_ca": str(caPath),
            "verify_client": "on",
            "client_crl": str(crl),
        },
    )
    aliceContext = clientContext(ca, alice)
    first = mtlsGet(gw.port, ca, alice, context=aliceContext)
    assert first.body == "app"
    assert first.session is not None
    entry = lastEntry(gw, 1)
    assertTerminatedOk(entry, app)
    assert "CN=alice" in entry["client_cert"], entry

    # Before the new CRL, her ticket resumes.
    resumed = mtlsGet(gw.port, ca, alice, context=aliceContext, session=first.session)
    assert resumed.body == "app"
    assert resumed.resumed
    assert resumed.session is not None

    assert mtlsGet(gw.port, ca, mallory).body is None
    entry = lastEntry(gw, 3)
    assert entry["status"] == "handshake_failed", entry
    assert "revoked" in entry["reason"], entry
    assert "CN=mallory" in entry["reason"], entry

    # openssl s_client sees the alert OpenSSL sends for it.
    requireTools("openssl")
    code, output = sClient(
        gw.port,
        ca,
        "-tls1_2",
        "-cert",
        str(mallory.certificatePath),
        "-key",
        str(mallory.privateKeyPath),
        send=httpRequest(GW_NAME),
    )
    assert code != 0
    assert "certificate revoked" in output, output[-2000:]

    # The CA revokes alice too, as DER this time; a reload reads it.
    writeCRL(crl, authority, [mallory, alice], encoding=serialization.Encoding.DER)
    reloadBySignal(gw)
    # Her session from before cannot be resumed (new ticket keys): a full
    # handshake, and the new CRL refuses her.
    again = mtlsGet(gw.port, ca, alice, context=aliceContext, session=resumed.session)
    assert again.body is None
    assert not again.resumed
    assert mtlsGet(gw.port, ca, alice).body is None
    for count in (5, 6):
        entry = lastEntry(gw, count)
        assert entry["status"] == "handshake_failed", entry
        assert "revoked" in entry["reason"], entry
        assert "CN=alice" in entry["reason"], entry
    assert app.accepted == 2


def test_checkWarnsAboutAnExpiredCRL(
    tmp_path: Path,
    gwCert: ServerCertificate,
    clientPKI: tuple[trustme.CA, Path],
) -> None:
    authority, caPath = clientPKI
    crl = writeCRL(tmp_path / "old.crl", authority, [], nextUpdate=NOW - DAY)
    text = terminatingIni(
        freePort(),
        certificate=gwCert,
        upstream="app",
        upstreams={"app": "127.0.0.1:1"},
        listenerKeys={
            "client_ca": str(caPath),
            "verify_client": "on",
            "client_crl": str(crl),
        },
    )
    path = tmp_path / "gw.ini"
    path.write_text(text)
    line = text.splitlines().index(f"client_crl = {crl}") + 1
    result = runCheck(path)
    assert result.returncode == 0, result
    assert result.stdout.strip().splitlines()[-1] == "configuration OK", result
    # FILE:LINE: [section] key: [warning: ]message, whichever way check
    # words the warning itself.
    pattern = (
        rf"{re.escape(f'{path}:{line}: [listener:web] client_crl: ')}"
        rf"(warning: )?{re.escape(str(crl))}: the CRL of .* expired on "
    )
    assert re.search(pattern, result.stderr), result.stderr


# -- bytes after the upstream's S --------------------------------------------------------

INJECTED = b"\x16\x03\x03\x00\x0cINJECTED-BY-MITM"


class EvilPostgres:
    """
    A loopback "PostgreSQL server" that answers an C{SSLRequest} with C{S}
    and, in the same write, bytes of its own before any handshake: what a
    man in the middle does (CVE-2021-23222).  Counts what it was sent.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.requests = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                peer, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with peer:
                peer.settimeout(5)
                try:
                    data = b""
                    while len(data) < len(SSL_REQUEST):
                        chunk = peer.recv(len(SSL_REQUEST) - len(data))
                        if not chunk:
                            break
                        data += chunk
                    if data == SSL_REQUEST:
                        self.requests += 1
                        peer.sendall(b"S" + INJECTED)
                        peer.recv(65536)  # until the gateway gives up
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def evil() -> Iterator[EvilPostgres]:
    server = EvilPostgres()
    yield server
    server.stop()


def pgIni(port: int, evilPort: int, **listenerKeys: str) -> str:
    upstream = listenerKeys.pop("upstreamKeys", "")
    keys = "".join(f"{k} = {v}\n" for k, v in listenerKeys.items())
    return (
        "[gateway]\naccess_log = access.log\naccess_log_format = json\n\n"
        f"[listener:pg]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"protocol = postgres\nupstream = db\n{keys}\n"
        f"[upstream:db]\nservers = 127.0.0.1:{evilPort}\n{upstream}"
    )


def rawPostgresTLS(port: int) -> bytes:
    """
    A PostgreSQL client's start, by hand: C{SSLRequest}, then a real
    ClientHello from Python's C{ssl} once the gateway said C{S}; every byte
    the gateway sends afterwards, to EOF.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing, server_hostname="db.example.test")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        sock.sendall(outgoing.read())
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def test_passthroughRefusesBytesAfterTheUpstreamsS(
    gateway: Any, evil: EvilPostgres
) -> None:
    gw = gateway(pgIni(freePort(), evil.port))
    received = rawPostgresTLS(gw.port)
    assert b"INJECTED" not in received, received
    entry = lastEntry(gw, 1)
    assert entry["status"] == "upstream_unavailable", entry
    assert "bytes after its S" in entry["reason"], entry
    assert entry["bytes_out"] == 1 + len(received), entry  # the gateway's own S
    assert evil.requests == 1


def test_psqlThroughTerminationWithReencryptionRefusesTheInjection(
    gateway: Any,
    evil: EvilPostgres,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    pgdebian: Installation,
) -> None:
    gw = gateway(
        pgIni(
            freePort(),
            evil.port,
            mode="terminate",
            certificate=str(gwCert.certificatePath),
            private_key=str(gwCert.privateKeyPath),
            upstreamKeys=(
                f"tls = on\ntls_ca = {ca.pemPath}\ntls_server_name = db.example.test\n"
            ),
        )
    )
    result = runPsql(
        pgdebian,
        conninfo(
            host=GW_NAME,
            hostaddr="127.0.0.1",
            port=gw.port,
            user="alice",
            dbname="shop",
            sslmode="verify-full",
            sslrootcert=ca.pemPath,
        ),
        "select 1",
    )
    assert result.returncode != 0, result.explain()
    assert "INJECTED" not in result.stdout + result.stderr
    entry = lastEntry(gw, 1)
    assert entry["status"] == "upstream_unavailable", entry
    assert "bytes after its S" in entry["reason"], entry
    assert entry["db_user"] == "alice", entry
    assert evil.requests >= 1
