"""
Run a real gateway process for end-to-end tests, and the CA its backends use.

The gateway under test is started exactly as an operator would start it
(C{twistd -n tlsgateway --config FILE} or C{python -m gateway run --config
FILE}), in a directory of its own that holds the INI file, the access log
and the process output, so a failing test can show what the gateway said.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import attrs
import pytest
import trustme

#: The checkout under test: tests find the code relative to this file.
REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
READY_LINE = "tlsgateway ready"

#: Every contract key of a JSON access-log line (CONTRACT.md, "Access log").
ACCESS_LOG_KEYS = frozenset(
    {
        "time",
        "listener",
        "client",
        "sni",
        "alpn",
        "ja4",
        "action",
        "upstream",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
    }
)


#: Ports handed out by L{freePort}: below Linux's ephemeral range
#: (32768-60999), where no outgoing connection (a gateway's to its
#: upstream, a client's) can take one between the test choosing it and the
#: process it is for binding it; a block of its own for each pytest-xdist
#: worker, so parallel tests never choose the same one.
_PORT_BLOCK = 800
_PORT_BASE = 20000


def _portCandidates() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    # Two suites on one machine (two checkouts, say) keep apart by giving
    # one of them another first block.
    index += int(os.environ.get("TLSGATEWAY_TEST_PORT_SLOT", "0"))
    start = _PORT_BASE + (index % 15) * _PORT_BLOCK
    offset = random.randrange(_PORT_BLOCK)
    while True:
        for step in range(_PORT_BLOCK):
            yield start + (offset + step) % _PORT_BLOCK
        offset = 0


_candidates: Iterator[int] | None = None


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago and that no other
    test of this run will be given (see L{_PORT_BASE}).
    """
    global _candidates
    if _candidates is None:
        _candidates = _portCandidates()
    for _ in range(_PORT_BLOCK):
        port = next(_candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's block")


def gatewayEnvironment() -> dict[str, str]:
    """
    The environment for gateway processes: this checkout first on the path.

    The package may or may not be installed in the venv; either way the
    tests must exercise the working tree.  C{twisted.plugins} is a namespace
    Twisted extends from every C{sys.path} entry, so the checkout's
    C{twisted/plugins/tlsgateway_plugin.py} is found this way too.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def commandFor(kind: str, subcommand: str, configPath: str) -> list[str]:
    """
    The argv that runs C{subcommand} (C{run} or C{check}) one way or another.

    @param kind: C{twistd} (C{run} only), C{twistd-epoll} (the same, on the
        reactor named by C{--reactor=epoll} rather than the gateway's),
        C{module} (C{python -m gateway}) or C{script} (the C{tlsgateway}
        console script).
    """
    if kind in ("twistd", "twistd-epoll"):
        assert subcommand == "run", "twistd only runs the gateway"
        chosen = ["--reactor=epoll"] if kind == "twistd-epoll" else []
        return [
            str(BIN / "twistd"),
            "-n",
            *chosen,
            "tlsgateway",
            "--config",
            configPath,
        ]
    if kind == "module":
        return [sys.executable, "-m", "gateway", subcommand, "--config", configPath]
    if kind == "script":
        return [str(BIN / "tlsgateway"), subcommand, "--config", configPath]
    raise ValueError(f"unknown command kind {kind!r}")


def listenerPorts(iniText: str) -> dict[str, int]:
    """C{{listener name: first tcp port of its listen key}} from INI text."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=False
    )
    parser.read_string(iniText)
    ports: dict[str, int] = {}
    for section in parser.sections():
        if not section.startswith("listener:"):
            continue
        listen = parser[section].get("listen", "")
        match = re.search(r"\btcp6?:(\d+)", listen)
        if match:
            ports[section.partition(":")[2]] = int(match.group(1))
    return ports


#: The keys of one INI section: a sequence value is written as continuation lines.
IniKeys = Mapping[str, str | Sequence[str]]


def iniSection(name: str, keys: IniKeys) -> str:
    """An INI section; a sequence value becomes continuation lines."""
    lines = [f"[{name}]"]
    for key, value in keys.items():
        if isinstance(value, str):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} =")
            lines += [f"    {line}" for line in value]
    return "\n".join(lines) + "\n"


def upstreamSections(upstreams: Mapping[str, str | Sequence[str]]) -> str:
    """C{[upstream:NAME]} sections: a name maps to one or more C{servers} lines."""
    sections = []
    for name, servers in upstreams.items():
        lines = [servers] if isinstance(servers, str) else list(servers)
        body = "\n".join(f"    {line}" for line in lines)
        sections.append(f"[upstream:{name}]\nservers =\n{body}\n")
    return "\n".join(sections)


