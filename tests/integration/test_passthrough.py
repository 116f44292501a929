"""
SNI passthrough, end to end: a real gateway process, real TLS clients
(C{openssl s_client}, C{curl}, Python C{ssl}) and TLS backends whose
certificates the clients verify *through* the gateway, which never sees a
key.  Backends record what reached them, so each test can tell "routed to
the right place, byte for byte" from "something answered".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import selectors
import signal
import socket
import ssl
import struct
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.helpers import fastPathOnly

from .backends import (
    Backend,
    connect,
    downloadAll,
    expectClosed,
    readUntilEof,
    readUntilTcpEof,
    refusedHandshake,
    tlsConnect,
    uploadPattern,
    waitUntil,
)
from .conftest import GatewayStarter
from .harness import (
    ACCESS_LOG_KEYS,
    BIN,
    CertificateAuthority,
    Gateway,
    bySni,
    commandFor,
    curlGet,
    dnsNames,
    freePort,
    gatewayIni,
    httpRequest,
    httpsFetch,
    ja4Fingerprint,
    okBody,
    opensslGet,
    requireTools,
    runCommand,
)

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024

EXACT = "a.example.test"
WILDCARD = "*.wild.example.test"
WILD_ONE = "x.wild.example.test"  # one label under the wildcard
WILD_TWO = "deep.er.wild.example.test"  # two labels: NGINX "*." matches any depth
DEFAULT = "default.example.test"
UNKNOWN = "unknown.example.test"  # routed by `default`; its backend's cert covers it


def pythonGet(
    port: int, context: ssl.SSLContext, serverName: str | None, host: str
) -> tuple[str, dict[str, Any]]:
    """An HTTPS request with the standard library's C{SSLSocket}."""
    response, certificate, _ = httpsFetch(port, context, serverName, host)
    return okBody(response), certificate


def relayingTo(gateway: GatewayStarter, address: str, relay: str) -> Gateway:
    """A gateway whose one listener relays every name to C{address} with C{relay}."""
    return gateway(
        gatewayIni(
            freePort(),
            upstream="up",
            upstreams={"up": address},
            listenerKeys={"relay": relay},
            # The relay each connection got is a debug line.
            gatewayKeys={"log_level": "debug"},
        )
    )


def echoing(gateway: Any, backend: Any, **keys: Any) -> tuple[Gateway, Backend]:
    """
    A gateway whose one listener relays every name to a new echo backend,
    with C{keys} for L{gatewayIni} (C{listenerKeys}, C{gatewayKeys}).
    """
    echo = backend("echo", "echo", names=[EXACT])
    gw = gateway(
        gatewayIni(freePort(), upstream="up", upstreams={"up": echo.address}, **keys)
    )
    return gw, echo


#: The relays the relay guarantees are checked with (listener key `relay`);
#: the splice relay is a fast path, off with TLSGATEWAY_PORTABLE=1.
RELAYS = pytest.mark.parametrize(
    "relay", [pytest.param("splice", marks=fastPathOnly), "portable"]
)


def assertRelayed(gw: Gateway, relay: str) -> None:
    """The gateway's debug log says C{relay} relayed a connection, as asked."""
    gw.waitForOutput(f": {relay} (relay = {relay})")


@attrs.frozen
class Routed:
    """A gateway routing EXACT, WILDCARD and default to three backends."""

    gateway: Gateway
    exact: Backend
    wild: Backend
    default: Backend

    @property
    def port(self) -> int:
        return self.gateway.port

    def backendFor(self, name: str) -> Backend:
        return {EXACT: self.exact, WILD_ONE: self.wild, WILD_TWO: self.wild}.get(
            name, self.default
        )


ROUTED_NAMES = [EXACT, WILD_ONE, WILD_TWO, UNKNOWN]


def startRouted(gateway: Any, backend: Any, command: str = "twistd") -> Routed:
    exact = backend("exact", names=[EXACT])
    wild = backend("wild", names=[WILDCARD, WILD_TWO])
    default = backend("default", names=[DEFAULT, UNKNOWN])
    ini = gatewayIni(
        freePort(),
        routes=[(EXACT, "up_a"), (WILDCARD, "up_b"), ("default", "up_c")],
        upstreams={
            "up_a": exact.address,
            "up_b": wild.address,
            "up_c": default.address,
        },
    )
    return Routed(gateway(ini, command=command), exact, wild, default)


