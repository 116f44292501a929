"""
The hub's acceptor, end to end (issue 27): a real gateway process whose
passthrough-capable listener is accepted and pre-read by the epoll hub
(L{gateway.connection.hubaccept}), checked against what an operator sees:
the debug line that names who accepts, the bytes real clients (curl,
C{openssl s_client}, Python's C{ssl}) and backends exchange, and the access
log.

Each scenario is the one a port-accepted listener passes: a listener with
C{relay = portable} (accepted by its port) runs the same clients and must
write the same lines.  Under C{TLSGATEWAY_PORTABLE=1} (the suite's second
pass) every port accepts: the tests then check that the debug line says
so, and run the rest unchanged.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from gateway.fast.portable import PORTABLE
from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord

from .backends import (
    IO_TIMEOUT,
    Backend,
    TLSStream,
    downloadAll,
    expectClosed,
    patternDigest,
    readUntilTcpEof,
    tlsConnect,
    uploadPattern,
    waitUntil,
)
from .harness import (
    CertificateAuthority,
    Gateway,
    ServerCertificate,
    bySni,
    curlGet,
    freePort,
    httpRequest,
    httpsFetch,
    okBody,
    opensslGet,
    requireTools,
)
from .headerrecorder import HeaderRecorder, proxyHeader
from .test_operations import (
    Sample,
    iniText,
    listen,
    manyGets,
    metric,
    reloadBySignal,
    scrape,
    supervised,  # noqa: F401 - a fixture
    waitForWorkers,
    workersStarted,
)
from .test_reliability import (
    echoOnce,
    holdsAtLeast,
    limited,  # noqa: F401 - a fixture
    openDescriptors,
)

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]

HUB = "the hub"
PORT = "its port"


def echoIni(server: str, relay: str, gateway: dict[str, str]) -> str:
    """
    One passthrough listener routing C{a.example.test} to C{server}, with
    a long pre-read deadline, the debug log and C{gateway}'s keys.
    """
    return iniText(
        gateway={"log_level": "debug", **gateway},
        listeners={
            "web": {
                "listen": listen(freePort()),
                "routes": ["a.example.test echo"],
                "preread_timeout": "60s",
                "relay": relay,
            }
        },
        upstreams={"echo": {"servers": server}},
    )


def acceptor(relay: str = "auto") -> str:
    """
    Who accepts a passthrough listener with this C{relay}: the hub, unless
    the listener or the whole process (C{TLSGATEWAY_PORTABLE=1}) is portable.
    """
    return PORT if PORTABLE or relay == "portable" else HUB


def acceptorLine(port: int, who: str, listener: str = "web") -> str:
    """The debug line that names who accepts a listener's port."""
    return f"listener {listener} on {listen(port)}: accepted by {who}"


def assertAcceptedBy(gw: Gateway, who: str, times: int = 1) -> None:
    """
    C{gw} said, C{times} times, that C{who} accepts on its port, and never
    that the other one does.
    """
    other = PORT if who == HUB else HUB
    output = gw.output()
    assert output.count(acceptorLine(gw.port, who)) == times, gw.explain()
    assert acceptorLine(gw.port, other) not in output, gw.explain()


# -- 1. a passthrough listener ---------------------------------------------------