def gatewayIni(
    port: int,
    *,
    routes: Iterable[tuple[str, str]] = (),
    upstream: str | None = None,
    upstreams: Mapping[str, str | Sequence[str]],
    listener: str = "web",
    listenerKeys: Mapping[str, str] = {},
    gatewayKeys: Mapping[str, str] = {},
) -> str:
    """
    The INI text of a one-listener gateway with a JSON access log.

    @param routes: C{(pattern, upstream)} lines, in order.
    """
    gateway = {"access_log": "access.log", "access_log_format": "json", **gatewayKeys}
    lines = ["[gateway]", *(f"{k} = {v}" for k, v in gateway.items()), ""]
    lines += [f"[listener:{listener}]", f"listen = tcp:{port}:interface=127.0.0.1"]
    if upstream is not None:
        lines.append(f"upstream = {upstream}")
    routeList = list(routes)
    if routeList:
        lines.append("routes =")
        lines += [f"    {pattern} {name}" for pattern, name in routeList]
    lines += [f"{k} = {v}" for k, v in listenerKeys.items()]
    return "\n".join(lines) + "\n\n" + upstreamSections(upstreams)


class GatewayFailed(AssertionError):
    """The gateway process did not start, or misbehaved; the message has its log."""


class Gateway:
    """
    One gateway process, started from INI text in its own directory.

    @ivar directory: the process's cwd, holding C{gateway.ini}, C{gateway.log}
        (its stdout and stderr) and, with the usual test settings, C{access.log}.
    @ivar ports: C{{listener name: port}} read back from the INI text.
    """

    def __init__(
        self,
        iniText: str,
        directory: Path,
        *,
        command: str = "twistd",
        readyTimeout: float = 20.0,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.configPath = directory / "gateway.ini"
        self.configPath.write_text(iniText)
        self.logPath = directory / "gateway.log"
        self.accessLogPath = directory / "access.log"
        self.ports = listenerPorts(iniText)
        self.command = commandFor(command, "run", str(self.configPath))
        self.readyTimeout = readyTimeout
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        with self.logPath.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=gatewayEnvironment(),
            )
        deadline = time.monotonic() + self.readyTimeout
        while READY_LINE not in self.output():
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise GatewayFailed(
                    f"gateway exited with {code} before '{READY_LINE}'\n{self.explain()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise GatewayFailed(
                    f"no '{READY_LINE}' within {self.readyTimeout}s\n{self.explain()}"
                )
            time.sleep(0.05)
        return self

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "gateway not started"
        return self.process.pid

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return next(iter(self.ports.values()))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait up to C{timeout}, then SIGKILL; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.returncode = self.process.returncode
        return self.returncode

    def sendSignal(self, number: int = signal.SIGTERM) -> None:
        """Send a signal by PID (the default: SIGTERM) without waiting."""
        os.kill(self.pid, number)

    def waitForExit(self, timeout: float = 10.0) -> int:
        """The exit code, waiting up to C{timeout}; fail (and kill) after that."""
        assert self.process is not None, "gateway not started"
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise GatewayFailed(
                f"still running after {timeout}s\n{self.explain()}"
            ) from None
        return self.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    # -- what it says --------------------------------------------------------

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.logPath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logTail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def explain(self, lines: int = 40) -> str:
        """A block for assertion messages: the command and the log tail."""
        state = "running" if self.running() else f"exited {self.returncode}"
        access = "\n".join(self._accessLogLines()[-10:])
        return (
            f"--- gateway ({state}) {' '.join(self.command)}\n"
            f"--- last {lines} lines of {self.logPath}:\n{self.logTail(lines)}\n"
            f"--- access log tail:\n{access}"
        )

    def _accessLogLines(self) -> list[str]:
        try:
            text = self.accessLogPath.read_text(errors="replace")
        except FileNotFoundError:
            return []
        # A line being written has no newline yet: leave it for the next read.
        return text.split("\n")[:-1]

    def accessLog(self) -> list[dict[str, Any]]:
        """Every complete access-log line, parsed (re-reads the file)."""
        entries = []
        for line in self._accessLogLines():
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GatewayFailed(
                        f"access log line is not JSON: {line!r}\n{self.explain()}"
                    ) from e
        return entries

    def waitForLog(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first access-log entry matching C{predicate}, polling up to C{timeout}."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.accessLog():
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise GatewayFailed(
                    f"no matching access-log entry within {timeout}s\n{self.explain()}"
                )
            time.sleep(0.05)

    def waitForEntries(
        self,
        count: int,
        timeout: float = 10.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """
        Every access-log entry (matching C{predicate}, when given) once there
        are at least C{count}, polling up to C{timeout}; in file order, which
        is the order the connections ended.
        """
        deadline = time.monotonic() + timeout
        while True:
            entries = [
                entry
                for entry in self.accessLog()
                if predicate is None or predicate(entry)
            ]
            if len(entries) >= count:
                return entries
            if time.monotonic() > deadline:
                raise GatewayFailed(
                    f"{len(entries)} access-log entries after {timeout}s, wanted"
                    f" {count}\n{self.explain()}"
                )
            time.sleep(0.05)

    def waitForOutput(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline:
                raise GatewayFailed(
                    f"{text!r} not logged within {timeout}s\n{self.explain()}"
                )
            time.sleep(0.05)

    def rss(self) -> int:
        """Resident memory of the process now, in bytes (Linux C{/proc})."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1)) * 1024


def bySni(name: str | None) -> Callable[[dict[str, Any]], bool]:
    """An access-log predicate: the entry of the connection that sent SNI C{name}."""
    return lambda entry: entry.get("sni") == name


def httpRequest(host: str) -> bytes:
    """A one-shot HTTP/1.1 GET for C{/} on C{host}, asking the server to close."""
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def okBody(response: bytes) -> str:
    """The body of a complete C{200} HTTP/1.1 response (asserting that it is one)."""
    head, separator, rest = response.partition(b"\r\n\r\n")
    assert separator, response[:300]
    assert head.startswith(b"HTTP/1.1 200 "), response[:300]
    return rest.decode()


def httpsFetch(
    port: int, context: ssl.SSLContext, serverName: str | None, host: str
) -> tuple[bytes, dict[str, Any], bytes]:
    """
    One HTTP request for C{host} over the standard library's C{SSLSocket}
    to 127.0.0.1:C{port}, sending C{serverName} as SNI, read to EOF.

    @return: the raw response, the peer certificate as C{getpeercert()}
        gives it and that certificate's DER.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=serverName) as tls,
    ):
        peer: dict[str, Any] = dict(tls.getpeercert() or {})
        der = tls.getpeercert(binary_form=True) or b""
        tls.sendall(httpRequest(host))
        response = bytearray()
        while chunk := tls.recv(65536):
            response += chunk
    return bytes(response), peer, der


def requireTools(*names: str) -> None:
    """Skip the test unless every one of the command-line tools C{names} is installed."""
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed")


def curlGet(
    port: int, ca: CertificateAuthority, name: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """
    C{curl https://NAME/} with C{NAME} resolved to 127.0.0.1:C{port},
    verified against C{ca}, with C{options} of the test's own; failing on
    an HTTP error, bounded.
    """
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            *options,
            "--max-time",
            "10",
            "--resolve",
            f"{name}:{port}:127.0.0.1",
            "--cacert",
            str(ca.pemPath),
            f"https://{name}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def opensslGet(
    port: int, ca: CertificateAuthority, *options: str, host: str
) -> subprocess.CompletedProcess[bytes]:
    """
    C{openssl s_client} to 127.0.0.1:C{port} (C{options} name the server),
    verifying against C{ca}: sends an HTTP request for C{host} and waits
    for the server's answer after stdin ends, bounded.
    """
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            *options,
            "-CAfile",
            str(ca.pemPath),
            "-verify_return_error",
            "-ign_eof",  # wait for the server's answer after stdin ends
        ],
        input=httpRequest(host),
        capture_output=True,
        timeout=20,
        check=False,
    )