@pytest.fixture
def routed(gateway: Any, backend: Any) -> Routed:
    return startRouted(gateway, backend)


# -- routing, seen by three different TLS clients --------------------------------


def test_pythonClientReachesTheBackendOfEachNameAndVerifiesIt(
    routed: Routed, client: ssl.SSLContext
) -> None:
    for name in ROUTED_NAMES:
        answer, certificate = pythonGet(routed.port, client, name, name)
        expected = routed.backendFor(name)
        assert answer == expected.name, (name, routed.gateway.explain())
        assert name in dnsNames(certificate) or (
            name.endswith(".wild.example.test") and WILDCARD in dnsNames(certificate)
        )
        entry = routed.gateway.waitForLog(bySni(name))
        assert entry["status"] == "ok", entry
        assert entry["action"] == "passthrough", entry
        assert entry["upstream"] == expected.address, entry
    assert [r.sni for r in routed.exact.waitForRecords(1)] == [EXACT]
    assert sorted(r.sni or "" for r in routed.wild.waitForRecords(2)) == sorted(
        [WILD_ONE, WILD_TWO]
    )
    assert [r.sni for r in routed.default.waitForRecords(1)] == [UNKNOWN]


def test_curlReachesTheBackendOfEachName(
    routed: Routed, ca: CertificateAuthority
) -> None:
    requireTools("curl")
    for name in ROUTED_NAMES:
        result = curlGet(routed.port, ca, name)
        assert result.returncode == 0, (name, result.stderr, routed.gateway.explain())
        assert result.stdout == routed.backendFor(name).name, (name, result.stdout)


def sClient(port: int, ca: CertificateAuthority, *nameOptions: str, host: str) -> str:
    result = opensslGet(port, ca, *nameOptions, host=host)
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, (
        output[-2000:],
        result.stderr.decode(errors="replace"),
    )
    assert "Verify return code: 0 (ok)" in output, output[-2000:]
    return output


def test_opensslClientReachesTheBackendOfEachNameAndVerifiesIt(
    routed: Routed, ca: CertificateAuthority
) -> None:
    requireTools("openssl")
    for name in ROUTED_NAMES:
        output = sClient(
            routed.port, ca, "-servername", name, "-verify_hostname", name, host=name
        )
        # The body is the last thing the backend sent before closing.
        expected = routed.backendFor(name).name
        assert f"\r\n\r\n{expected}" in output, (name, output[-1500:])


def test_clientWithoutSniGoesToDefault(
    routed: Routed, ca: CertificateAuthority, client: ssl.SSLContext
) -> None:
    noName = ca.clientContext()
    noName.check_hostname = False  # no SNI, no name to check; the chain still is
    answer, certificate = pythonGet(routed.port, noName, None, DEFAULT)
    assert answer == "default"
    assert DEFAULT in dnsNames(certificate)
    entry = routed.gateway.waitForLog(bySni(None))
    assert entry["status"] == "ok", entry
    assert entry["upstream"] == routed.default.address, entry

    output = sClient(
        routed.port, ca, "-noservername", "-verify_hostname", DEFAULT, host=DEFAULT
    )
    assert "\r\n\r\ndefault" in output, output[-1500:]
    assert [r.sni for r in routed.default.waitForRecords(2)] == [None, None]
    assert routed.exact.accepted == routed.wild.accepted == 0


def test_noRouteAndNoDefaultClosesTheConnection(
    gateway: Any, backend: Any, client: ssl.SSLContext
) -> None:
    exact = backend("exact", names=[EXACT])
    gw = gateway(
        gatewayIni(
            freePort(), routes=[(EXACT, "up_a")], upstreams={"up_a": exact.address}
        )
    )
    refusedHandshake(gw.port, client, "nowhere.example.test")
    entry = gw.waitForLog(bySni("nowhere.example.test"))
    assert entry["status"] == "no_route", entry
    assert entry["upstream"] is None, entry
    assert exact.accepted == 0


