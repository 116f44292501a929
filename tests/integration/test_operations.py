"""
Operating a running gateway, end to end (issue 5): reload on C{SIGHUP},
drain on C{SIGTERM}, C{workers = N}, the C{/metrics} page, C{tlsgateway
reload} and C{SIGUSR1}.

Every test drives a real gateway process (C{twistd -n tlsgateway} or
C{python -m gateway run}) with signals sent by PID and real TLS clients,
and checks what an operator would check: the bytes the clients and the
backends saw, the access log, the gateway's own log, the exit status, the
processes left behind and the numbers on C{/metrics}.

Long-lived connections are driven by L{EchoPump}: a thread that streams a
pseudo-random pattern through an echo backend in lock step, comparing each
echo with what it sent, so "kept streaming byte-exact across the reload" is
a fact the test checks chunk by chunk and again, as a digest, at the
backend.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import fastPathOnly

from .backends import (
    Backend,
    TLSStream,
    patternChunks,
    patternDigest,
    readUntilTcpEof,
    refusedHandshake,
    tlsConnect,
    waitUntil,
)
from .harness import (
    CertificateAuthority,
    Gateway,
    IniKeys,
    ServerCertificate,
    bySni,
    freePort,
    httpsFetch,
    iniSection,
    okBody,
    runCommand,
    writeLeaf,
)

pytestmark = pytest.mark.timeout(90)

KiB = 1024
MiB = 1024 * KiB

EXACT = "a.example.test"  # the name routed in most tests
OTHER = "b.example.test"  # a second routed name
UNROUTED = "nowhere.example.test"  # no route, no default: status no_route
GW_NAME = "gw.example.test"  # the gateway's own certificate (termination)

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]


# -- configuration text --------------------------------------------------------------


def listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def iniText(
    *,
    listeners: Mapping[str, IniKeys],
    upstreams: Mapping[str, IniKeys],
    gateway: Mapping[str, str] = {},
    extra: str = "",
) -> str:
    """
    A whole INI file: C{[gateway]} (a JSON access log in C{access.log}, a
    short C{drain_timeout} so that teardown is quick, then C{gateway}),
    one section per listener and upstream, then C{extra} verbatim.  A list
    value becomes continuation lines (C{routes}, C{servers}).
    """
    settings = {
        "access_log": "access.log",
        "access_log_format": "json",
        "drain_timeout": "2s",
        **gateway,
    }
    sections = [iniSection("gateway", settings)]
    sections += [
        iniSection(f"listener:{name}", keys) for name, keys in listeners.items()
    ]
    sections += [
        iniSection(f"upstream:{name}", keys) for name, keys in upstreams.items()
    ]
    return "\n".join(sections) + extra


def lineOf(text: str, fragment: str) -> int:
    """The 1-based number of the first line of C{text} containing C{fragment}."""
    for number, line in enumerate(text.splitlines(), 1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in\n{text}")


# -- the gateway's own log -----------------------------------------------------------

RELOADED = "#info] reloaded"  # GatewayService and Supervisor both say it so
REFUSED = "reload refused"


def countIn(gw: Gateway, text: str) -> int:
    return gw.output().count(text)


def waitForCount(gw: Gateway, text: str, count: int, timeout: float = 10.0) -> None:
    """Wait until the gateway's log holds C{text} at least C{count} times."""
    waitUntil(
        lambda: countIn(gw, text) >= count,
        timeout,
        lambda: (
            f"{text!r} logged {countIn(gw, text)} time(s), wanted {count},"
            f" within {timeout}s\n{gw.explain()}"
        ),
    )


def reloadBySignal(gw: Gateway, expect: str = RELOADED) -> None:
    """SIGHUP by PID, then wait until the gateway logs C{expect} once more."""
    before = countIn(gw, expect)
    gw.sendSignal(signal.SIGHUP)
    waitForCount(gw, expect, before + 1)


def readyLines(workers: int) -> int:
    """How many "tlsgateway ready" lines a started gateway logs in all."""
    return 1 + workers if workers > 1 else 1


def waitForWorkers(gw: Gateway, workers: int) -> None:
    """
    Wait until every worker is serving.  The supervisor says "tlsgateway
    ready" once its sockets listen; until the workers are up, connections
    wait in the accept queue, but a signal would find them half started.
    """
    waitForCount(gw, "tlsgateway ready", readyLines(workers))


WORKER_STARTED = re.compile(r"worker (\d+) started \(generation (\d+)\)")


