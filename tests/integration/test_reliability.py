"""
Failure behaviour, end to end (issue 12): what a real gateway process does
when a reload goes wrong, when it runs out of file descriptors, when a TLS
record is corrupt after the handshake, and with ClientHellos at the edges
of what TLS allows.

Each test drives a real gateway process with real sockets and checks what an
operator would check: what the clients received, the access log, the
gateway's own log and its metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from gateway.testing import makeClientHello

from .backends import Backend, TLSStream, tlsConnect, waitUntil
from .harness import (
    CertificateAuthority,
    Gateway,
    commandFor,
    freePort,
    gatewayIni,
    runCommand,
)
from .test_operations import (
    Sample,
    alive,
    connectionRefused,
    countIn,
    httpsGet,
    iniText,
    listen,
    metric,
    reloadBySignal,
    scrape,
    supervised,  # noqa: F401 - a fixture
    waitForWorkers,
    workersStarted,
)
from .test_termination import terminatingIni

pytestmark = pytest.mark.timeout(90)

NAME = "a.example.test"

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]


def fullRecordHello(serverName: str) -> bytes:
    """
    A real ClientHello (pyOpenSSL's) whose one handshake record holds
    exactly 16,384 bytes, the most a record may: 16,389 bytes on the wire.
    ALPN names make up the size, as a client offering many protocols would.
    """
    names = [b"p" * 250] * 59
    base = makeClientHello(serverName, names)
    # The handshake message without record headers, and what it lacks.
    length = int.from_bytes(base[3:5], "big")
    assert base[0] == 22
    assert len(base) == 5 + length, "expected one record"
    missing = 16384 - length
    assert 2 <= missing <= 256, missing
    hello = makeClientHello(serverName, [*names, b"q" * (missing - 1)])
    assert len(hello) == 16389
    assert hello[3:5] == (16384).to_bytes(2, "big")
    return hello


def readAll(sock: socket.socket) -> bytes:
    """Everything C{sock} receives until its peer closes."""
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def test_aClientHelloInOneFullRecordIsRelayedWithTheDefaultBuffer(
    gateway: StartGateway, backend: StartBackend
) -> None:
    """
    With the default C{preread_buffer_size}, a ClientHello that fills a
    whole record (16,389 bytes on the wire) is accepted, routed and
    reaches the upstream byte for byte.
    """
    sink = backend("sink", "sink-hash", tls=False)
    gw = gateway(
        gatewayIni(
            freePort(), routes=[(NAME, "sink")], upstreams={"sink": sink.address}
        )
    )
    hello = fullRecordHello(NAME)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(hello)
        sock.shutdown(socket.SHUT_WR)
        answer = readAll(sock)
    assert answer == f"{hashlib.sha256(hello).hexdigest()} {len(hello)}\n".encode(), (
        answer,
        gw.explain(),
    )
    entry = gw.waitForLog(lambda e: e["sni"] == NAME)
    assert (entry["status"], entry["bytes_in"]) == ("ok", len(hello)), entry


def withServerNames(hello: bytes, entries: list[tuple[int, bytes]]) -> bytes:
    """
    C{hello} (one record, as L{makeClientHello} writes it) with its
    server_name extension replaced by one listing C{(name_type, name)}
    entries, every length fixed up: the bytes a client could really send.
    """
    body = hello[9:]
    offset = 2 + 32
    offset += 1 + body[offset]  # session id
    offset += 2 + int.from_bytes(body[offset : offset + 2], "big")  # ciphers
    offset += 1 + body[offset]  # compression methods
    head, extensions = body[: offset + 2], body[offset + 2 :]
    rebuilt = bytearray()
    while extensions:
        kind = int.from_bytes(extensions[:2], "big")
        length = int.from_bytes(extensions[2:4], "big")
        data, extensions = extensions[4 : 4 + length], extensions[4 + length :]
        if kind == 0:
            names = b"".join(
                bytes([t]) + len(n).to_bytes(2, "big") + n for t, n in entries
            )
            data = len(names).to_bytes(2, "big") + names
        rebuilt += kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    body = head[:-2] + len(rebuilt).to_bytes(2, "big") + bytes(rebuilt)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return hello[:3] + len(message).to_bytes(2, "big") + message


def test_aServerNameListMixingNameTypesIsRefusedNotRouted(
    gateway: StartGateway, backend: StartBackend
) -> None:
    """
    A server_name extension with a type-1 entry before the host_name is
    C{bad_client_hello} and reaches no upstream (OpenSSL refuses the same
    bytes); the same hello with the host_name alone is routed.
    """
    sink = backend("sink", "sink-hash", tls=False)
    gw = gateway(
        gatewayIni(
            freePort(), routes=[(NAME, "sink")], upstreams={"sink": sink.address}
        )
    )
    real = makeClientHello(NAME)
    for entries in (
        [(1, b"other.example.test"), (0, NAME.encode())],
        [(0, NAME.encode())],
    ):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(withServerNames(real, entries))
            sock.shutdown(socket.SHUT_WR)
            readAll(sock)
    refused, routed = gw.waitForEntries(2)
    assert (refused["status"], refused["upstream"]) == ("bad_client_hello", None), (
        refused
    )
    assert "not host_name" in refused["reason"], refused
    assert (routed["status"], routed["sni"]) == ("ok", NAME), routed
    assert sink.accepted == 1


# -- TLS errors after the handshake ------------------------------------------------


class RawTLSClient:
    """
    Python's TLS (an C{SSLObject} on memory BIOs) over a socket this test
    owns, so that it can send records the TLS library would never write
    and still read what the server answers through a real TLS stack.
    """

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        serverName: str,
        version: ssl.TLSVersion,
    ) -> None:
        context.minimum_version = context.maximum_version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=serverName
        )
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.incoming.write(data)
        self._flush()

    def _flush(self) -> None:
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def record(self, data: bytes) -> bytes:
        """The encrypted record C{data} becomes, not sent."""
        self.tls.write(data)
        return self.outgoing.read()

    def answer(self) -> tuple[bytes, BaseException | None]:
        """
        Read the socket until the server closes it: the raw bytes, and what
        the TLS stack made of them (the alert, as an C{SSLError}), or the
        socket error (a reset) that ended the read.
        """
        received = bytearray()
        try:
            while data := self.sock.recv(65536):
                received += data
        except OSError as e:
            return bytes(received), e
        self.incoming.write(bytes(received))
        try:
            while self.tls.read(65536):
                pass
        except ssl.SSLError as e:
            return bytes(received), e
        return bytes(received), None


def corruptMac(client: RawTLSClient) -> bytes:
    record = bytearray(client.record(b"GET / HTTP/1.1\r\n\r\n"))
    record[-1] ^= 0x01  # the last byte of the tag
    return bytes(record)


def oversized(client: RawTLSClient) -> bytes:
    # An application-data record longer than any ciphertext may be
    # (2^14 + 256), with a body to go with it.
    length = 2**14 + 512
    return b"\x17\x03\x03" + length.to_bytes(2, "big") + bytes(length)


def heartbeat(client: RawTLSClient) -> bytes:
    # A heartbeat request record (type 24) in the clear: TLS 1.3 allows
    # no record type but application data once the handshake is done.
    return b"\x18\x03\x03\x00\x03\x01\x00\x00"


@pytest.mark.parametrize(
    ("version", "corrupt", "words"),
    [
        (ssl.TLSVersion.TLSv1_3, corruptMac, "bad record mac"),
        (ssl.TLSVersion.TLSv1_2, corruptMac, "bad record mac"),
        (ssl.TLSVersion.TLSv1_3, oversized, "too long"),
        (ssl.TLSVersion.TLSv1_3, heartbeat, "record type"),
    ],
    ids=["bad-mac-1.3", "bad-mac-1.2", "overflow-1.3", "heartbeat-1.3"],
)
def test_aCorruptRecordAfterTheHandshakeGetsTheAlertThenAClose(
    gateway: StartGateway,
    backend: StartBackend,
    ca: CertificateAuthority,
    client: ssl.SSLContext,
    version: ssl.TLSVersion,
    corrupt: Callable[[RawTLSClient], bytes],
    words: str,
) -> None:
    """
    A record that breaks TLS after a completed handshake on a terminated
    connection: the client's TLS stack receives OpenSSL's alert, then a
    clean close (no reset), and the access log says C{tls_error} with
    OpenSSL's reason, never C{ok}.
    """
    app = backend("app", "echo", tls=False)
    certificate = ca.issue(NAME)
    gw = gateway(
        terminatingIni(
            freePort(),
            certificate=certificate,
            upstreams={"app": app.address},
            upstream="app",
        )
    )
    tls = RawTLSClient(gw.port, client, NAME, version)
    tls.sock.sendall(tls.record(b"ping"))
    echoed = bytearray()
    while len(echoed) < 4:
        tls.incoming.write(tls.sock.recv(65536))
        with contextlib.suppress(ssl.SSLWantReadError):
            echoed += tls.tls.read(65536)
    assert echoed == b"ping"
    tls.sock.sendall(corrupt(tls))
    raw, error = tls.answer()
    tls.sock.close()
    assert isinstance(error, ssl.SSLError), (error, raw[:40], gw.explain())
    assert "alert" in str(error).lower(), error
    entry = gw.waitForLog(lambda e: e["sni"] == NAME)
    assert entry["status"] == "tls_error", entry
    assert words in entry["reason"].lower(), entry


# -- reloads: whole or not at all --------------------------------------------------


class Load:
    """
    Bounded HTTPS load from a few threads: each makes one request after
    another (through the gateway, a real TLS client verifying the
    backend) until stopped, at most C{limit} in all.

    @ivar failures: every request that did not get its answer, and why.
    """

    def __init__(
        self, port: int, context: ssl.SSLContext, serverName: str, limit: int = 3000
    ) -> None:
        self.port = port
        self.context = context
        self.serverName = serverName
        self.limit = limit
        self.done = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(3)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self.done + len(self.failures) >= self.limit:
                    return
            try:
                name = httpsGet(self.port, self.context, self.serverName)[0]
                problem = None if name == "web" else f"answered by {name}"
            except (OSError, AssertionError) as e:
                problem = repr(e)
            with self._lock:
                if problem is None:
                    self.done += 1
                else:
                    self.failures.append(problem)

    def advance(self, count: int, timeout: float = 20.0) -> None:
        """Wait until C{count} more requests have succeeded."""
        target = self.done + count
        waitUntil(
            lambda: self.done >= target or len(self.failures) > 0,
            timeout,
            lambda: f"load stuck at {self.done} requests",
        )


@pytest.mark.parametrize("workers", [1, 2])
def test_reloadsUnderLoadApplyWholeOrNotAtAllWithNoFailedConnection(
    supervised: StartGateway,  # noqa: F811 - the fixture imported above
    backend: StartBackend,
    client: ssl.SSLContext,
    workers: int,
) -> None:
    """
    Under a steady load, a good reload (a listener added), then one whose
    C{access_log} is in a folder that does not exist (with a second
    listener added in the same edit), then a good one again: no request
    fails; the bad reload is refused whole (C{reload refused: REASON}, its
    listener never opens, access-log lines keep coming to the running
    file) and the old configuration serves on.
    """
    web = backend("web", names=[NAME])
    port, added, alsoAdded = freePort(), freePort(), freePort()

    def config(*extra: int, accessLog: str = "access.log") -> str:
        listeners = {
            "web": {"listen": listen(port), "routes": [f"{NAME} up"]},
            **{
                f"extra{n}": {"listen": listen(p), "routes": [f"{NAME} up"]}
                for n, p in enumerate(extra)
            },
        }
        return iniText(
            gateway={"workers": str(workers), "access_log": accessLog},
            listeners=listeners,
            upstreams={"up": {"servers": web.address}},
        )

    gw = supervised(config(), command="module")
    waitForWorkers(gw, workers)
    with Load(gw.port, client, NAME) as load:
        load.advance(20)
        gw.configPath.write_text(config(added))
        reloadBySignal(gw)
        load.advance(20)
        assert httpsGet(added, client, NAME)[0] == "web"

        gw.configPath.write_text(
            config(added, alsoAdded, accessLog="missing/access.log")
        )
        reloadBySignal(gw, expect="reload refused: ")
        lines = len(gw.accessLog())
        load.advance(40)
        assert connectionRefused(alsoAdded), gw.explain()
        assert httpsGet(added, client, NAME)[0] == "web"
        gw.waitForEntries(lines + 40)

        gw.configPath.write_text(config(alsoAdded))
        reloadBySignal(gw)
        load.advance(20)
        assert httpsGet(alsoAdded, client, NAME)[0] == "web"
    assert load.failures == [], (load.failures[:5], gw.explain())
    assert load.done >= 100
    assert countIn(gw, "reload refused: ") == 1, gw.explain()
    assert "Traceback" not in gw.output(), gw.explain()
    assert not (gw.directory / "missing").exists()


def echoingConnection(port: int, context: ssl.SSLContext) -> TLSStream:
    """An established TLS connection through the gateway to an echo backend."""
    stream = tlsConnect(port, context, NAME)
    stream.send(b"ping")
    assert stream.recv() == b"ping"
    return stream


def echoIni(port: int, echo: Backend, drainTimeout: str = "2s") -> str:
    return iniText(
        gateway={"workers": "2", "drain_timeout": drainTimeout},
        listeners={"web": {"listen": listen(port), "routes": [f"{NAME} echo"]}},
        upstreams={"echo": {"servers": echo.address}},
    )


def test_sigtermWhileARetiredWorkerDrainsExitsCleanlyWithinDrainTimeout(
    supervised: StartGateway,  # noqa: F811 - the fixture imported above
    backend: StartBackend,
    client: ssl.SSLContext,
) -> None:
    """
    C{SIGTERM} to the supervisor while a worker a reload retired still
    holds a connection: the retiring worker drains too, and every process
    exits within C{drain_timeout} (and a little), status 0, with no
    traceback (no C{ReactorNotRunning}); the connection is C{shutdown}.
    """
    echo = backend("echo", "echo", names=[NAME])
    gw = supervised(echoIni(freePort(), echo, drainTimeout="3s"), command="module")
    waitForWorkers(gw, 2)
    stream = echoingConnection(gw.port, client)
    reloadBySignal(gw)
    started = time.monotonic()
    gw.sendSignal(signal.SIGTERM)
    code = gw.waitForExit(15)
    elapsed = time.monotonic() - started
    stream.close()
    assert code == 0, gw.explain()
    assert elapsed < 3 + 3, f"exit {elapsed:.1f}s after SIGTERM\n{gw.explain()}"
    assert "Traceback" not in gw.output(), gw.explain()
    assert "ReactorNotRunning" not in gw.output(), gw.explain()
    assert not any(alive(pid) for pid in workersStarted(gw)), gw.explain()
    assert gw.waitForLog(lambda e: e["sni"] == NAME, 1)["status"] == "shutdown"


# -- check finds what run would trip on ----------------------------------------------


def test_checkReportsAnAccessLogFolderAndKeyProblemsWithTheRestAtOnce(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """
    One run of C{tlsgateway check} on a file with a typo, a private key
    that is not a key, and an C{access_log} in a folder that does not
    exist: all three, each at its line, exit 1.  With them fixed, the
    gateway starts, as C{check} then says it will.
    """
    certificate = ca.issue(NAME)
    badKey = tmp_path / "bad-key.pem"
    badKey.write_text("not a key\n")
    folder = tmp_path / "gw"
    folder.mkdir()
    text = (
        "[gateway]\n"
        f"access_log = {folder / 'logs' / 'access.log'}\n"
        "drain_timout = 2s\n"
        "\n"
        "[listener:web]\n"
        f"listen = {listen(freePort())}\n"
        "mode = terminate\n"
        "upstream = app\n"
        f"certificate = {certificate.certificatePath}\n"
        f"private_key = {badKey}\n"
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:9\n"
    )
    config = folder / "gateway.ini"
    config.write_text(text)
    result = runCommand(commandFor("module", "check", str(config)), folder)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert any(
        line.startswith(f"{config}:2: [gateway] access_log:")
        and "does not exist" in line
        for line in lines
    ), result.stderr
    assert any(
        line.startswith(f"{config}:3: [gateway] drain_timout: unknown key")
        for line in lines
    ), result.stderr
    assert any(
        line.startswith(f"{config}:10: [listener:web] private_key:") for line in lines
    ), result.stderr
    assert "Traceback" not in result.stderr

    (folder / "logs").mkdir()
    fixed = text.replace("drain_timout", "drain_timeout").replace(
        str(badKey), str(certificate.privateKeyPath)
    )
    config.write_text(fixed)
    result = runCommand(commandFor("module", "check", str(config)), folder)
    assert result.returncode == 0, result
    assert result.stdout.strip().endswith("configuration OK"), result
    with Gateway(fixed, folder / "run", command="module"):
        pass


# -- out of file descriptors ---------------------------------------------------------

#: Runs argv[2:] under a soft and hard RLIMIT_NOFILE of argv[1].
LIMIT_WRAPPER = (
    "import os, resource, sys;"
    " n = int(sys.argv[1]);"
    " resource.setrlimit(resource.RLIMIT_NOFILE, (n, n));"
    " os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Callable[[str, int], Gateway]]:
    """
    A starter: C{limited(iniText, limit)} runs C{python -m gateway run}
    with C{RLIMIT_NOFILE} lowered to C{limit}; stopped at teardown.
    """
    started: list[Gateway] = []

    def start(iniText: str, limit: int) -> Gateway:
        gw = Gateway(iniText, tmp_path / f"limited{len(started) + 1}", command="module")
        gw.command = [sys.executable, "-c", LIMIT_WRAPPER, str(limit), *gw.command[1:]]
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


def openDescriptors(gw: Gateway) -> int:
    return len(os.listdir(f"/proc/{gw.pid}/fd"))


def holdsAtLeast(gw: Gateway, count: int) -> bool:
    return openDescriptors(gw) >= count


def sampled(metricsPort: int, sample: Sample) -> bool:
    """C{/metrics} has C{sample} (server states are sampled every second)."""
    return sample in scrape(metricsPort)


def limitedIni(port: int, metricsPort: int, *servers: Backend) -> str:
    return iniText(
        gateway={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
        listeners={
            "web": {
                "listen": listen(port),
                "routes": [f"{NAME} up"],
                "preread_timeout": "60s",
            }
        },
        upstreams={
            "up": {
                "servers": [
                    f"{s.address} max_fails=1 fail_timeout=60s" for s in servers
                ]
            }
        },
    )


def echoOnce(port: int, hello: bytes, timeout: float = 5.0) -> bytes:
    """Send C{hello} through the gateway; what the echo backend sends back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(hello)
        received = b""
        with contextlib.suppress(OSError):
            while len(received) < len(hello):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        return received


def assertEveryConnectionLogged(gw: Gateway, metricsPort: int, made: int) -> None:
    """
    Every connection the clients made has exactly one access-log line and
    none is left active.
    """
    entries = gw.waitForEntries(made, timeout=15)
    assert len(entries) == made, (len(entries), made, gw.explain())
    waitUntil(
        lambda: (
            scrape(metricsPort)[metric("tlsgateway_active_connections", listener="web")]
            == 0
        ),
        10,
        lambda: f"connections still active\n{gw.explain()}",
    )


def test_runningOutOfDescriptorsNeverMarksAServerFailed(
    limited: Callable[[str, int], Gateway], backend: StartBackend
) -> None:
    """
    With C{RLIMIT_NOFILE} lowered, connections held open until the
    gateway runs out of descriptors: the ones it cannot connect upstream
    are C{upstream_unavailable} naming EMFILE, both servers stay up, and
    once the held connections close, new ones are relayed at once (before,
    both servers were out for C{fail_timeout}: "no server available").
    """
    first, second = backend("a", "echo", tls=False), backend("b", "echo", tls=False)
    metricsPort = freePort()
    limit = 64
    gw = limited(limitedIni(freePort(), metricsPort, first, second), limit)
    hello = makeClientHello(NAME)
    held: list[socket.socket] = []
    try:
        while openDescriptors(gw) < limit - 1 and len(held) < limit:
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            sock.sendall(hello)
            held.append(sock)
            time.sleep(0.02)
        # The last descriptor goes to the next accept: its upstream socket
        # cannot be made.
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            sock.sendall(hello)
            held.append(sock)
        gw.waitForLog(lambda e: "EMFILE" in (e.get("reason") or ""), timeout=10)
    finally:
        for sock in held:
            sock.close()
    made = len(held)
    # The held connections' closes are events like any other: a connection
    # made before the gateway has taken them could still meet EMFILE at
    # accept.  Wait until their descriptors are free (not for fail_timeout,
    # which the servers would be out for if they had been marked failed).
    waitUntil(lambda: openDescriptors(gw) < limit // 2, 10, gw.explain)
    for _ in range(5):
        assert echoOnce(gw.port, hello) == hello, gw.explain()
        made += 1
    assertEveryConnectionLogged(gw, metricsPort, made)
    refused = [e for e in gw.accessLog() if e["status"] != "ok"]
    assert refused, gw.explain()
    for entry in refused:
        assert entry["status"] == "upstream_unavailable", entry
        assert "local resource error: EMFILE" in entry["reason"], entry
    for server in (first, second):
        up = metric(
            "tlsgateway_upstream_server_up", upstream="up", server=server.address
        )
        # Sampled every second.
        waitUntil(partial(sampled, metricsPort, up), 5, gw.explain)
        assert scrape(metricsPort)[up] == 1, gw.explain()
    assert "unavailable for" not in gw.output(), gw.explain()


def test_theFirstPassthroughConnectionAtEMFILEIsRelayedAndLogged(
    limited: Callable[[str, int], Gateway], backend: StartBackend
) -> None:
    """
    Descriptors run out just before the first relay of a fresh process,
    whose splice hub then cannot be made: the connection is relayed all
    the same (by the reactor) and logged once; nothing stays active.
    Before, it leaked: an unhandled error, no access-log line, C{active}
    stuck at 1.
    """
    echo = backend("echo", "echo", tls=False)
    metricsPort = freePort()
    limit = 48
    gw = limited(limitedIni(freePort(), metricsPort, echo), limit)
    held: list[socket.socket] = []
    try:
        # Connections in the pre-read (nothing sent) take one each, until
        # two are left: the next client's socket and its upstream's.
        while openDescriptors(gw) < limit - 2:
            target = openDescriptors(gw) + 1
            held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
            waitUntil(partial(holdsAtLeast, gw, target), 5, gw.explain)
        hello = makeClientHello(NAME)
        assert echoOnce(gw.port, hello) == hello, gw.explain()
    finally:
        for sock in held:
            sock.close()
    assertEveryConnectionLogged(gw, metricsPort, len(held) + 1)
    relayed = gw.waitForLog(lambda e: e["sni"] == NAME)
    assert relayed["status"] == "ok", relayed
    assert "Unhandled" not in gw.output(), gw.explain()