def test_clientHelloSentOneByteAtATimeIsRoutedAndCompletes(
    routed: Routed, client: ssl.SSLContext
) -> None:
    stream = tlsConnect(routed.port, client, WILD_TWO, handshake=False, noDelay=True)
    try:
        hello = stream.takeClientHello()
        assert len(hello) > 200, hello
        for index in range(len(hello)):
            stream.sock.sendall(hello[index : index + 1])
            time.sleep(0.001)  # one segment per byte on loopback with TCP_NODELAY
        stream.handshake()  # verifies the wild backend's certificate for WILD_TWO
        stream.send(httpRequest(WILD_TWO))
        answer = okBody(readUntilTcpEof(stream))
    finally:
        stream.close()
    assert answer == "wild", routed.gateway.explain()
    entry = routed.gateway.waitForLog(bySni(WILD_TWO))
    assert entry["status"] == "ok", entry
    assert entry["bytes_in"] == stream.rawSent, entry


# -- byte-exact bulk transfer and half-close ------------------------------------


@RELAYS
def test_hundredMegabytesFromClientArriveByteExact(
    gateway: Any, backend: Any, client: ssl.SSLContext, relay: str
) -> None:
    total = 100 * MiB
    sink = backend("sink", "sink-hash", names=[EXACT])
    gw = relayingTo(gateway, sink.address, relay)
    started = time.monotonic()
    stream = tlsConnect(gw.port, client, EXACT)
    answer, sentDigest = uploadPattern(stream, total, seed=11)
    elapsed = time.monotonic() - started
    assert answer == f"{sentDigest} {total}\n", gw.explain()
    assert elapsed < 30, f"100 MB took {elapsed:.1f}s"
    entry = gw.waitForLog(bySni(EXACT))
    assert entry["bytes_in"] == stream.rawSent > total, entry
    assert entry["bytes_out"] == stream.rawReceived, entry
    assertRelayed(gw, relay)


@RELAYS
def test_hundredMegabytesFromBackendArriveByteExact(
    gateway: Any, backend: Any, client: ssl.SSLContext, relay: str
) -> None:
    total = 100 * MiB
    source = backend(
        "source", "source", names=[EXACT], sourceBytes=total, sourceSeed=12
    )
    gw = relayingTo(gateway, source.address, relay)
    started = time.monotonic()
    stream = tlsConnect(gw.port, client, EXACT)
    received, receivedDigest = downloadAll(stream)
    elapsed = time.monotonic() - started
    (record,) = source.waitForRecords(1)
    assert record.error is None, record
    assert received == record.sent == total, gw.explain()
    assert receivedDigest == record.sentDigest
    assert elapsed < 30, f"100 MB took {elapsed:.1f}s"
    entry = gw.waitForLog(bySni(EXACT))
    assert entry["bytes_in"] == stream.rawSent, entry
    assert entry["bytes_out"] == stream.rawReceived > total, entry
    assertRelayed(gw, relay)


@RELAYS
@pytest.mark.parametrize("closeNotify", [True, False], ids=["close_notify", "bare-fin"])
def test_clientHalfCloseReachesBackendWhichStillAnswers(
    gateway: Any, backend: Any, client: ssl.SSLContext, closeNotify: bool, relay: str
) -> None:
    """
    The sink answers only after the client's FIN reached it, so the answer
    arriving proves the gateway forwarded the FIN and kept the other
    direction open.
    """
    sink = backend("sink", "sink-hash", names=[EXACT])
    gw = relayingTo(gateway, sink.address, relay)
    payload = b"half-close me " * 1000
    stream = tlsConnect(gw.port, client, EXACT)
    stream.sock.settimeout(10)
    try:
        stream.send(payload)
        if closeNotify:
            stream.closeNotify()
        stream.shutdownWrite()
        answer = readUntilTcpEof(stream).decode()
    finally:
        stream.close()
    assert answer == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}\n", (
        gw.explain()
    )
    (record,) = sink.waitForRecords(1)
    assert record.error is None, record
    assert record.tcpEofSeen, record
    assert record.tlsEofSeen == closeNotify, record
    assert gw.waitForLog(bySni(EXACT))["status"] == "ok"
    assertRelayed(gw, relay)