def workersStarted(gw: Gateway, generation: int | None = None) -> list[int]:
    """The PIDs of the workers the supervisor said it started, in order."""
    return [
        int(pid)
        for pid, gen in WORKER_STARTED.findall(gw.output())
        if generation is None or int(gen) == generation
    ]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux C{/proc})."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def childPids(pid: int) -> set[int]:
    """Live processes whose parent is C{pid}."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(entry.name))
    return children


@pytest.fixture
def supervised(gateway: StartGateway) -> Iterator[StartGateway]:
    """
    The C{gateway} starter, plus a teardown that stops each gateway first
    and then kills (by PID) any worker it started that outlived it, so a
    failing C{workers = 2} test leaves no orphan behind.
    """
    started: list[Gateway] = []

    def start(iniText: str, **options: Any) -> Gateway:
        gw = gateway(iniText, **options)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
        for pid in workersStarted(gw):
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# -- clients ---------------------------------------------------------------------------


def httpsGet(port: int, context: ssl.SSLContext, serverName: str) -> tuple[str, bytes]:
    """
    One HTTPS request: (the answering backend's name, the DER certificate
    the client verified).
    """
    response, _, der = httpsFetch(port, context, serverName, serverName)
    return okBody(response), der


def manyGets(
    port: int,
    context: ssl.SSLContext,
    serverName: str,
    count: int,
    concurrency: int,
) -> list[str]:
    """C{count} requests, C{concurrency} at a time: the backends' names."""
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [
            pool.submit(httpsGet, port, context, serverName) for _ in range(count)
        ]
        return [f.result()[0] for f in futures]


def connectionRefused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def serialOf(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def leafSerial(certificate: ServerCertificate) -> int:
    pem = certificate.leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


def issueGatewayLeaf(
    ca: CertificateAuthority, directory: Path, *names: str
) -> ServerCertificate:
    """
    A new leaf for C{names} written over C{directory}'s C{gw-cert.pem} and
    C{gw-key.pem}: the same paths every time, as certbot's C{live/} links
    stay the same across a renewal.
    """
    return writeLeaf(directory, "gw", ca.ca.issue_cert(*names), *names)


class EchoPump:
    """
    Streams L{patternChunks} through an echo backend from a thread, in lock
    step: each chunk is sent, its echo read back whole and compared before
    the next goes out.

    @ivar sent: bytes sent and echoed back intact so far.
    @ivar error: what stopped the stream early, if anything.
    """

    def __init__(
        self,
        stream: TLSStream,
        seed: int = 7,
        chunkSize: int = 16 * KiB,
        pause: float = 0.005,
    ) -> None:
        self.stream = stream
        self.seed = seed
        self.sent = 0
        self.error: BaseException | None = None
        self._chunkSize = chunkSize
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo-pump", daemon=True)

    def start(self) -> EchoPump:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for chunk in patternChunks(1 << 40, self.seed, self._chunkSize):
                if self._stop.is_set():
                    return
                self.stream.send(chunk)
                echoed = bytearray()
                while len(echoed) < len(chunk):
                    data = self.stream.recv(len(chunk) - len(echoed))
                    if not data:
                        raise ConnectionError(f"EOF after {self.sent} bytes echoed")
                    echoed += data
                if echoed != chunk:
                    raise AssertionError(f"echo differs after {self.sent} bytes")
                self.sent += len(chunk)
                time.sleep(self._pause)
        except BaseException as e:  # noqa: BLE001 - reported by check()
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"stream broke: {self.error!r}") from self.error

    def advance(self, count: int, gw: Gateway, timeout: float = 10.0) -> None:
        """Wait until C{count} more bytes have gone round intact."""
        target = self.sent + count
        waitUntil(
            lambda: self.sent >= target or self.error is not None,
            timeout,
            lambda: f"stream stuck at {self.sent} bytes\n{gw.explain()}",
        )
        self.check()

    def finish(self) -> int:
        """Stop streaming, close cleanly (both FINs); the bytes echoed."""
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "echo pump did not stop"
        self.check()
        self.stream.closeNotify()
        self.stream.shutdownWrite()
        assert readUntilTcpEof(self.stream) == b""
        self.stream.close()
        return self.sent


def assertEchoedExactly(backend: Backend, sent: int, seed: int = 7) -> None:
    """The echo backend's one connection received exactly the pattern sent."""
    (record,) = backend.waitForRecords(1)
    assert record.error is None, record
    assert record.received == sent, (record.received, sent)
    assert record.receivedDigest == patternDigest(sent, seed), record


# -- reload (SIGHUP) -------------------------------------------------------------------