def runCommand(
    argv: Sequence[str], cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a gateway command (such as C{check}) to completion, bounded."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=gatewayEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- certificates -------------------------------------------------------------


@attrs.frozen
class ServerCertificate:
    """A trustme leaf for some names, also written out as PEM files."""

    names: tuple[str, ...]
    leaf: trustme.LeafCert
    certificatePath: Path
    privateKeyPath: Path


def writeLeaf(
    directory: Path, stem: str, leaf: trustme.LeafCert, *names: str
) -> ServerCertificate:
    """
    Write a trustme leaf as C{<stem>-cert.pem} (leaf first) and
    C{<stem>-key.pem} in C{directory}, over any files of those names.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certificatePath = directory / f"{stem}-cert.pem"
    privateKeyPath = directory / f"{stem}-key.pem"
    certificatePath.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(privateKeyPath))
    privateKeyPath.chmod(0o600)
    return ServerCertificate(tuple(names), leaf, certificatePath, privateKeyPath)


def dnsNames(peer: Mapping[str, Any]) -> set[str]:
    """The DNS subject alternative names of a C{getpeercert()} dictionary."""
    return {value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"}


class CertificateAuthority:
    """
    A throwaway CA (trustme) whose certificate is in C{pemPath}.

    Clients get C{pemPath} (C{openssl -CAfile}, C{curl --cacert}) or
    L{clientContext}; backends get leaves from L{issue}.
    """

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.directory = directory
        self.pemPath = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.pemPath))
        self._serial = 0

    def issue(self, *names: str) -> ServerCertificate:
        """A server certificate for C{names}, written as C{<n>-cert.pem}/C{<n>-key.pem}."""
        self._serial += 1
        leaf = self.ca.issue_cert(*names)
        return writeLeaf(self.directory, f"server{self._serial}", leaf, *names)

    def clientContext(self) -> ssl.SSLContext:
        """A verifying client context (chain and host name) that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.pemPath))