@RELAYS
@pytest.mark.parametrize("closeNotify", [True, False], ids=["close_notify", "bare-fin"])
def test_backendHalfCloseReachesClientWhichCanStillSend(
    gateway: Any, backend: Any, client: ssl.SSLContext, closeNotify: bool, relay: str
) -> None:
    total = 1 * MiB
    source = backend(
        "source",
        "source",
        names=[EXACT],
        sourceBytes=total,
        sourceSeed=13,
        sourceCloseNotify=closeNotify,
    )
    gw = relayingTo(gateway, source.address, relay)
    late = b"sent after the backend's FIN " * 100
    stream = tlsConnect(gw.port, client, EXACT)
    stream.sock.settimeout(10)
    digest = hashlib.sha256()
    try:
        received = readUntilEof(stream, digest)
        readUntilTcpEof(stream)  # the backend's FIN, passed through
        assert stream.tcpEof
        assert stream.tlsEof == closeNotify
        stream.send(late)
        stream.closeNotify()
        stream.shutdownWrite()
        # Nothing more from a closed backend.
        assert expectClosed(stream.sock, timeout=5) == b""
    finally:
        stream.close()
    (record,) = source.waitForRecords(1)
    assert received == total, gw.explain()
    assert digest.hexdigest() == record.sentDigest, gw.explain()
    assert record.error is None, record
    assert record.received == len(late), (record, gw.explain())
    assert record.receivedDigest == hashlib.sha256(late).hexdigest()
    assertRelayed(gw, relay)


@RELAYS
def test_slowReaderKeepsGatewayMemoryBounded(
    gateway: Any, backend: Any, client: ssl.SSLContext, relay: str
) -> None:
    """
    A client that stops reading while the backend pushes 300 MB: backpressure
    must reach the backend instead of the gateway buffering.  Bound: the
    gateway's RSS grows by less than 40 MiB over a 3 s stall.
    """
    total = 300 * MiB
    bound = 40 * MiB
    source = backend(
        "source", "source", names=[EXACT], sourceBytes=total, sourceSeed=14
    )
    warm = backend("warm", names=[DEFAULT])
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[(EXACT, "up_source"), (DEFAULT, "up_warm")],
            upstreams={"up_source": source.address, "up_warm": warm.address},
            listenerKeys={"relay": relay},
            # The relay each connection got is a debug line.
            gatewayKeys={"log_level": "debug"},
        )
    )
    # One connection first, so lazily imported code is not counted as growth.
    assert pythonGet(gw.port, client, DEFAULT, DEFAULT)[0] == "warm"
    gw.waitForLog(bySni(DEFAULT))
    baseline = gw.rss()

    stream = tlsConnect(gw.port, client, EXACT, receiveBuffer=16 * 1024)
    digest = hashlib.sha256()
    try:
        received = 0
        while received < 64 * 1024:
            data = stream.recv()
            assert data, gw.explain()
            digest.update(data)
            received += len(data)
        peak = baseline
        stallEnd = time.monotonic() + 3.0
        while time.monotonic() < stallEnd:
            peak = max(peak, gw.rss())
            time.sleep(0.1)
        (record,) = source.records
        stalledAt = record.sent
        assert peak - baseline < bound, (
            f"gateway RSS grew {(peak - baseline) / MiB:.1f} MiB while the client"
            f" did not read (bound {bound // MiB} MiB); backend sent"
            f" {stalledAt / MiB:.1f} MiB\n{gw.explain()}"
        )
        assert stalledAt < total, "the backend was never paused: no backpressure"
        received += readUntilEof(stream, digest)
        stream.closeNotify()
        stream.shutdownWrite()
        readUntilTcpEof(stream)
    finally:
        stream.close()
    (record,) = source.waitForRecords(1)
    assert received == total, gw.explain()
    assert digest.hexdigest() == record.sentDigest, gw.explain()
    assertRelayed(gw, relay)


# -- refusals --------------------------------------------------------------------


def test_deadUpstreamClosesClientAsUpstreamUnavailable(
    gateway: Any, client: ssl.SSLContext
) -> None:
    deadPort = freePort()  # nothing listens there
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[(EXACT, "up_dead")],
            upstreams={"up_dead": f"127.0.0.1:{deadPort}"},
            listenerKeys={"connect_timeout": "2s"},
        )
    )
    started = time.monotonic()
    refusedHandshake(gw.port, client, EXACT)
    assert time.monotonic() - started < 8
    entry = gw.waitForLog(bySni(EXACT))
    assert entry["status"] == "upstream_unavailable", entry
    assert entry["action"] == "passthrough", entry


