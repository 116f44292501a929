"""
Helpers for the QUIC end-to-end tests: aioquic HTTP/3 backends and
clients as subprocesses (C{h3server.py}, C{h3client.py}), a free UDP port,
and the gateway's INI text with UDP endpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from tests.integration.harness import (
    CertificateAuthority,
    freePort,
    gatewayEnvironment,
    upstreamSections,
)

HERE = Path(__file__).parent


def freeUDPPort() -> int:
    """
    A port free on 127.0.0.1 for both TCP and UDP a moment ago (from the
    worker's block, see L{freePort}).
    """
    for _ in range(50):
        port = freePort()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")


class H3Backend:
    """
    An aioquic HTTP/3 server answering C{NAME PATH}, stopped by PID.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        name: str,
        *,
        retry: bool = False,
        port: int | None = None,
        names: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        certificate = ca.issue(*(names or (name,)))
        self.certificatePath = certificate.certificatePath
        self.port = freeUDPPort() if port is None else port
        command = [
            sys.executable,
            str(HERE / "h3server.py"),
            "--name",
            name,
            "--certificate",
            str(certificate.certificatePath),
            "--private-key",
            str(certificate.privateKeyPath),
            "--port",
            str(self.port),
        ]
        if retry:
            command.append("--retry")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=gatewayEnvironment(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening"):
            self.stop()
            raise RuntimeError(f"h3server {name} did not start: {line!r}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def h3Command(ca: CertificateAuthority, port: int, serverName: str) -> list[str]:
    """
    The argv of C{h3client.py} for a GET of C{serverName} through C{port}.
    """
    return [
        sys.executable,
        str(HERE / "h3client.py"),
        "--port",
        str(port),
        "--server-name",
        serverName,
        "--ca",
        str(ca.pemPath),
    ]


def h3Get(
    ca: CertificateAuthority,
    port: int,
    serverName: str,
    *options: str,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """
    Run C{h3client.py} against C{port} (bounded by C{timeout}).
    """
    return subprocess.run(
        [*h3Command(ca, port, serverName), *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=gatewayEnvironment(),
        check=False,
    )


def quicIni(
    port: int,
    *,
    routes: Iterable[tuple[str, str]],
    upstreams: Mapping[str, str | Sequence[str]],
    tcp: bool = False,
    listenerKeys: Mapping[str, str] = {},
    gatewayKeys: Mapping[str, str] = {},
) -> str:
    """
    A one-listener gateway on C{udp:PORT} (and C{tcp:PORT} with C{tcp}),
    JSON access log.
    """
    gateway = {"access_log": "access.log", "access_log_format": "json", **gatewayKeys}
    listen = [f"udp:{port}:interface=127.0.0.1"]
    if tcp:
        listen.insert(0, f"tcp:{port}:interface=127.0.0.1")
    lines = ["[gateway]", *(f"{k} = {v}" for k, v in gateway.items()), ""]
    lines += ["[listener:quic]", f"listen = {', '.join(listen)}", "routes ="]
    lines += [f"    {pattern} {name}" for pattern, name in routes]
    lines += [f"{k} = {v}" for k, v in listenerKeys.items()]
    return "\n".join(lines) + "\n\n" + upstreamSections(upstreams)


def waitUntil(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.05)


def realInitial(serverName: str) -> bytes:
    """
    A real client's first Initial datagram (aioquic's), for a gateway to
    route: what a spoofer replays or forges by the thousand.
    """
    connection = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], server_name=serverName
        )
    )
    connection.connect(("127.0.0.1", 443), now=0.0)
    return connection.datagrams_to_send(now=0.0)[0][0]


def longHeader(version: int, dcid: bytes, scid: bytes, size: int) -> bytes:
    """
    A v1-style Initial long header of C{version} padded with random bytes
    to C{size}: undecryptable, or of a version nobody speaks.
    """
    head = (
        bytes([0xC0])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + b"\x00"  # no token
    )
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def metricValue(text: str, name: str, **labels: str) -> float:
    """
    The value of one sample in Prometheus text, 0 when absent.
    """
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, rest = sample.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and found == wanted:
            return float(value)
    return 0.0


def fetchMetrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()  # type: ignore[no-any-return]