def test_passthroughListenerIsAcceptedByTheHubAndRelaysExactly(
    gateway: StartGateway, backend: StartBackend, ca: CertificateAuthority
) -> None:
    """
    curl, C{openssl s_client} and Python reach the backend their SNI
    names; a 3 MiB upload and a 3 MiB download arrive whole (by hash);
    each connection has one C{ok} line, and the byte counts of the two
    transfers are what the client put on and took off the wire.
    """
    requireTools("curl", "openssl")
    size = 3 * MiB
    servers = {
        "a": backend("a", names=["a.example.test"]),
        "b": backend("b", names=["b.example.test"]),
        "up": backend("up", "sink-hash", names=["up.example.test"]),
        "down": backend(
            "down",
            "source",
            names=["down.example.test"],
            sourceBytes=size,
            sourceSeed=4,
        ),
    }
    port = freePort()
    gw = gateway(
        iniText(
            gateway={"log_level": "debug"},
            listeners={
                "web": {
                    "listen": listen(port),
                    "routes": [f"{label}.example.test {label}" for label in servers],
                }
            },
            upstreams={label: {"servers": s.address} for label, s in servers.items()},
        )
    )
    assertAcceptedBy(gw, acceptor())

    result = curlGet(port, ca, "a.example.test")
    assert (result.returncode, result.stdout) == (0, "a"), result.stderr
    result2 = opensslGet(
        port, ca, "-servername", "b.example.test", host="b.example.test"
    )
    assert result2.returncode == 0, result2.stderr
    assert b"\r\n\r\nb" in result2.stdout, result2.stdout
    for name in ("a.example.test", "b.example.test"):
        response, _, _ = httpsFetch(port, ca.clientContext(), name, name)
        assert okBody(response) == name[0]

    upload = tlsConnect(port, ca.clientContext(), "up.example.test")
    answer, digest = uploadPattern(upload, size, seed=9)
    assert answer == f"{digest} {size}\n", gw.explain()
    download = tlsConnect(port, ca.clientContext(), "down.example.test")
    assert downloadAll(download) == (size, patternDigest(size, seed=4))

    gw.waitForEntries(6)
    time.sleep(0.2)  # a seventh line would be a connection logged twice
    entries = gw.accessLog()
    assert len(entries) == 6, entries
    for entry in entries:
        server = servers[entry["sni"].partition(".")[0]]
        assert (entry["status"], entry["action"], entry["upstream"]) == (
            "ok",
            "passthrough",
            server.address,
        ), entry
    for stream, name in ((upload, "up.example.test"), (download, "down.example.test")):
        entry = gw.waitForLog(bySni(name))
        assert (entry["bytes_in"], entry["bytes_out"]) == (
            stream.rawSent,
            stream.rawReceived,
        ), entry
    assert [s.accepted for s in servers.values()] == [2, 2, 1, 1]


def test_anIPv6ListenerIsAcceptedByTheHubToo(
    gateway: StartGateway, backend: StartBackend, ca: CertificateAuthority
) -> None:
    """
    On C{tcp6} the hub accepts as on C{tcp}: the client is routed by its
    SNI and logged with its IPv6 address and port.
    """
    web = backend("web", names=["a.example.test"])
    port = freePort()
    description = f"tcp6:{port}:interface=\\:\\:1"
    gw = gateway(
        iniText(
            gateway={"log_level": "debug"},
            listeners={
                "web": {"listen": description, "routes": ["a.example.test web"]}
            },
            upstreams={"web": {"servers": web.address}},
        )
    )
    assert f"listener web on {description}: accepted by {acceptor()}" in (
        gw.output()
    ), gw.explain()
    with (
        socket.create_connection(("::1", port), timeout=10) as raw,
        ca.clientContext().wrap_socket(raw, server_hostname="a.example.test") as tls,
    ):
        client = f"[::1]:{tls.getsockname()[1]}"
        tls.sendall(httpRequest("a.example.test"))
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    assert okBody(response) == "web"
    entry = gw.waitForLog(bySni("a.example.test"))
    assert (entry["client"], entry["status"]) == (client, "ok"), entry


# -- 2. a mixed listener behind a balancer ---------------------------------------


@pytest.fixture
def recorders(ca: CertificateAuthority) -> Iterator[tuple[HeaderRecorder, ...]]:
    """The passthrough route's TLS upstream and the terminated route's plaintext one."""
    passing = HeaderRecorder("passed", ca.issue("pass.example.test"))
    plain = HeaderRecorder("plain", None)
    yield passing, plain
    passing.stop()
    plain.stop()