def test_silentClientIsClosedAtPrereadTimeout(gateway: Any, backend: Any) -> None:
    default = backend("default", names=[DEFAULT])
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[("default", "up")],
            upstreams={"up": default.address},
            listenerKeys={"preread_timeout": "1s"},
        )
    )
    with connect(gw.port) as sock:
        started = time.monotonic()
        assert expectClosed(sock, timeout=5) == b""
        elapsed = time.monotonic() - started
    assert 0.8 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s\n{gw.explain()}"
    entry = gw.waitForLog(lambda e: True)
    assert entry["status"] == "preread_timeout", entry
    assert entry["sni"] is None, entry
    assert entry["upstream"] is None, entry
    assert default.accepted == 0


def test_eachSilentClientIsClosedAtItsOwnDeadline(
    gateway: Any, backend: Any, client: ssl.SSLContext
) -> None:
    """
    Many pre-read deadlines pending at once, set at different moments
    (they share the gateway's one timer wheel): each connection is closed
    no earlier than its own timeout and well within a second after it, each
    ends with one access-log line, and a connection relaying meanwhile is
    not disturbed.
    """
    gw, _ = echoing(gateway, backend, listenerKeys={"preread_timeout": "1s"})
    stream = tlsConnect(gw.port, client, EXACT)
    silent: dict[socket.socket, float] = {}
    closedAfter: list[float] = []
    try:
        with selectors.DefaultSelector() as selector:
            for _ in range(30):
                sock = connect(gw.port)
                sock.setblocking(False)
                silent[sock] = time.monotonic()
                selector.register(sock, selectors.EVENT_READ)
                time.sleep(0.03)
            stream.send(b"still here")
            assert stream.recv() == b"still here"
            deadline = time.monotonic() + 10
            while silent and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    with contextlib.suppress(ConnectionResetError):
                        assert ready.recv(100) == b""
                    closedAfter.append(time.monotonic() - silent.pop(ready))
                    selector.unregister(ready)
                    ready.close()
        stream.send(b"and still")
        assert stream.recv() == b"and still"
    finally:
        stream.close()
        for sock in silent:
            sock.close()
    assert not silent, f"{len(silent)} never closed\n{gw.explain()}"
    assert min(closedAfter) >= 0.95, f"{sorted(closedAfter)}\n{gw.explain()}"
    assert max(closedAfter) <= 2.0, f"{sorted(closedAfter)}\n{gw.explain()}"
    entries = gw.waitForEntries(31)
    assert len(entries) == 31, entries
    statuses = sorted(entry["status"] for entry in entries)
    assert statuses == ["ok"] + ["preread_timeout"] * 30, statuses


