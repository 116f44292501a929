"""
Keep-alive traffic through a terminating listener of a real gateway, on
the relay its connections get: the terminated relay, whose records move
in the splice hub (L{gateway.connection.terminatedrelay}), or, with
C{TLSGATEWAY_PORTABLE=1} (CI's second pass), the portable relay.  Either
way: exact bytes both ways over many requests on one connection, one
access-log line whose C{bytes_in} and C{bytes_out} are what crossed the
client's socket, and real clients (Python C{ssl}, C{curl}, C{openssl
s_client}) in front of real servers (the test's echo server, NGINX).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.fast.portable import PORTABLE

from .backends import (
    Backend,
    TLSStream,
    closeCleanly,
    echoRounds,
    tlsConnect,
    waitUntil,
)
from .harness import (
    CertificateAuthority,
    Gateway,
    ServerCertificate,
    freePort,
    requireTools,
)
from .test_termination import GW_NAME, terminatingIni

pytestmark = pytest.mark.timeout(90)

#: The gateway's debug line for a terminated connection's relay.
TERMINATED = "terminated (client TLS records in the hub"


@pytest.fixture
def gwCert(ca: CertificateAuthority) -> ServerCertificate:
    return ca.issue(GW_NAME)


def _startGateway(
    gateway: Any, certificate: ServerCertificate, upstream: dict[str, str]
) -> Gateway:
    ini = terminatingIni(
        freePort(),
        certificate=certificate,
        upstream="app",
        upstreams={"app": upstream},
    )
    ini = ini.replace("[gateway]\n", "[gateway]\nlog_level = debug\n", 1)
    gw: Gateway = gateway(ini)
    return gw


def _relayLine(gw: Gateway, upstreamKind: str) -> None:
    """
    The debug line says which relay took the connection: the terminated
    one, with the upstream's side in the hub too, or the portable one.
    """
    if PORTABLE:
        gw.waitForOutput(": portable (relay = ")
        assert TERMINATED not in gw.output()
    else:
        gw.waitForOutput(f"{TERMINATED}; upstream {upstreamKind} in the hub;")


def _assertCounted(gw: Gateway, stream: TLSStream, echo: Backend) -> None:
    (entry,) = gw.waitForEntries(1)
    assert entry["status"] == "ok", entry
    assert entry["action"] == "terminate", entry
    assert entry["upstream"] == echo.address, entry
    assert entry["sni"] == GW_NAME, entry
    for key in ("tls_version", "cipher", "tls_group"):
        assert entry.get(key), (key, entry)
    assert entry["bytes_in"] == stream.rawSent, (entry, stream.rawSent)
    assert entry["bytes_out"] == stream.rawReceived, (entry, stream.rawReceived)


def test_keepAliveRoundsArriveExactAndAreCountedOnTheClientSocket(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    echo = backend("app", "echo", tls=False)
    gw = _startGateway(gateway, gwCert, {"servers": echo.address})
    stream = tlsConnect(gw.port, client, GW_NAME)
    stream.sock.settimeout(10)
    sent, received = echoRounds(stream, 60)
    assert sent == received, gw.explain()
    assert closeCleanly(stream) == b""
    _assertCounted(gw, stream, echo)
    _relayLine(gw, "plain")


def test_aReencryptedUpstreamTakesTheSameWay(
    gateway: Any,
    backend: Any,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
    client: ssl.SSLContext,
) -> None:
    """
    An upstream with C{tls = on}: its records move in the hub too, through
    its own TLS layer.
    """
    echo = backend("app", "echo", names=["app.example.test"])
    gw = _startGateway(
        gateway,
        gwCert,
        {
            "servers": echo.address,
            "tls": "on",
            "tls_ca": str(ca.pemPath),
            "tls_server_name": "app.example.test",
        },
    )
    stream = tlsConnect(gw.port, client, GW_NAME)
    stream.sock.settimeout(10)
    sent, received = echoRounds(stream, 60)
    assert sent == received, gw.explain()
    assert closeCleanly(stream) == b""
    _assertCounted(gw, stream, echo)
    _relayLine(gw, "TLS")


# -- NGINX behind the gateway, curl and openssl s_client in front --------------------


class _Nginx:
    """
    NGINX serving a 6-byte answer over keep-alive HTTP on 127.0.0.1,
    started for one test and stopped by PID.
    """

    def __init__(self, directory: Path) -> None:
        self.port = freePort()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "nginx.conf"
        temp = directory / "temp"
        temp.mkdir(exist_ok=True)
        config.write_text(
            "daemon off;\n"
            "master_process off;\n"
            "worker_processes 1;\n"
            f"pid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            "    access_log off;\n"
            f"    client_body_temp_path {temp};\n"
            f"    proxy_temp_path {temp};\n"
            f"    fastcgi_temp_path {temp};\n"
            f"    uwsgi_temp_path {temp};\n"
            f"    scgi_temp_path {temp};\n"
            "    server {\n"
            f"        listen 127.0.0.1:{self.port};\n"
            '        location / { return 200 "hello\\n"; }\n'
            "    }\n"
            "}\n"
        )
        self.process = subprocess.Popen(
            ["nginx", "-c", str(config), "-p", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("nginx did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[_Nginx]:
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (apt-get install nginx)")
    server = _Nginx(tmp_path / "nginx")
    yield server
    server.stop()


def test_curlsKeepAliveRequestsShareOneConnection(
    gateway: Any,
    nginx: _Nginx,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
) -> None:
    requireTools("curl")
    gw = _startGateway(gateway, gwCert, {"servers": f"127.0.0.1:{nginx.port}"})
    url = f"https://{GW_NAME}:{gw.port}/"
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "20",
            "--resolve",
            f"{GW_NAME}:{gw.port}:127.0.0.1",
            "--cacert",
            str(ca.pemPath),
            "--write-out",
            "[%{num_connects}]",
            *[url] * 5,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (result.stderr, gw.explain())
    assert result.stdout == "hello\n[1]" + "hello\n[0]" * 4, result.stdout
    (entry,) = gw.waitForEntries(1)
    assert entry["status"] == "ok", entry
    assert entry["upstream"] == f"127.0.0.1:{nginx.port}", entry
    assert entry["bytes_in"] > 0, entry
    assert entry["bytes_out"] > 5 * len("hello\n"), entry
    _relayLine(gw, "plain")


def test_opensslSClientsPipelinedRequestsAreAnswered(
    gateway: Any,
    nginx: _Nginx,
    ca: CertificateAuthority,
    gwCert: ServerCertificate,
) -> None:
    requireTools("openssl")
    gw = _startGateway(gateway, gwCert, {"servers": f"127.0.0.1:{nginx.port}"})
    request = f"GET / HTTP/1.1\r\nHost: {GW_NAME}\r\n\r\n"
    last = f"GET / HTTP/1.1\r\nHost: {GW_NAME}\r\nConnection: close\r\n\r\n"
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-ign_eof",
            "-verify_return_error",
            "-connect",
            f"127.0.0.1:{gw.port}",
            "-servername",
            GW_NAME,
            "-CAfile",
            str(ca.pemPath),
        ],
        input=(request * 3 + last).encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    answers = result.stdout.split(b"HTTP/1.1 200 OK\r\n")
    assert len(answers) == 5, (result.stdout, result.stderr, gw.explain())
    assert all(answer.endswith(b"\r\n\r\nhello\n") for answer in answers[1:]), (
        result.stdout
    )
    (entry,) = gw.waitForEntries(1)
    assert entry["status"] == "ok", entry
    _relayLine(gw, "plain")


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/status.json", timeout=10
    ) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def test_activeCountsAndTheDrainHoldForTerminatedRelays(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    """
    The status page counts the open terminated connections; on SIGTERM an
    open one is still relayed while the drain lasts, then cut at its end
    and logged C{shutdown}, and the process exits 0.
    """
    echo = backend("app", "echo", tls=False)
    statusPort = freePort()
    ini = terminatingIni(
        freePort(),
        certificate=gwCert,
        upstream="app",
        upstreams={"app": echo.address},
    ).replace(
        "[gateway]\n",
        "[gateway]\n"
        f"metrics = tcp:{statusPort}:interface=127.0.0.1\n"
        "drain_timeout = 2s\n",
        1,
    )
    gw: Gateway = gateway(ini)
    first = tlsConnect(gw.port, client, GW_NAME)
    second = tlsConnect(gw.port, client, GW_NAME)
    for stream in (first, second):
        stream.sock.settimeout(10)
        stream.send(b"ping")
        assert stream.recv() == b"ping"
    assert _status(statusPort)["listeners"][0]["active"] == 2
    assert closeCleanly(first) == b""
    _assertCounted(gw, first, echo)
    waitUntil(
        lambda: _status(statusPort)["listeners"][0]["active"] == 1,
        10,
        "an ended terminated connection still counts as active",
    )
    started = time.monotonic()
    gw.sendSignal(signal.SIGTERM)
    gw.waitForOutput("received SIGTERM")
    second.send(b"during the drain")
    assert second.recv() == b"during the drain", gw.explain()
    with contextlib.suppress(ConnectionResetError, ssl.SSLError, OSError):
        while second.recv():
            pass
    cutAfter = time.monotonic() - started
    second.close()
    assert 1.5 <= cutAfter <= 6, f"cut {cutAfter:.2f}s after SIGTERM"
    assert gw.waitForExit(10) == 0, gw.explain()
    entries = gw.waitForEntries(2)
    assert [entry["status"] for entry in entries] == ["ok", "shutdown"], entries


def test_aKeyUpdateFromOpenSSLsClientIsAnsweredAndTheStreamGoesOn(
    gateway: Any, backend: Any, ca: CertificateAuthority, gwCert: ServerCertificate
) -> None:
    """
    C{openssl s_client}'s C{K} command: a TLS 1.3 C{KeyUpdate} asking the
    gateway to update its keys too.  OpenSSL's answer goes out with the
    relay's next read, and lines keep being echoed both ways.
    """
    requireTools("openssl")
    echo = backend("app", "echo", tls=False)
    gw = _startGateway(gateway, gwCert, {"servers": echo.address})
    process = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{gw.port}",
            "-servername",
            GW_NAME,
            "-CAfile",
            str(ca.pemPath),
            "-verify_return_error",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stdout = process.stdout.fileno()
    output = b""

    def waitFor(text: bytes, count: int = 1) -> None:
        nonlocal output
        deadline = time.monotonic() + 15
        while output.count(text) < count:
            assert time.monotonic() < deadline, (text, output)
            ready, _, _ = select.select([stdout], [], [], 0.2)
            if ready:
                chunk = os.read(stdout, 65536)
                assert chunk, (text, output)
                output += chunk

    try:
        waitFor(b"---\n")  # the handshake's summary
        updates = 0
        for line in (b"before the update", b"K", b"after the update", b"K", b"last"):
            process.stdin.write(line + b"\n")
            process.stdin.flush()
            if line == b"K":
                # s_client takes a whole read of its input as the command:
                # the next line goes once the update is done.
                updates += 1
                waitFor(b"KEYUPDATE", updates)
            else:
                waitFor(line + b"\n")
    finally:
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
    assert output.count(b"KEYUPDATE") == 2, output
    (entry,) = gw.waitForEntries(1)
    assert entry["status"] == "ok", (entry, output)
    _relayLine(gw, "plain")


def test_aReloadLeavesAnOpenTerminatedRelayRunning(
    gateway: Any, backend: Any, gwCert: ServerCertificate, client: ssl.SSLContext
) -> None:
    """
    SIGHUP while a terminated keep-alive connection is open: it goes on
    under the configuration it started with, exact both ways, and is
    logged once, counted on the client's socket.
    """
    echo = backend("app", "echo", tls=False)
    gw = _startGateway(gateway, gwCert, {"servers": echo.address})
    stream = tlsConnect(gw.port, client, GW_NAME)
    stream.sock.settimeout(10)
    stream.send(b"before the reload")
    assert stream.recv() == b"before the reload"
    gw.sendSignal(signal.SIGHUP)
    gw.waitForOutput("#info] reloaded")
    sent, received = echoRounds(stream, 60)
    assert sent == received, gw.explain()
    assert closeCleanly(stream) == b""
    _assertCounted(gw, stream, echo)