def test_sighupMovesNewConnectionsWhileAnEstablishedOneStreamsOn(
    gateway: StartGateway, backend: StartBackend, client: ssl.SSLContext
) -> None:
    """
    The route of EXACT moves from one upstream to another: the connection
    already relayed to the first keeps streaming, byte-exact, through the
    reload; new connections reach the second.
    """
    before = backend("before", "echo", names=[EXACT])
    after = backend("after", "echo", names=[EXACT])
    port = freePort()

    def config(upstream: str) -> str:
        return iniText(
            listeners={
                "web": {"listen": listen(port), "routes": [f"{EXACT} {upstream}"]}
            },
            upstreams={
                "up_before": {"servers": before.address},
                "up_after": {"servers": after.address},
            },
        )

    gw = gateway(config("up_before"), command="twistd")
    pump = EchoPump(tlsConnect(gw.port, client, EXACT)).start()
    pump.advance(256 * KiB, gw)
    gw.configPath.write_text(config("up_after"))
    reloadBySignal(gw)
    pump.advance(256 * KiB, gw)  # still streaming after the reload

    fresh = tlsConnect(gw.port, client, EXACT)
    fresh.send(b"to the new upstream")
    assert fresh.recv() == b"to the new upstream"
    fresh.closeNotify()
    fresh.shutdownWrite()
    readUntilTcpEof(fresh)
    fresh.close()
    assert after.waitForRecords(1)[0].received == len(b"to the new upstream")

    pump.advance(256 * KiB, gw)
    sent = pump.finish()
    assertEchoedExactly(before, sent)
    assert before.accepted == 1
    assert after.accepted == 1
    entries = sorted(gw.waitForEntries(2, timeout=5), key=lambda e: e["time"])
    assert [(e["upstream"], e["status"]) for e in entries] == [
        (before.address, "ok"),
        (after.address, "ok"),
    ], entries