def test_plainTextIsBadClientHelloAndReachesNoBackend(
    gateway: Any, backend: Any
) -> None:
    exact = backend("exact", names=[EXACT])
    default = backend("default", names=[DEFAULT])
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[(EXACT, "up_a"), ("default", "up_c")],
            upstreams={"up_a": exact.address, "up_c": default.address},
        )
    )
    with connect(gw.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n")
        started = time.monotonic()
        expectClosed(sock, timeout=5)
        assert time.monotonic() - started < 3, gw.explain()
    entry = gw.waitForLog(lambda e: True)
    assert entry["status"] == "bad_client_hello", entry
    assert entry["upstream"] is None, entry
    time.sleep(0.2)  # a wrongly relayed connection would have been accepted by now
    assert exact.accepted == default.accepted == 0


# -- the access log --------------------------------------------------------------


@RELAYS
def test_accessLogLineHasEveryKeyAndExactByteCounts(
    gateway: Any, backend: Any, ca: CertificateAuthority, relay: str
) -> None:
    sink = backend("sink", "sink-hash", names=[EXACT])
    gw = gateway(
        gatewayIni(
            freePort(),
            routes=[(EXACT, "up")],
            upstreams={"up": sink.address},
            listenerKeys={"relay": relay},
            # The relay each connection got is a debug line.
            gatewayKeys={"log_level": "debug"},
        )
    )
    context = ca.clientContext()
    context.set_alpn_protocols(["h2", "http/1.1"])
    payload = b"x" * 12345
    before = time.time()
    stream = tlsConnect(gw.port, context, EXACT)
    clientPort = stream.sock.getsockname()[1]
    try:
        stream.send(payload)
        stream.closeNotify()
        stream.shutdownWrite()
        answer = readUntilTcpEof(stream)
    finally:
        stream.close()
    after = time.time()
    assert answer.endswith(b" 12345\n"), (answer, gw.explain())

    entry = gw.waitForLog(bySni(EXACT))
    assert entry.keys() >= ACCESS_LOG_KEYS, sorted(ACCESS_LOG_KEYS - entry.keys())
    assert entry["listener"] == "web"
    assert entry["client"] == f"127.0.0.1:{clientPort}"
    assert entry["alpn"] == ["h2", "http/1.1"]
    assert entry["action"] == "passthrough"
    assert entry["upstream"] == sink.address
    assert entry["status"] == "ok"
    assert "reason" not in entry or entry["reason"] is None, entry
    # Bytes on the client's socket, the ClientHello included, both ways.
    assert entry["bytes_in"] == stream.rawSent, (entry, stream.rawSent)
    assert entry["bytes_out"] == stream.rawReceived, (entry, stream.rawReceived)
    accepted = datetime.fromisoformat(entry["time"]).timestamp()
    assert before - 1 <= accepted <= after + 1, (entry["time"], before, after)
    assert isinstance(entry["duration_ms"], int | float)
    assert 0 <= entry["duration_ms"] <= (after - before) * 1000 + 1000, entry
    assertRelayed(gw, relay)


# -- the commands ----------------------------------------------------------------


GOOD_INI = """\
[gateway]
access_log = off

[listener:web]
listen = tcp:{port}:interface=127.0.0.1
preread_timeout = 2s
routes =
    a.example.test      up_a
    *.wild.example.test up_a
    default             up_a

[upstream:up_a]
servers = 127.0.0.1:{upstream}
"""

BROKEN_INI = """\
[gateway]
access_log = off

[listener:web]
listen = tcp:{port}:interface=127.0.0.1
preread_timeout = soon
idle_timeuot = 5s
routes =
    a.example.test      up_a
    default             nowhere

[upstream:up_a]
servers = 127.0.0.1:notaport
balance = roundrobin
"""

PROBLEM = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+): \[(?P<section>[^\]]+)\] (?P<key>[\w.-]+): (?P<message>.+)$"
)


def checkCommand(kind: str, path: Path) -> list[str]:
    if kind == "script" and not (BIN / "tlsgateway").exists():
        pytest.skip("the tlsgateway console script is not installed (pip install .)")
    return commandFor(kind, "check", str(path))


def lineOf(text: str, start: str) -> int:
    (number,) = [
        i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start)
    ]
    return number