def mixedIni(
    port: int,
    metricsPort: int,
    relay: str,
    recorders: tuple[HeaderRecorder, ...],
    own: ServerCertificate,
) -> str:
    passing, plain = recorders
    return iniText(
        gateway={"log_level": "debug", "metrics": listen(metricsPort)},
        listeners={
            "web": {
                "listen": listen(port),
                "routes": [
                    "pass.example.test pass passthrough",
                    "term.example.test plain terminate",
                ],
                "certificate": str(own.certificatePath),
                "private_key": str(own.privateKeyPath),
                "accept_proxy_protocol": "on",
                "proxy_protocol_from": "127.0.0.1",
                "proxy_protocol": "v2",
                "preread_timeout": "1s",
                "deny": "198.51.100.0/24",
                "max_connections": "3",
                "max_connections_per_client": "1",
                "relay": relay,
            }
        },
        upstreams={
            "pass": {"servers": passing.address},
            "plain": {"servers": plain.address},
        },
    )


def opened(port: int, before: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.sendall(before)
    return sock


def fetch(
    port: int, context: ssl.SSLContext, header: bytes, name: str
) -> tuple[str, int, int]:
    """
    An HTTPS request for C{name} after a PROXY header: the body, the bytes
    sent (the header included) and the bytes received.
    """
    with opened(port, header) as sock:
        stream = TLSStream(sock, context, serverHostname=name)
        stream.handshake()
        stream.send(httpRequest(name))
        body = okBody(readUntilTcpEof(stream))
    return body, len(header) + stream.rawSent, stream.rawReceived


def held(port: int, context: ssl.SSLContext, header: bytes) -> socket.socket:
    """A passthrough connection through its handshake, left open."""
    sock = opened(port, header)
    TLSStream(sock, context, serverHostname="pass.example.test").handshake()
    return sock


def normalised(entry: dict[str, Any]) -> tuple[object, ...]:
    """
    What must not depend on who accepted: the line without its times and
    the balancer's own port; bytes only for refusals (a handshake's
    size varies with its key shares).
    """
    client = re.sub(r"^127\.0\.0\.1:\d+$", "127.0.0.1", entry["client"])
    reason = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1", entry.get("reason") or "")
    ok = entry["status"] == "ok"
    return (
        client,
        entry["status"],
        entry["action"],
        entry["sni"],
        entry["upstream"],
        reason,
        None if ok else (entry["bytes_in"], entry["bytes_out"]),
    )


def counts(samples: dict[Sample, float]) -> dict[Sample, float]:
    """
    The samples of C{/metrics} that count connections (by status, action,
    refusal...) or say how many are active: bytes, durations and times
    vary from run to run, these must not vary with who accepts.
    """
    return {
        sample: value
        for sample, value in samples.items()
        if sample[0].startswith("tlsgateway_")
        and (sample[0].endswith("_total") or "active" in sample[0])
        and "bytes" not in sample[0]
    }


def mixedScenario(gw: Gateway, context: ssl.SSLContext) -> list[tuple[object, ...]]:
    """
    Every kind of connection the mixed listener serves or refuses, one
    after the other; the access log's lines, normalised and sorted.
    """
    port = gw.port
    served = {
        "203.0.113.1:40001": fetch(
            port, context, proxyHeader(2, "203.0.113.1", 40001), "pass.example.test"
        ),
        "203.0.113.2:40002": fetch(
            port, context, proxyHeader(1, "203.0.113.2", 40002), "term.example.test"
        ),
    }
    assert [body for body, _, _ in served.values()] == ["passed", "plain"]
    hello = makeClientHello("nowhere.example.test")
    with opened(port, proxyHeader(2, "203.0.113.3", 40003) + hello) as sock:
        assert expectClosed(sock, 10) == alertRecord(
            AlertDescription.UNRECOGNIZED_NAME, 0x0303
        )
    with opened(port, proxyHeader(1, "203.0.113.4", 40004)) as sock:
        assert expectClosed(sock, 10) == b""
    with opened(port, b"") as sock:
        assert expectClosed(sock, 10) == b""
    with opened(port, proxyHeader(2, "203.0.113.5", 40005) + hello[:60]) as sock:
        sock.shutdown(socket.SHUT_WR)
        expectClosed(sock, 10)
    with opened(port, proxyHeader(1, "198.51.100.7", 40007) + hello) as sock:
        assert expectClosed(sock, 10) == alertRecord(
            AlertDescription.ACCESS_DENIED, 0x0301
        )
    holding = [held(port, context, proxyHeader(2, "203.0.113.8", 40008))]
    try:
        with opened(port, proxyHeader(2, "203.0.113.8", 40018) + hello) as sock:
            expectClosed(sock, 10)
        holding.append(held(port, context, proxyHeader(2, "203.0.113.9", 40009)))
        holding.append(held(port, context, proxyHeader(2, "203.0.113.10", 40010)))
        with opened(port, proxyHeader(2, "203.0.113.11", 40011) + hello) as sock:
            expectClosed(sock, 10)
    finally:
        for sock in holding:
            sock.close()
    gw.waitForEntries(12, timeout=15)
    time.sleep(0.2)  # a thirteenth line would be a connection logged twice
    entries = gw.accessLog()
    for client, (_, bytesIn, bytesOut) in served.items():
        (entry,) = [e for e in entries if e["client"] == client]
        assert (entry["bytes_in"], entry["bytes_out"]) == (bytesIn, bytesOut), entry
    return sorted(map(normalised, entries), key=repr)


def statusPage(
    metricsPort: int, gw: Gateway
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """
    What the status page (C{/status.json}) says of the listener C{web}
    that must not depend on who accepted: its counts, and the statuses of
    its recent failures, oldest first; its byte totals are those of the
    access log (checked here, as the handshakes' sizes vary by run).
    """
    page = json.loads(fetchStatus(metricsPort))
    (web,) = [entry for entry in page["listeners"] if entry["name"] == "web"]
    lines = [entry for entry in gw.accessLog() if entry["listener"] == "web"]
    assert (web["bytes_in"], web["bytes_out"]) == (
        sum(entry["bytes_in"] for entry in lines),
        sum(entry["bytes_out"] for entry in lines),
    ), web
    failures = sorted(
        (failure.get("status"), failure.get("sni"))
        for failure in page["recent_failures"]
    )
    counts = {key: web[key] for key in ("active", "connections_total")}
    return counts, failures


def fetchStatus(port: int) -> bytes:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/status.json", timeout=10
    ) as response:
        body: bytes = response.read()
    return body


def test_mixedListenerServesAndRefusesAsAPortAcceptedOne(
    gateway: StartGateway,
    ca: CertificateAuthority,
    recorders: tuple[HeaderRecorder, ...],
) -> None:
    """
    A listener with passthrough and terminated routes behind a balancer
    (PROXY v1 and v2 headers in, v2 out): both routes work, the header's
    client is the client in the log and in the upstream's header, and
    every refusal (no route, silence, a truncated hello, C{deny}, the
    per-client and listener limits) is what the same listener writes with
    C{relay = portable}, whose port accepts; C{/metrics} counts the same.
    """
    own = ca.issue("term.example.test")
    context = ca.clientContext()
    results = {}
    counted = {}
    pages = {}
    for relay in ("auto", "portable"):
        metricsPort = freePort()
        gw = gateway(mixedIni(freePort(), metricsPort, relay, recorders, own))
        assertAcceptedBy(gw, acceptor(relay))
        results[relay] = mixedScenario(gw, context)
        counted[relay] = counts(scrape(metricsPort))
        pages[relay] = statusPage(metricsPort, gw)
        gw.stop()
        passing, plain = recorders
        assert passing.sources()[-4:] == [
            "203.0.113.1:40001",
            "203.0.113.8:40008",
            "203.0.113.9:40009",
            "203.0.113.10:40010",
        ]
        assert plain.sources()[-1:] == ["203.0.113.2:40002"]
    statuses = sorted((line[:4] for line in results["auto"]), key=repr)
    assert statuses == sorted(
        [
            ("203.0.113.1:40001", "ok", "passthrough", "pass.example.test"),
            ("203.0.113.2:40002", "ok", "terminate", "term.example.test"),
            ("203.0.113.3:40003", "no_route", None, "nowhere.example.test"),
            ("203.0.113.4:40004", "preread_timeout", None, None),
            ("127.0.0.1", "bad_proxy_header", None, None),
            ("203.0.113.5:40005", "bad_client_hello", None, None),
            ("198.51.100.7:40007", "denied", None, None),
            ("203.0.113.8:40008", "ok", "passthrough", "pass.example.test"),
            ("203.0.113.8:40018", "limited", None, None),
            ("203.0.113.9:40009", "ok", "passthrough", "pass.example.test"),
            ("203.0.113.10:40010", "ok", "passthrough", "pass.example.test"),
            ("127.0.0.1", "limited", None, None),
        ],
        key=repr,
    ), results["auto"]
    assert results["portable"] == results["auto"]
    assert (
        counted["auto"][
            metric("tlsgateway_connections_total", listener="web", status="limited")
        ]
        == 2
    )
    assert counted["portable"] == counted["auto"]
    assert pages["portable"] == pages["auto"]
    assert pages["auto"][0] == {"active": 0, "connections_total": 12}


# -- 3. relay = portable, and a reload that switches ------------------------------


def switchingIni(port: int, web: Backend, relay: str) -> str:
    return iniText(
        gateway={"log_level": "debug"},
        listeners={
            "web": {
                "listen": listen(port),
                "routes": ["a.example.test web"],
                "relay": relay,
            }
        },
        upstreams={"web": {"servers": web.address}},
    )


class Loop:
    """
    HTTPS requests one after the other from a thread, at most C{limit}
    of them, until stopped: each must reach the backend.

    @ivar made: requests answered so far.
    @ivar failures: what went wrong, if anything (the loop stops at the first).
    """

    def __init__(self, port: int, context: ssl.SSLContext, limit: int = 2000) -> None:
        self.made = 0
        self.failures: list[BaseException] = []
        self._port, self._context, self._limit = port, context, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop", daemon=True)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the loop did not stop"

    def _run(self) -> None:
        while not self._stop.is_set() and self.made < self._limit:
            try:
                assert httpsGet(self._port, self._context, "a.example.test") == "web"
            except (OSError, ssl.SSLError, AssertionError) as e:
                self.failures.append(e)
                return
            self.made += 1

    def advance(self, count: int, gw: Gateway) -> None:
        """Wait until C{count} more requests were answered (or one failed)."""
        target = self.made + count
        waitUntil(
            lambda: self.made >= target or self.failures or self.made >= self._limit,
            20,
            lambda: f"loop stuck at {self.made}\n{gw.explain()}",
        )
        assert not self.failures, (self.failures, gw.explain())
        assert self.made >= target, "the loop reached its bound"


def httpsGet(port: int, context: ssl.SSLContext, name: str) -> str:
    response, _, _ = httpsFetch(port, context, name, name)
    return okBody(response)


def test_portableListenerIsAcceptedByItsPort(
    gateway: StartGateway, backend: StartBackend, ca: CertificateAuthority
) -> None:
    web = backend("web", names=["a.example.test"])
    gw = gateway(switchingIni(freePort(), web, "portable"))
    assertAcceptedBy(gw, PORT)
    assert httpsGet(gw.port, ca.clientContext(), "a.example.test") == "web"
    assert gw.waitForLog(bySni("a.example.test"))["status"] == "ok"


def test_reloadsSwitchingToPortableAndBackMoveTheAcceptWithoutARefusal(
    gateway: StartGateway, backend: StartBackend, ca: CertificateAuthority
) -> None:
    """
    SIGHUP with C{relay = portable}, then again with C{auto}: the debug
    line says who accepts each time, and a loop of connections running
    across both reloads has no failure and one C{ok} line per connection.
    """
    web = backend("web", names=["a.example.test"])
    port = freePort()
    gw = gateway(switchingIni(port, web, "auto"))
    # (hub lines, port lines) after start, the switch, the switch back;
    # with every fast path off, the port accepts throughout and a reload
    # that leaves a port's acceptor as it was says nothing.
    expected = [(0, 1), (0, 1), (0, 2)] if PORTABLE else [(1, 0), (1, 1), (2, 1)]

    def said() -> tuple[int, int]:
        output = gw.output()
        return tuple(  # type: ignore[return-value]
            output.count(acceptorLine(port, who)) for who in (HUB, PORT)
        )

    assert said() == expected[0], gw.explain()
    with Loop(port, ca.clientContext()) as loop:
        loop.advance(10, gw)
        for relay, lines in (("portable", expected[1]), ("auto", expected[2])):
            gw.configPath.write_text(switchingIni(port, web, relay))
            reloadBySignal(gw)
            assert said() == lines, gw.explain()
            loop.advance(20, gw)
    assert not loop.failures, loop.failures
    entries = gw.waitForEntries(loop.made, timeout=15)
    assert len(entries) == loop.made, (len(entries), loop.made)
    assert {e["status"] for e in entries} == {"ok"}, entries
    assert web.accepted == loop.made


# -- 4. workers ---------------------------------------------------------------------


def test_bothWorkersAreAcceptedByTheHubAndServeABurst(
    supervised: StartGateway,  # noqa: F811 - the fixture imported above
    backend: StartBackend,
    ca: CertificateAuthority,
) -> None:
    """
    With C{workers = 2} each worker says who accepts on the shared socket
    (C{EPOLLEXCLUSIVE} in the hub); a burst of 200 connections, 20 at a
    time, all reach the backend and are each logged once, by a worker.
    """
    web = backend("web", names=["a.example.test"])
    gw = supervised(
        iniText(
            gateway={"log_level": "debug", "workers": "2"},
            listeners={
                "web": {"listen": listen(freePort()), "routes": ["a.example.test web"]}
            },
            upstreams={"web": {"servers": web.address}},
        ),
        command="module",
    )
    waitForWorkers(gw, 2)
    workers = workersStarted(gw)
    assert len(workers) == 2, gw.explain()
    assertAcceptedBy(gw, acceptor(), times=2)
    saying = re.findall(
        rf"\[worker (\d) [^]]*\] {re.escape(acceptorLine(gw.port, acceptor()))}",
        gw.output(),
    )
    assert sorted(saying) == ["1", "2"], gw.explain()

    answers = manyGets(gw.port, ca.clientContext(), "a.example.test", 200, 20)
    assert answers == ["web"] * 200
    entries = gw.waitForEntries(200, timeout=15)
    time.sleep(0.2)
    entries = gw.accessLog()
    assert len(entries) == 200, len(entries)
    assert {e["status"] for e in entries} == {"ok"}, entries
    # Logged once each: no two lines alike.  Not "200 client addresses": a
    # client port may be reused by a later connection of the burst.
    assert len({json.dumps(e, sort_keys=True) for e in entries}) == 200
    assert {e["worker_pid"] for e in entries} <= set(workers), entries
    assert web.accepted == 200


# -- 5. out of descriptors at accept ------------------------------------------------


@pytest.mark.parametrize("relay", ["auto", "portable"])
def test_connectionsPastTheDescriptorLimitAreClosedAtAcceptAndLogged(
    limited: Callable[[str, int], Gateway],  # noqa: F811 - the fixture imported above
    backend: StartBackend,
    relay: str,
) -> None:
    """
    With C{RLIMIT_NOFILE} lowered and every descriptor held by clients in
    the pre-read, new connections are accepted and closed at once (the
    reserved descriptor), each with an C{upstream_unavailable} line saying
    so; once the held clients leave, the gateway relays again; nothing is
    left unhandled.
    """
    echo = backend("echo", "echo", tls=False)
    limit = 48
    metricsPort = freePort()
    text = echoIni(
        echo.address, relay, {"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"}
    )
    gw = limited(text, limit)
    assertAcceptedBy(gw, acceptor(relay))
    held = holdUntil(gw, limit)
    extra = 3
    try:
        for _ in range(extra):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
                assert expectClosed(sock, 10) == b"", gw.explain()
        closed = gw.waitForEntries(
            extra, predicate=lambda e: "closed at accept" in (e.get("reason") or "")
        )
    finally:
        for sock in held:
            sock.close()
    assert len(closed) == extra, closed
    for entry in closed:
        assert entry["status"] == "upstream_unavailable", entry
        assert entry["reason"] == (
            "local resource error: EMFILE (Too many open files): closed at accept"
        ), entry
        assert (entry["sni"], entry["bytes_in"], entry["bytes_out"]) == (None, 0, 0)
    gw.waitForEntries(len(held) + extra)
    hello = makeClientHello("a.example.test")
    assert echoOnce(gw.port, hello) == hello, gw.explain()
    relayed = gw.waitForLog(bySni("a.example.test"))
    assert relayed["status"] == "ok", relayed
    entries = gw.waitForEntries(len(held) + extra + 1)
    assert len(entries) == len(held) + extra + 1, entries
    active = metric("tlsgateway_active_connections", listener="web")
    waitUntil(lambda: scrape(metricsPort)[active] == 0, 10, gw.explain)
    assert "Unhandled" not in gw.output(), gw.explain()
    assert "Traceback" not in gw.output(), gw.explain()


def holdUntil(gw: Gateway, count: int) -> list[socket.socket]:
    """
    Silent clients (each a descriptor in the pre-read) until the gateway
    holds C{count} descriptors.
    """
    held: list[socket.socket] = []
    while openDescriptors(gw) < count and len(held) < count:
        target = openDescriptors(gw) + 1
        held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
        waitUntil(partial(holdsAtLeast, gw, target), 5, gw.explain)
    return held


# -- 6. drain ------------------------------------------------------------------------


@pytest.mark.parametrize("relay", ["auto", "portable"])
def test_sigtermEndsPrereadAndRelayedConnectionsAtTheDrainDeadline(
    gateway: StartGateway,
    backend: StartBackend,
    ca: CertificateAuthority,
    relay: str,
) -> None:
    """
    SIGTERM with a silent client and one half through its hello (both in
    the pre-read, accepted by the hub) and an established relay: all three
    are ended by C{drain_timeout} and logged C{shutdown}; the process
    exits 0.
    """
    echo = backend("echo", "echo", names=["a.example.test"])
    gw = gateway(echoIni(echo.address, relay, {"drain_timeout": "2s"}))
    assertAcceptedBy(gw, acceptor(relay))
    silent = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    partly = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    partly.sendall(makeClientHello("a.example.test")[:40])
    relayed = tlsConnect(gw.port, ca.clientContext(), "a.example.test")
    relayed.send(b"ping")
    assert relayed.recv() == b"ping"
    clients = {
        f"127.0.0.1:{s.getsockname()[1]}": s for s in (silent, partly, relayed.sock)
    }
    relayedClient = f"127.0.0.1:{relayed.sock.getsockname()[1]}"
    started = time.monotonic()
    gw.sendSignal(signal.SIGTERM)
    try:
        for sock in clients.values():
            with contextlib.suppress(ConnectionResetError):
                expectClosed(sock, 8)
        cutAfter = time.monotonic() - started
    finally:
        for sock in clients.values():
            sock.close()
    assert 1.7 <= cutAfter <= 6, f"cut {cutAfter:.2f}s after SIGTERM"
    assert gw.waitForExit(10) == 0, gw.explain()
    assert "draining 3 connection(s)" in gw.output(), gw.explain()
    entries = {e["client"]: e for e in gw.accessLog()}
    assert set(entries) == set(clients), entries
    for entry in entries.values():
        assert entry["status"] == "shutdown", entry
    relayedEntry = entries[relayedClient]
    assert relayedEntry["action"] == "passthrough", relayedEntry