def test_renewedCertificateIsServedAfterSighup(
    gateway: StartGateway,
    backend: StartBackend,
    ca: CertificateAuthority,
    client: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """
    A renewal writes a new certificate and key over the same files: after
    SIGHUP a new connection gets the new certificate, while a connection
    made before keeps working on the old one.
    """
    app = backend("app", "echo", tls=False)
    certificates = tmp_path / "certificates"
    certificates.mkdir()
    old = issueGatewayLeaf(ca, certificates, GW_NAME)
    gw = gateway(
        iniText(
            listeners={
                "tls": {
                    "listen": listen(freePort()),
                    "mode": "terminate",
                    "certificate": str(old.certificatePath),
                    "private_key": str(old.privateKeyPath),
                    "upstream": "app",
                }
            },
            upstreams={"app": {"servers": app.address}},
        ),
        command="module",
    )
    established = tlsConnect(gw.port, client, GW_NAME)
    seen = established.sslObject.getpeercert(binary_form=True)
    assert seen is not None
    assert serialOf(seen) == leafSerial(old)

    new = issueGatewayLeaf(ca, certificates, GW_NAME)
    assert leafSerial(new) != leafSerial(old)
    reloadBySignal(gw)

    with (
        socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname=GW_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert serialOf(der) == leafSerial(new), gw.explain()
        tls.sendall(b"new certificate")
        assert tls.recv(100) == b"new certificate"

    established.send(b"old certificate, same connection")
    assert established.recv() == b"old certificate, same connection"
    established.closeNotify()
    established.shutdownWrite()
    readUntilTcpEof(established)
    established.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_reloadOpensAnAddedListenerAndClosesARemovedOne(
    supervised: StartGateway,
    backend: StartBackend,
    client: ssl.SSLContext,
    workers: int,
) -> None:
    """
    A port whose listener is gone refuses connections (with workers: once
    the old workers, which hold their own copies, have exited); a new
    listener's port serves.
    """
    web = backend("web", names=[EXACT])
    kept, removed, added = freePort(), freePort(), freePort()
    upstreams: dict[str, IniKeys] = {"up": {"servers": web.address}}

    def config(*listeners: tuple[str, int]) -> str:
        return iniText(
            gateway={"workers": str(workers)},
            listeners={
                name: {"listen": listen(port), "upstream": "up"}
                for name, port in listeners
            },
            upstreams=upstreams,
        )

    gw = supervised(config(("kept", kept), ("removed", removed)), command="module")
    waitForWorkers(gw, workers)
    assert httpsGet(removed, client, EXACT)[0] == "web"
    assert connectionRefused(added)

    gw.configPath.write_text(config(("kept", kept), ("added", added)))
    reloadBySignal(gw)
    if workers > 1:
        waitForCount(gw, "tlsgateway ready", 2 * workers + 1)

    waitUntil(
        lambda: connectionRefused(removed),
        5,
        lambda: f"port {removed} still accepts after the reload\n{gw.explain()}",
    )
    assert httpsGet(added, client, EXACT)[0] == "web", gw.explain()
    assert httpsGet(kept, client, EXACT)[0] == "web", gw.explain()
    gw.waitForLog(lambda e: e["listener"] == "added")
    assert f"listener added listening on {listen(added)}" in gw.output()


@pytest.mark.parametrize("workers", [1, 2])
def test_brokenConfigurationOnSighupIsRefusedAndTheRunningOneServes(
    supervised: StartGateway,
    backend: StartBackend,
    client: ssl.SSLContext,
    workers: int,
) -> None:
    """
    Every problem of the new file is logged as FILE:LINE, nothing is
    reloaded (with workers: no new generation is started) and the running
    configuration keeps serving.
    """
    web = backend("web", names=[EXACT])
    port = freePort()
    gatewayKeys = {"workers": str(workers)}
    good = iniText(
        gateway=gatewayKeys,
        listeners={"web": {"listen": listen(port), "routes": [f"{EXACT} up"]}},
        upstreams={"up": {"servers": web.address}},
    )
    gw = supervised(good, command="twistd")
    waitForWorkers(gw, workers)
    assert httpsGet(gw.port, client, EXACT)[0] == "web"

    broken = iniText(
        gateway={**gatewayKeys, "acess_log": "typo.log"},
        listeners={
            "web": {
                "listen": listen(port),
                "routes": [f"{EXACT} up", f"{OTHER} nowhere"],
            }
        },
        upstreams={"up": {"servers": web.address}},
    )
    gw.configPath.write_text(broken)
    reloadBySignal(gw, expect=REFUSED)

    output = gw.output()
    path = str(gw.configPath)
    for problem in [
        f"{path}:{lineOf(broken, 'acess_log')}: [gateway] acess_log: unknown key",
        f"{path}:{lineOf(broken, OTHER)}: [listener:web] routes: upstream 'nowhere'",
    ]:
        assert problem in output, f"{problem!r} not logged\n{gw.explain()}"
    assert countIn(gw, RELOADED) == 0
    assert workersStarted(gw, generation=2) == []
    assert httpsGet(gw.port, client, EXACT)[0] == "web", gw.explain()
    assert web.waitForRecords(2)
    assert gw.running()


# -- drain (SIGTERM) -------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigtermFinishesATransferWithinDrainTimeoutAndCutsOneThatOutlivesIt(
    supervised: StartGateway,
    backend: StartBackend,
    client: ssl.SSLContext,
    workers: int,
) -> None:
    """
    Two connections are established when SIGTERM arrives: a 4 MiB upload
    that finishes within C{drain_timeout} arrives whole (the backend
    answers with its digest) and is logged C{ok}; an idle one is cut at the
    deadline and logged C{shutdown}.  The process exits 0 and, with
    workers, leaves no worker behind.
    """
    sink = backend("sink", "sink-hash", names=[EXACT])
    echo = backend("echo", "echo", names=[OTHER])
    gw = supervised(
        iniText(
            gateway={"drain_timeout": "2s", "workers": str(workers)},
            listeners={
                "web": {
                    "listen": listen(freePort()),
                    "routes": [f"{EXACT} sink", f"{OTHER} echo"],
                }
            },
            upstreams={
                "sink": {"servers": sink.address},
                "echo": {"servers": echo.address},
            },
        ),
        command="twistd" if workers == 1 else "module",
    )
    waitForWorkers(gw, workers)
    workerPids = workersStarted(gw)
    assert len(workerPids) == (workers if workers > 1 else 0), gw.explain()
    assert set(workerPids) == childPids(gw.pid), gw.explain()

    total = 4 * MiB
    chunks = patternChunks(total, seed=3, chunkSize=64 * KiB)
    transfer = tlsConnect(gw.port, client, EXACT)
    transfer.send(next(chunks))
    idle = tlsConnect(gw.port, client, OTHER)
    idle.send(b"ping")
    assert idle.recv() == b"ping"

    started = time.monotonic()
    gw.sendSignal(signal.SIGTERM)
    # Every process has the signal (the supervisor passes it on).
    waitForCount(gw, "received SIGTERM", 1 + len(workerPids), timeout=5)
    for chunk in chunks:
        transfer.send(chunk)
    transfer.closeNotify()
    transfer.shutdownWrite()
    answer = readUntilTcpEof(transfer)
    transfer.close()
    assert answer == f"{patternDigest(total, seed=3)} {total}\n".encode(), gw.explain()
    assert time.monotonic() - started < 2, "the transfer itself outlived the drain"

    idle.sock.settimeout(8)
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while idle.recv():
            pass
    cutAfter = time.monotonic() - started
    idle.close()
    assert 1.7 <= cutAfter <= 5, f"idle connection cut {cutAfter:.2f}s after SIGTERM"

    code = gw.waitForExit(10)
    assert code == 0, f"exit status {code} after a drain\n{gw.explain()}"
    assert gw.waitForLog(bySni(EXACT), timeout=1)["status"] == "ok"
    assert gw.waitForLog(bySni(OTHER), timeout=1)["status"] == "shutdown"
    waitUntil(
        lambda: not any(alive(pid) for pid in workerPids),
        5,
        lambda: f"workers left running: {[p for p in workerPids if alive(p)]}",
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_signalsDuringADrainNeitherReloadNorFail(
    supervised: StartGateway,
    backend: StartBackend,
    client: ssl.SSLContext,
    workers: int,
) -> None:
    """
    Once stopping, a gateway is only stopping: Ctrl-C pressed again (which
    the terminal sends every process of the group, workers included, on
    top of the supervisor's SIGTERM), a SIGHUP from a reload timer or a
    SIGUSR1 from logrotate neither log an error nor start anything new;
    the drain ends at C{drain_timeout}, the exit status is 0 and no worker
    of any generation is left.
    """
    echo = backend("echo", "echo", names=[EXACT])
    gw = supervised(
        iniText(
            gateway={"drain_timeout": "2s", "workers": str(workers)},
            listeners={"web": {"listen": listen(freePort()), "upstream": "echo"}},
            upstreams={"echo": {"servers": echo.address}},
        ),
        command="module" if workers == 1 else "twistd",
    )
    waitForWorkers(gw, workers)
    workerPids = workersStarted(gw)
    idle = tlsConnect(gw.port, client, EXACT)
    idle.send(b"ping")
    assert idle.recv() == b"ping"

    started = time.monotonic()
    gw.sendSignal(signal.SIGTERM)
    waitForCount(gw, "received SIGTERM", 1 + len(workerPids), timeout=5)
    for pid in [gw.pid, *workerPids]:
        os.kill(pid, signal.SIGINT)
    gw.sendSignal(signal.SIGHUP)
    gw.sendSignal(signal.SIGUSR1)

    idle.sock.settimeout(8)
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while idle.recv():
            pass
    idle.close()
    assert time.monotonic() - started >= 1.7, gw.explain()
    code = gw.waitForExit(10)
    assert code == 0, f"exit status {code}\n{gw.explain()}"
    output = gw.output()
    assert "Traceback" not in output, gw.explain()
    assert "#critical]" not in output, gw.explain()
    assert "#error]" not in output, gw.explain()
    assert countIn(gw, RELOADED) == 0, gw.explain()
    assert workersStarted(gw) == workerPids, gw.explain()
    waitUntil(
        lambda: not any(alive(pid) for pid in workersStarted(gw)),
        5,
        lambda: f"workers left: {[p for p in workersStarted(gw) if alive(p)]}",
    )
    assert gw.waitForLog(bySni(EXACT), timeout=1)["status"] == "shutdown"


# -- workers = 2 -----------------------------------------------------------------------


def workersIni(port: int, upstreamServers: str, **gatewayKeys: str) -> str:
    return iniText(
        gateway={"workers": "2", **gatewayKeys},
        listeners={"web": {"listen": listen(port), "routes": [f"{EXACT} up"]}},
        upstreams={"up": {"servers": upstreamServers}},
    )


def test_bothWorkersAcceptAndAKilledWorkerIsReplacedWithoutFailures(
    supervised: StartGateway, backend: StartBackend, client: ssl.SSLContext
) -> None:
    web = backend("web", names=[EXACT])
    gw = supervised(workersIni(freePort(), web.address), command="module")
    first = workersStarted(gw)
    assert len(first) == 2, gw.explain()
    waitForWorkers(gw, 2)

    # The workers share one accept queue: concurrent connections spread.
    assert manyGets(gw.port, client, EXACT, 200, 20) == ["web"] * 200
    served = {e["worker_pid"] for e in gw.waitForEntries(200, timeout=10)}
    assert served == set(first), (served, first, gw.explain())

    # Connections go on, batch after batch, while a worker is killed and
    # replaced; the kill falls between batches, so every connection made
    # after it must succeed.
    victim = first[0]
    turn = threading.Lock()
    failures: list[BaseException] = []
    made = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal made
        while not stop.is_set():
            with turn:
                try:
                    made += len(manyGets(gw.port, client, EXACT, 10, 10))
                except (OSError, ssl.SSLError, AssertionError) as e:
                    failures.append(e)
                    return

    loader = threading.Thread(target=load, name="load", daemon=True)
    loader.start()
    try:
        time.sleep(0.3)
        with turn:
            os.kill(victim, signal.SIGKILL)
            killedAt = made
        waitUntil(
            lambda: len(workersStarted(gw)) == 3 or failures,
            10,
            lambda: f"no worker started after the kill\n{gw.explain()}",
        )
        replacement = workersStarted(gw)[-1]
        assert replacement not in first
        waitUntil(
            lambda: (
                any(e["worker_pid"] == replacement for e in gw.accessLog()) or failures
            ),
            15,
            lambda: f"worker {replacement} never served\n{gw.explain()}",
        )
    finally:
        stop.set()
        loader.join(30)
    assert not failures, (failures, gw.explain())
    assert made > killedAt, "no connection was made after the kill"
    assert f"worker {victim} died" in gw.output()
    assert childPids(gw.pid) == {first[1], replacement}


def _listeningInode(port: int) -> str:
    """The socket inode listening on 127.0.0.1:C{port} (C{/proc/net/tcp})."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def _exclusivelyWatched(pid: int) -> set[str]:
    """
    The socket inodes that process C{pid} watches in an epoll set with
    C{EPOLLEXCLUSIVE}, read from its C{/proc/PID/fdinfo}.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["tfd:"] and int(fields[3], 16) & (1 << 28):
                    target = os.readlink(f"/proc/{pid}/fd/{fields[1]}")
                    inodes.add(target.removeprefix("socket:[").rstrip("]"))
    return inodes


@fastPathOnly
def test_eachWorkerWatchesTheSharedSocketExclusively(
    supervised: StartGateway, backend: StartBackend, client: ssl.SSLContext
) -> None:
    """
    One worker is woken per new connection, not all of them (as NGINX
    does with C{EPOLLEXCLUSIVE}): each worker's reactor holds the shared
    listening socket with that flag, and both still serve.
    """
    web = backend("web", names=[EXACT])
    port = freePort()
    gw = supervised(workersIni(port, web.address), command="module")
    workers = workersStarted(gw)
    waitForWorkers(gw, 2)
    inode = _listeningInode(port)
    for pid in workers:
        assert inode in _exclusivelyWatched(pid), (pid, gw.explain())
    assert manyGets(gw.port, client, EXACT, 100, 20) == ["web"] * 100
    served = {e["worker_pid"] for e in gw.waitForEntries(100, timeout=10)}
    assert served == set(workers), (served, workers, gw.explain())
    # At SIGTERM the supervisor shuts its copy of the socket down first; a
    # worker woken by that ends its port quietly, without a traceback.
    assert gw.stop() == 0, gw.explain()
    assert "Unhandled Error" not in gw.output(), gw.explain()


def test_sighupWithWorkersMovesNewConnectionsWhileAnEstablishedOneStreamsOn(
    supervised: StartGateway, backend: StartBackend, client: ssl.SSLContext
) -> None:
    before = backend("before", "echo", names=[EXACT])
    after = backend("after", "echo", names=[EXACT])
    port = freePort()
    gw = supervised(
        workersIni(port, before.address, drain_timeout="10s"), command="twistd"
    )
    first = workersStarted(gw)
    waitForWorkers(gw, 2)
    pump = EchoPump(tlsConnect(gw.port, client, EXACT)).start()
    pump.advance(256 * KiB, gw)

    gw.configPath.write_text(workersIni(port, after.address, drain_timeout="10s"))
    reloadBySignal(gw)
    # The new generation is up, and the old one has stopped accepting: a
    # worker logs "retiring" once its ports are closed, or it exits.
    waitForCount(gw, "tlsgateway ready", 5)
    waitUntil(
        lambda: (
            countIn(gw, "retiring after the last connection")
            + sum(f"worker {pid} stopped" in gw.output() for pid in first)
            >= 2
        ),
        10,
        lambda: f"the old workers did not stop accepting\n{gw.explain()}",
    )
    second = workersStarted(gw, generation=2)
    assert len(second) == 2, gw.explain()
    assert not set(second) & set(first), gw.explain()
    pump.advance(256 * KiB, gw)

    for _ in range(6):
        fresh = tlsConnect(gw.port, client, EXACT)
        fresh.send(b"new")
        assert fresh.recv() == b"new"
        fresh.closeNotify()
        fresh.shutdownWrite()
        readUntilTcpEof(fresh)
        fresh.close()
    assert after.accepted == 6, gw.explain()

    pump.advance(256 * KiB, gw)
    sent = pump.finish()
    assertEchoedExactly(before, sent)
    assert before.accepted == 1
    # With its last connection gone, the old generation exits.
    waitUntil(
        lambda: childPids(gw.pid) == set(second),
        10,
        lambda: f"workers {childPids(gw.pid)}, wanted {second}\n{gw.explain()}",
    )
    entries = gw.accessLog()
    assert {e["worker_pid"] for e in entries if e["upstream"] == after.address} <= set(
        second
    )
    (old,) = [e for e in entries if e["upstream"] == before.address]
    assert old["status"] == "ok", old
    assert old["worker_pid"] in first, old


def test_sighupWithWorkersKeepsAnEstablishedConnectionPastDrainTimeout(
    supervised: StartGateway, backend: StartBackend, client: ssl.SSLContext
) -> None:
    """
    CONTRACT.md: C{SIGHUP} reloads "without dropping established
    connections", whatever C{workers} says; C{drain_timeout} is about
    stopping.  NGINX keeps old workers until their last connection ends
    (unless C{worker_shutdown_timeout} is set).
    """
    echo = backend("echo", "echo", names=[EXACT])
    port = freePort()
    gw = supervised(
        workersIni(port, echo.address, drain_timeout="1s"), command="module"
    )
    waitForWorkers(gw, 2)
    pump = EchoPump(tlsConnect(gw.port, client, EXACT)).start()
    pump.advance(64 * KiB, gw)
    reloadBySignal(gw)
    time.sleep(2.5)  # well past drain_timeout
    pump.advance(64 * KiB, gw)
    assertEchoedExactly(echo, pump.finish())


# -- metrics ---------------------------------------------------------------------------


Sample = tuple[str, frozenset[tuple[str, str]]]


def metric(name: str, **labels: str) -> Sample:
    return (name, frozenset(labels.items()))


def scrape(port: int) -> dict[Sample, float]:
    """C{/metrics}: every sample's value by (name, labels)."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5
    ) as response:
        text = response.read().decode()
    return {
        metric(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_metricsMatchTheConnectionsMade(
    supervised: StartGateway,
    backend: StartBackend,
    ca: CertificateAuthority,
    client: ssl.SSLContext,
    tmp_path: Path,
    workers: int,
) -> None:
    """
    Passthrough (C{ok} and C{no_route}) and terminated connections, then
    C{/metrics} against the access log: connections by status, bytes in
    and out, nothing active, the handshake histogram's count, and the
    active health checks' verdict on a live and a dead server.  With
    C{workers = 2} the page is the sum over both workers, which the access
    log shows both served.
    """
    web = backend("web", names=[EXACT])
    app = backend("app", tls=False)
    leaf = issueGatewayLeaf(ca, tmp_path, GW_NAME)
    dead = f"127.0.0.1:{freePort()}"
    metricsPort = freePort()
    health = {"health_check": "tcp", "health_interval": "0.5s"}
    gw = supervised(
        iniText(
            gateway={
                "workers": str(workers),
                "metrics": f"tcp:{metricsPort}:interface=127.0.0.1",
            },
            listeners={
                "pass": {
                    "listen": listen(freePort()),
                    "routes": [f"{EXACT} live", f"{OTHER} dead"],
                },
                "term": {
                    "listen": listen(freePort()),
                    "mode": "terminate",
                    "certificate": str(leaf.certificatePath),
                    "private_key": str(leaf.privateKeyPath),
                    "upstream": "app",
                },
            },
            upstreams={
                "live": {"servers": web.address, **health},
                "dead": {"servers": dead, **health},
                "app": {"servers": app.address},
            },
        ),
        command="module" if workers == 1 else "twistd",
    )
    waitForWorkers(gw, workers)
    passPort, termPort = gw.ports["pass"], gw.ports["term"]

    passed = terminated = 0
    for _ in range(10):  # until every worker served some connections
        passed += len(manyGets(passPort, client, EXACT, 20, 20))
        terminated += len(manyGets(termPort, client, GW_NAME, 4, 4))
        made = passed + terminated
        waitUntil(lambda: len(gw.accessLog()) >= made, 10, gw.explain)
        if len({e.get("worker_pid") for e in gw.accessLog()}) == workers:
            break
    else:
        raise AssertionError(f"one worker served everything\n{gw.explain()}")
    for _ in range(3):
        refusedHandshake(passPort, client, UNROUTED)
    entries = gw.waitForEntries(passed + terminated + 3, timeout=10)

    def expected(listener: str, status: str) -> int:
        return sum(
            1 for e in entries if e["listener"] == listener and e["status"] == status
        )

    assert expected("pass", "ok") == passed
    assert expected("term", "ok") == terminated
    assert expected("pass", "no_route") == 3
    assert sum(1 for e in entries if e["status"] in ("ok", "no_route")) == len(entries)

    wanted: dict[Sample, float] = {
        metric("tlsgateway_handshake_seconds_count"): terminated,
        metric("tlsgateway_upstream_server_up", upstream="live", server=web.address): 1,
        metric("tlsgateway_upstream_server_up", upstream="dead", server=dead): 0,
        metric("tlsgateway_upstream_server_up", upstream="app", server=app.address): 1,
    }
    for listener in ("pass", "term"):
        wanted[metric("tlsgateway_active_connections", listener=listener)] = 0
        for status in ("ok", "no_route"):
            if count := expected(listener, status):
                name = "tlsgateway_connections_total"
                wanted[metric(name, listener=listener, status=status)] = count
        for direction, field in (("in", "bytes_in"), ("out", "bytes_out")):
            wanted[
                metric("tlsgateway_bytes_total", listener=listener, direction=direction)
            ] = sum(e[field] for e in entries if e["listener"] == listener)

    def mismatches() -> dict[Sample, tuple[float | None, float]]:
        samples = scrape(metricsPort)
        return {
            key: (samples.get(key), value)
            for key, value in wanted.items()
            if samples.get(key) != value
        }

    # Counters are written as connections end and the server states every
    # second: give the samplers a few health intervals.
    deadline = time.monotonic() + 8
    while (wrong := mismatches()) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not wrong, f"(metric, labels): (found, wanted): {wrong}\n{gw.explain()}"


# -- tlsgateway reload -------------------------------------------------------------------


@pytest.mark.parametrize("target", ["--pid", "--pidfile"])
def test_reloadCommandChecksThenSignals(
    gateway: StartGateway,
    backend: StartBackend,
    client: ssl.SSLContext,
    target: str,
) -> None:
    """
    C{tlsgateway reload --config FILE} checks FILE first: a good one is
    loaded by the running gateway (exit 0), a broken one is reported on the
    terminal with FILE:LINE (exit 1) and the gateway is not signalled.
    C{--pidfile} uses the C{twistd.pid} that C{twistd} writes.
    """
    one = backend("one", names=[EXACT])
    two = backend("two", names=[EXACT])
    port = freePort()

    def config(servers: str, broken: bool = False) -> str:
        return iniText(
            listeners={"web": {"listen": listen(port), "routes": [f"{EXACT} up"]}},
            upstreams={
                "up": {
                    "servers": servers,
                    **({"balance": "roundrobin"} if broken else {}),
                }
            },
        )

    gw = gateway(
        config(one.address), command="twistd" if target == "--pidfile" else "module"
    )
    assert httpsGet(gw.port, client, EXACT)[0] == "one"
    pidArguments = (
        ["--pid", str(gw.pid)]
        if target == "--pid"
        else ["--pidfile", str(gw.directory / "twistd.pid")]
    )
    reload = [
        sys.executable,
        "-m",
        "gateway",
        "reload",
        *pidArguments,
        "--config",
        str(gw.configPath),
    ]

    gw.configPath.write_text(config(two.address))
    result = runCommand(reload, gw.directory)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"sent SIGHUP to {gw.pid}" in result.stdout
    waitForCount(gw, RELOADED, 1)
    assert httpsGet(gw.port, client, EXACT)[0] == "two", gw.explain()

    broken = config(one.address, broken=True)
    gw.configPath.write_text(broken)
    signalled = countIn(gw, "received SIGHUP")
    result = runCommand(reload, gw.directory)
    assert result.returncode == 1, (result.stdout, result.stderr)
    line = lineOf(broken, "balance")
    assert f"{gw.configPath}:{line}: [upstream:up] balance: " in result.stderr, result
    time.sleep(1)  # a SIGHUP, had one been sent, would be logged by now
    assert countIn(gw, "received SIGHUP") == signalled, gw.explain()
    assert httpsGet(gw.port, client, EXACT)[0] == "two", gw.explain()


# -- SIGUSR1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1ReopensTheAccessLogAfterItWasMoved(
    supervised: StartGateway,
    backend: StartBackend,
    client: ssl.SSLContext,
    workers: int,
) -> None:
    """
    logrotate's way: rename the file, SIGUSR1, and the gateway (every
    worker) writes to a new file at the configured path; the moved file
    keeps what was logged before, and nothing after.
    """
    web = backend("web", names=[EXACT])
    gw = supervised(workersIni(freePort(), web.address, workers=str(workers)))
    waitForWorkers(gw, workers)
    assert manyGets(gw.port, client, EXACT, 10, 5) == ["web"] * 10
    gw.waitForEntries(10, timeout=10)

    rotated = gw.accessLogPath.with_name("access.log.1")
    gw.accessLogPath.rename(rotated)
    # Until the signal, lines still go to the moved file (it is still open).
    assert manyGets(gw.port, client, EXACT, 2, 1) == ["web"] * 2
    waitUntil(lambda: len(rotated.read_text().splitlines()) >= 12, 10, gw.explain)

    gw.sendSignal(signal.SIGUSR1)
    waitForCount(gw, "received SIGUSR1", readyLines(workers))  # one per process
    assert manyGets(gw.port, client, EXACT, 20, 10) == ["web"] * 20
    assert len(gw.waitForEntries(20, timeout=10)) == 20
    assert len(rotated.read_text().splitlines()) == 12
    assert all(e["status"] == "ok" for e in gw.accessLog())