@pytest.mark.parametrize("kind", ["module", "script"])
def test_checkAcceptsAGoodFile(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "good.ini"
    path.write_text(GOOD_INI.format(port=freePort(), upstream=freePort()))
    result = runCommand(checkCommand(kind, path), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "configuration OK" in result.stdout, (result.stdout, result.stderr)


@pytest.mark.parametrize("kind", ["module", "script"])
def test_checkReportsEveryProblemWithFileAndLine(tmp_path: Path, kind: str) -> None:
    text = BROKEN_INI.format(port=freePort())
    path = tmp_path / "broken.ini"
    path.write_text(text)
    result = runCommand(checkCommand(kind, path), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "configuration OK" not in output
    problems = [m.groupdict() for m in map(PROBLEM.match, output.splitlines()) if m]
    assert problems, output
    for problem in problems:
        assert Path(problem["file"]).name == "broken.ini", problem
    found = {(p["section"], p["key"]): int(p["line"]) for p in problems}
    expected = {
        ("listener:web", "preread_timeout"): {lineOf(text, "preread_timeout")},
        ("listener:web", "idle_timeuot"): {lineOf(text, "idle_timeuot")},
        # an unknown upstream: the `routes` key or the route's own line
        ("listener:web", "routes"): {
            lineOf(text, "routes"),
            lineOf(text, "    default"),
        },
        ("upstream:up_a", "servers"): {lineOf(text, "servers")},
        ("upstream:up_a", "balance"): {lineOf(text, "balance")},
    }
    for where, lines in expected.items():
        assert where in found, (f"no problem reported for {where}", output)
        assert found[where] in lines, (where, found[where], lines, output)


# -- stopping: exit status, drain, and the timeouts of relayed connections --------


@pytest.mark.parametrize("command", ["twistd", "module"])
def test_gatewayRoutesAndExitsZeroOnSigterm(
    gateway: Any, backend: Any, client: ssl.SSLContext, command: str
) -> None:
    routed = startRouted(gateway, backend, command=command)
    assert pythonGet(routed.port, client, EXACT, EXACT)[0] == "exact"
    assert pythonGet(routed.port, client, WILD_ONE, WILD_ONE)[0] == "wild"
    routed.gateway.waitForLog(bySni(WILD_ONE))
    code = routed.gateway.stop()
    assert code == 0, (
        f"exit status {code} after SIGTERM with nothing to drain; the contract"
        f" says a drain that ends normally exits 0\n{routed.gateway.explain()}"
    )


def test_sigtermDrainsAnEstablishedConnectionThenExitsZero(
    gateway: Any, backend: Any, client: ssl.SSLContext
) -> None:
    echo = backend("echo", "echo", names=[EXACT])
    gw = gateway(
        gatewayIni(freePort(), upstream="up", upstreams={"up": echo.address}),
        command="module",
    )
    stream = tlsConnect(gw.port, client, EXACT)
    stream.sock.settimeout(10)
    try:
        stream.send(b"before")
        assert stream.recv() == b"before"
        gw.sendSignal(signal.SIGTERM)

        def refused() -> bool:
            try:
                connect(gw.port).close()
            except ConnectionRefusedError:
                return True
            return False

        waitUntil(refused, 5, lambda: f"still accepting while draining\n{gw.explain()}")
        stream.send(b"during the drain")
        assert stream.recv() == b"during the drain", gw.explain()
        assert gw.running()
        stream.closeNotify()
        stream.shutdownWrite()
        assert readUntilTcpEof(stream) == b""
    finally:
        stream.close()
    assert gw.waitForExit(10) == 0, gw.explain()
    entry = gw.waitForLog(bySni(EXACT), timeout=1)
    assert entry["status"] == "ok", entry


def test_drainTimeoutClosesWhatIsLeftAsShutdown(
    gateway: Any, backend: Any, client: ssl.SSLContext
) -> None:
    gw, _ = echoing(gateway, backend, gatewayKeys={"drain_timeout": "1s"})
    stream = tlsConnect(gw.port, client, EXACT)
    try:
        stream.send(b"ping")
        assert stream.recv() == b"ping"
        started = time.monotonic()
        gw.sendSignal(signal.SIGTERM)
        assert expectClosed(stream.sock, timeout=8) == b""
        elapsed = time.monotonic() - started
    finally:
        stream.close()
    assert 0.8 <= elapsed <= 4, f"closed {elapsed:.2f}s after SIGTERM\n{gw.explain()}"
    gw.waitForExit(10)
    entry = gw.waitForLog(bySni(EXACT), timeout=1)
    assert entry["status"] == "shutdown", entry


@RELAYS
def test_idleRelayedConnectionIsClosedAtIdleTimeout(
    gateway: Any, backend: Any, client: ssl.SSLContext, relay: str
) -> None:
    gw, echo = echoing(
        gateway,
        backend,
        listenerKeys={"idle_timeout": "1s", "relay": relay},
        gatewayKeys={"log_level": "debug"},
    )
    stream = tlsConnect(gw.port, client, EXACT)
    try:
        # Traffic keeps it open past the timeout...
        for _ in range(4):
            time.sleep(0.4)
            stream.send(b"tick")
            assert stream.recv() == b"tick"
        # ...silence does not.
        started = time.monotonic()
        assert expectClosed(stream.sock, timeout=8) == b""
        elapsed = time.monotonic() - started
    finally:
        stream.close()
    assert 0.8 <= elapsed <= 3.5, f"closed after {elapsed:.2f}s idle\n{gw.explain()}"
    entry = gw.waitForLog(bySni(EXACT))
    assert entry["status"] == "idle_timeout", entry
    (record,) = echo.waitForRecords(1)
    assert record.received == 16, record
    assertRelayed(gw, relay)


# -- resets and the choice of relay ----------------------------------------------


@RELAYS
@pytest.mark.parametrize("resetter", ["client", "backend"])
def test_resetIsPassedOnAsReset(
    gateway: Any, client: ssl.SSLContext, relay: str, resetter: str
) -> None:
    """
    A peer that resets its connection (RST, not FIN) gets the other side
    reset too: a FIN could pass for a complete answer.  The backend is a
    plain socket: passthrough does not care what answers the ClientHello.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        gw = relayingTo(gateway, f"127.0.0.1:{server.getsockname()[1]}", relay)
        stream = tlsConnect(gw.port, client, EXACT, handshake=False)
        hello = stream.takeClientHello()
        stream.sock.sendall(hello)
        upstream, _ = server.accept()
    with upstream, stream.sock:
        upstream.settimeout(10)
        got = b""
        while len(got) < len(hello):
            got += upstream.recv(65536)
        assert got == hello
        upstream.sendall(b"relaying")
        assert stream.sock.recv(64) == b"relaying"
        resetting, other = (
            (stream.sock, upstream) if resetter == "client" else (upstream, stream.sock)
        )
        resetting.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        resetting.close()
        with pytest.raises(ConnectionResetError):
            other.recv(64)
    entry = gw.waitForLog(bySni(EXACT))
    side = "client" if resetter == "client" else "upstream"
    assert entry["closed_by"] == f"{side}_reset", entry
    assertRelayed(gw, relay)


@pytest.mark.parametrize(
    ("setting", "used"),
    [
        pytest.param("auto", "splice", marks=fastPathOnly),
        pytest.param("splice", "splice", marks=fastPathOnly),
        ("portable", "portable"),
    ],
)
def test_relayKeyChoosesTheRelayAndTheDebugLogSaysWhich(
    gateway: Any, backend: Any, client: ssl.SSLContext, setting: str, used: str
) -> None:
    """
    On Linux, C{auto} splices a passthrough connection between TCP sockets;
    the gateway's log says which relay each connection got, and why.
    """
    if used == "splice" and not hasattr(os, "splice"):
        used = "portable"
    exact = backend("exact", names=[EXACT])
    gw = gateway(
        gatewayIni(
            freePort(),
            upstream="up",
            upstreams={"up": exact.address},
            listenerKeys={"relay": setting},
            gatewayKeys={"log_level": "debug"},
        )
    )
    assert pythonGet(gw.port, client, EXACT, EXACT)[0] == "exact"
    entry = gw.waitForLog(bySni(EXACT))
    assert entry["status"] == "ok", entry
    gw.waitForOutput(f"relay {entry['client']} -> {exact.address}: {used}")


# -- JA4 (last: the fingerprint is a later addition to the access log) ---------------


@pytest.mark.parametrize(
    ("serverName", "alpn"),
    [(EXACT, ["h2", "http/1.1"]), (EXACT, None), (None, ["http/1.1"])],
    ids=["sni-h2", "sni-no-alpn", "no-sni-http1"],
)
def test_accessLogCarriesTheClientJa4Fingerprint(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    serverName: str | None,
    alpn: list[str] | None,
) -> None:
    """
    C{ja4} is the client's fingerprint, as L{ja4Fingerprint} (written from
    the FoxIO specification and checked against a published vector) computes
    it from the very ClientHello bytes this client sent.
    """
    upstream = backend("up", names=[EXACT])
    gw = gateway(
        gatewayIni(freePort(), upstream="up", upstreams={"up": upstream.address})
    )
    context = ca.clientContext()
    context.check_hostname = serverName is not None
    if alpn:
        context.set_alpn_protocols(alpn)
    stream = tlsConnect(gw.port, context, serverName, handshake=False)
    try:
        hello = stream.takeClientHello()
        stream.sock.sendall(hello)
        stream.handshake()
        stream.send(httpRequest(EXACT))
        assert okBody(readUntilTcpEof(stream)) == "up"
    finally:
        stream.close()
    entry = gw.waitForLog(bySni(serverName))
    assert entry["alpn"] == (alpn or []), entry
    assert entry["ja4"] == ja4Fingerprint(hello), entry