# -- JA4, computed independently of the gateway --------------------------------

_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


def _isGrease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _u16s(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]


def _ja4Hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "0" * 12


def ja4Fingerprint(records: bytes) -> str:
    """
    The JA4 fingerprint (FoxIO spec) of a TCP ClientHello, from its TLS records.

    Written from the specification, not from the gateway's code, so that the
    access log's C{ja4} is checked against a second implementation.
    """
    handshake = bytearray()
    offset = 0
    while offset + 5 <= len(records):
        length = int.from_bytes(records[offset + 3 : offset + 5], "big")
        assert records[offset] == 0x16, "not a handshake record"
        handshake += records[offset + 5 : offset + 5 + length]
        offset += 5 + length
    assert handshake[0] == 1, "not a ClientHello"
    hello = bytes(handshake[4 : 4 + int.from_bytes(handshake[1:4], "big")])
    position = 2 + 32  # legacy_version, random
    position += 1 + hello[position]  # session id
    cipherLength = int.from_bytes(hello[position : position + 2], "big")
    ciphers = [
        c
        for c in _u16s(hello[position + 2 : position + 2 + cipherLength])
        if not _isGrease(c)
    ]
    position += 2 + cipherLength
    position += 1 + hello[position]  # compression methods
    extensionsEnd = position + 2 + int.from_bytes(hello[position : position + 2], "big")
    position += 2
    extensions: list[int] = []
    version = int.from_bytes(hello[0:2], "big")
    alpn = "00"
    signatureAlgorithms: list[int] = []
    while position + 4 <= extensionsEnd:
        kind = int.from_bytes(hello[position : position + 2], "big")
        length = int.from_bytes(hello[position + 2 : position + 4], "big")
        data = hello[position + 4 : position + 4 + length]
        position += 4 + length
        if _isGrease(kind):
            continue
        extensions.append(kind)
        if kind == 0x002B:  # supported_versions
            offered = [v for v in _u16s(data[1 : 1 + data[0]]) if not _isGrease(v)]
            version = max(offered, default=version)
        elif kind == 0x000D:  # signature_algorithms, kept in order
            signatureAlgorithms = _u16s(data[2 : 2 + int.from_bytes(data[0:2], "big")])
        elif kind == 0x0010 and len(data) > 3:  # ALPN: first and last char of the first
            first = data[3 : 3 + data[2]].decode("latin-1")
            if first[0].isalnum() and first[-1].isalnum():
                alpn = first[0] + first[-1]
            else:
                alpn = (
                    first.encode("latin-1").hex()[0] + first.encode("latin-1").hex()[-1]
                )
    sni = "d" if 0x0000 in extensions else "i"
    partA = (
        f"t{_JA4_VERSIONS.get(version, '00')}{sni}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn}"
    )
    partB = _ja4Hash(",".join(sorted(f"{c:04x}" for c in ciphers)))
    sortedExtensions = ",".join(
        sorted(f"{e:04x}" for e in extensions if e not in (0x0000, 0x0010))
    )
    if signatureAlgorithms:
        sortedExtensions += "_" + ",".join(f"{s:04x}" for s in signatureAlgorithms)
    return f"{partA}_{partB}_{_ja4Hash(sortedExtensions)}"
