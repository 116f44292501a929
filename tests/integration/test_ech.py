"""
Encrypted Client Hello end to end (CONTRACT.md, "Encrypted Client Hello"):
a real C{tlsgateway} process between Go's C{crypto/tls} ECH client and Go
TLS servers (L{tests.echtool}): split mode, where the gateway holds the
keys, routes on the inner name and the backend (without keys) accepts
ECH; the HelloRetryRequest case; keys the client did not use; no keys;
rotation across a reload; malformed ECH; C{check}.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.wire.echopen import generateKeyFile
from tests.echtool import echtool, runClient  # noqa: F401 (fixture)
from tests.integration.harness import (
    CertificateAuthority,
    Gateway,
    freePort,
    gatewayEnvironment,
    gatewayIni,
)

GatewayStarter = Callable[..., Gateway]
NAMES = ("a.example", "b.example", "public.example")


class GoServer:
    """
    One C{echtool server} process: a TLS 1.3 server that answers each
    connection with C{server=NAME ech=BOOL listen=ADDR}.
    """

    def __init__(self, tool: Path, cert: Any, *options: str) -> None:
        command = [str(tool), "server", "-listen", "127.0.0.1:0"]
        command += [
            "-cert",
            str(cert.certificatePath),
            "-key",
            str(cert.privateKeyPath),
        ]
        self.process = subprocess.Popen(
            [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        assert line.startswith("listening "), line
        self.address = line.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


@pytest.fixture
def goServer(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
) -> Iterator[Callable[..., GoServer]]:
    cert = ca.issue(*NAMES)
    started: list[GoServer] = []

    def start(*options: str) -> GoServer:
        server = GoServer(echtool, cert, *options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def keyFile(folder: Path, name: str, configId: int) -> tuple[Path, str]:
    """A key file for public.example, and its ECHConfigList in base64."""
    text, configList = generateKeyFile("public.example", configId)
    path = folder / name
    path.write_text(text)
    path.chmod(0o600)
    return path, base64.b64encode(configList).decode()


def splitIni(
    port: int, servers: dict[str, GoServer], keys: str | None, metrics: int = 0
) -> str:
    listenerKeys = {} if keys is None else {"ech_keys": keys}
    return gatewayIni(
        port,
        routes=[(name, name.split(".")[0]) for name in servers],
        upstreams={name.split(".")[0]: s.address for name, s in servers.items()},
        listenerKeys=listenerKeys,
        gatewayKeys={"metrics": f"tcp:{metrics}:interface=127.0.0.1"}
        if metrics
        else {},
    )


def connect(
    tool: Path,
    gw: Gateway,
    ca: CertificateAuthority,
    name: str,
    configs: str = "",
    curves: str = "",
) -> dict[str, Any]:
    return runClient(
        tool, f"127.0.0.1:{gw.port}", name, configs, ca.pemPath, curves=curves
    )


def entryFor(gw: Gateway, count: int) -> dict[str, Any]:
    """The access-log entry of the C{count}th connection."""
    return gw.waitForEntries(count)[count - 1]


def test_splitModeRoutesOnTheInnerName(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    goServer: Callable[..., GoServer],
    tmp_path: Path,
) -> None:
    """
    Two hidden names reach their two backends, which hold no keys and
    accept ECH because they receive the inner hello; the access log shows
    the inner name as C{sni}, the public name as C{outer_sni}, and the
    metric counts them.  A client without ECH is served as before; a
    hidden name without a route is C{no_route}.
    """
    servers = {name: goServer() for name in NAMES}
    path, configs = keyFile(tmp_path, "ech.pem", 5)
    metricsPort = freePort()
    gw = gateway(splitIni(freePort(), servers, str(path), metricsPort))
    for count, name in enumerate(("a.example", "b.example"), 1):
        result = connect(echtool, gw, ca, name, configs)
        assert result["ech_accepted"] is True, (result, gw.explain())
        # The backend saw the inner name.  Go reports ECHAccepted only
        # where it decrypted; as a backend it confirms ECH to the client
        # (whose ECHAccepted is the proof) but keeps its own flag false.
        assert result["answer"] == (
            f"server={name} ech=false listen={servers[name].address}"
        )
        entry = entryFor(gw, count)
        assert entry["ech"] == "decrypted"
        assert entry["sni"] == name
        assert entry["outer_sni"] == "public.example"
        assert entry["upstream"] == servers[name].address
        assert entry["status"] == "ok"
    plain = connect(echtool, gw, ca, "b.example")
    assert plain["ech_accepted"] is False
    assert plain["answer"].startswith("server=b.example ech=false")
    entry = entryFor(gw, 3)
    assert entry["ech"] is None
    assert entry["outer_sni"] is None
    assert entry["sni"] == "b.example"
    hidden = connect(echtool, gw, ca, "c.example", configs)
    assert "unrecognized name" in hidden["error"], hidden
    entry = entryFor(gw, 4)
    assert entry["status"] == "no_route"
    assert entry["sni"] == "c.example"
    assert entry["ech"] == "decrypted"
    assert entry["outer_sni"] == "public.example"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{metricsPort}/metrics", timeout=5
    ) as response:
        metrics = response.read().decode()
    assert 'tlsgateway_ech_total{listener="web",result="decrypted"} 3.0' in metrics
    secret = path.read_text().split("\n")[1]
    assert "PRIVATE" not in gw.output()
    assert secret not in gw.output()
    for page in ("/status", "/status.json"):
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metricsPort}{page}", timeout=5
        ) as response:
            shown = response.read().decode()
        assert "web" in shown
        assert secret not in shown
        assert "PRIVATE" not in shown


def test_helloRetryRequest(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    goServer: Callable[..., GoServer],
    tmp_path: Path,
) -> None:
    """
    A backend that wants P-256 from a client that sent an X25519 key share
    only answers with a HelloRetryRequest; the client's second ClientHello
    is an outer hello sealed with the same HPKE context, which the gateway
    opens and replaces: the handshake ends with ECH accepted.
    """
    servers = {"a.example": goServer("-curves", "p256"), "public.example": goServer()}
    path, configs = keyFile(tmp_path, "ech.pem", 1)
    ini = splitIni(freePort(), servers, str(path))
    gw = gateway(ini.replace("[gateway]\n", "[gateway]\nlog_level = debug\n", 1))
    result = connect(echtool, gw, ca, "a.example", configs, curves="x25519,p256")
    assert result["ech_accepted"] is True, (result, gw.explain())
    assert result["answer"].startswith("server=a.example ")
    entry = entryFor(gw, 1)
    assert entry["ech"] == "decrypted"
    assert entry["sni"] == "a.example"
    gw.waitForOutput("HelloRetryRequest: the second ClientHello was decrypted")


def test_keysTheClientDidNotUse(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    goServer: Callable[..., GoServer],
    tmp_path: Path,
) -> None:
    """
    A client with a stale config: the gateway cannot open its ECH and
    routes it on the public name, to a shared-mode server holding the
    current keys, which sends them as retry configs; with those the client
    gets through on its hidden name.
    """
    current, currentConfigs = keyFile(tmp_path, "current.pem", 2)
    _, staleConfigs = keyFile(tmp_path, "stale.pem", 2)
    servers = {
        "a.example": goServer(),
        "public.example": goServer("-echkey", str(current)),
    }
    metricsPort = freePort()
    gw = gateway(splitIni(freePort(), servers, str(current), metricsPort))
    result = connect(echtool, gw, ca, "a.example", staleConfigs)
    assert "retry_configs" in result, (result, gw.explain())
    assert result["retry_configs"] == currentConfigs
    entry = entryFor(gw, 1)
    assert entry["ech"] == "rejected"
    assert entry["sni"] == "public.example"
    assert entry["outer_sni"] == "public.example"
    again = connect(echtool, gw, ca, "a.example", result["retry_configs"])
    assert again["ech_accepted"] is True
    assert entryFor(gw, 2)["ech"] == "decrypted"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{metricsPort}/metrics", timeout=5
    ) as response:
        metrics = response.read().decode()
    for outcome in ("rejected", "decrypted"):
        assert f'tlsgateway_ech_total{{listener="web",result="{outcome}"}} 1.0' in (
            metrics
        )


def test_noKeysOffered(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    goServer: Callable[..., GoServer],
    tmp_path: Path,
) -> None:
    """
    Without C{ech_keys} the gateway sees ECH (C{offered}), routes on the
    outer name and passes the hello through untouched: a shared-mode
    server behind it accepts ECH itself.
    """
    path, configs = keyFile(tmp_path, "ech.pem", 3)
    servers = {"public.example": goServer("-echkey", str(path))}
    gw = gateway(splitIni(freePort(), servers, None))
    result = connect(echtool, gw, ca, "a.example", configs)
    assert result["ech_accepted"] is True, (result, gw.explain())
    assert result["answer"].startswith("server=a.example ech=true")
    entry = entryFor(gw, 1)
    assert entry["ech"] == "offered"
    assert entry["sni"] == "public.example"
    assert entry["outer_sni"] == "public.example"


def test_workers(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    goServer: Callable[..., GoServer],
    tmp_path: Path,
) -> None:
    """
    With C{workers = 2}, the workers read the keys themselves: connections,
    whichever worker accepts them, are decrypted.
    """
    path, configs = keyFile(tmp_path, "ech.pem", 6)
    servers = {"a.example": goServer(), "public.example": goServer()}
    ini = splitIni(freePort(), servers, str(path))
    gw = gateway(ini.replace("[gateway]\n", "[gateway]\nworkers = 2\n", 1))
    deadline = time.monotonic() + 20
    while gw.output().count("tlsgateway ready") < 3:
        assert time.monotonic() < deadline, gw.explain()
        time.sleep(0.05)
    for _ in range(4):
        result = connect(echtool, gw, ca, "a.example", configs)
        assert result["ech_accepted"] is True, (result, gw.explain())
    entries = gw.waitForEntries(4)
    assert {e["ech"] for e in entries} == {"decrypted"}
    assert {e["sni"] for e in entries} == {"a.example"}


def test_rotationAcrossAReload(
    echtool: Path,  # noqa: F811
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    goServer: Callable[..., GoServer],
    tmp_path: Path,
) -> None:
    """
    SIGHUP re-reads the key files: a new key listed first and the old one
    kept both open; once the old one is dropped, its clients are routed on
    the public name.
    """
    old, oldConfigs = keyFile(tmp_path, "old.pem", 1)
    new, newConfigs = keyFile(tmp_path, "new.pem", 2)
    servers = {"a.example": goServer(), "public.example": goServer()}
    port = freePort()
    gw = gateway(splitIni(port, servers, str(old)))
    assert accepted(connect(echtool, gw, ca, "a.example", newConfigs)) is False
    phases = [(f"{new}, {old}", [True, True]), (str(new), [False, True])]
    count = 1
    for keys, expected in phases:
        before = gw.output().count("#info] reloaded")
        gw.configPath.write_text(splitIni(port, servers, keys))
        gw.sendSignal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while gw.output().count("#info] reloaded") <= before:
            assert time.monotonic() < deadline, gw.explain()
            time.sleep(0.05)
        for configs, expectation in zip(
            (oldConfigs, newConfigs), expected, strict=True
        ):
            result = connect(echtool, gw, ca, "a.example", configs)
            assert accepted(result) is expectation, (keys, result)
        # A rejected client resets its connection, which may be logged
        # after the next one's: compare the phase's entries as a set.
        count += len(expected)
        phase = gw.waitForEntries(count)[count - len(expected) : count]
        assert sorted(e["ech"] for e in phase) == sorted(
            "decrypted" if x else "rejected" for x in expected
        )


def accepted(result: dict[str, Any]) -> bool:
    """
    Whether the client's ECH was accepted; a rejection without retry
    configs (a public-name server without keys) is Go's ECHRejectionError.
    """
    if "ech_accepted" in result:
        return bool(result["ech_accepted"])
    assert "rejected ECH" in result["error"], result
    return False


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _helloRecord(ech: bytes) -> bytes:
    name = b"public.example"
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    extensions = _extension(0, len(entry).to_bytes(2, "big") + entry)
    extensions += _extension(43, b"\x02\x03\x04") + _extension(0xFE0D, ech)
    body = b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


@pytest.mark.parametrize(
    ("ech", "alert"),
    [
        (b"\x00\x00\x01", 50),  # cut short: decode_error
        (b"\x07", 47),  # unknown ECHClientHelloType: illegal_parameter
        (b"\x00\x00\x01\x00\x01\x05\x00\x00\x00\x00", 50),  # empty payload
    ],
)
def test_malformedECHIsRefused(
    ca: CertificateAuthority,
    gateway: GatewayStarter,
    tmp_path: Path,
    ech: bytes,
    alert: int,
) -> None:
    """
    A hand-made ClientHello with a broken ECH extension gets the fatal
    alert RFC 9849 gives, and the gateway carries on.
    """
    path, _ = keyFile(tmp_path, "ech.pem", 1)
    port = freePort()
    ini = gatewayIni(
        port,
        upstream="web",
        upstreams={"web": f"127.0.0.1:{freePort()}"},
        listenerKeys={"ech_keys": str(path)},
    )
    gw = gateway(ini)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_helloRecord(ech))
        answer = b""
        while len(answer) < 7:
            data = sock.recv(100)
            if not data:
                break
            answer += data
    assert answer[:1] == b"\x15"
    assert answer[5:7] == bytes([2, alert])
    entry = entryFor(gw, 1)
    assert entry["status"] == "bad_client_hello"
    assert entry["ech"] == "rejected"
    assert gw.running()


def test_checkReportsKeyFileProblems(tmp_path: Path) -> None:
    """
    C{tlsgateway check} names file, line, section and key for an
    unreadable file, a file that is not a key file, and a config id in
    two files; all at once, exit 1.
    """
    first, _ = keyFile(tmp_path, "first.pem", 4)
    second, _ = keyFile(tmp_path, "second.pem", 4)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    missing = tmp_path / "missing.pem"
    ini = tmp_path / "gw.ini"
    ini.write_text(
        "[listener:web]\nlisten = tcp:8443\nupstream = u\n"
        f"ech_keys = {first}, {second}\n\n"
        "[listener:other]\nlisten = tcp:8444\nupstream = u\n"
        f"ech_keys = {garbage}, {missing}\n\n"
        "[upstream:u]\nservers = 127.0.0.1:1\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(ini)],
        capture_output=True,
        text=True,
        env=gatewayEnvironment(),
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert any(
        f"gw.ini:4: [listener:web] ech_keys: {second}: config id 4 is also in {first}"
        in line
        for line in lines
    ), done.stderr
    assert any(
        f"gw.ini:9: [listener:other] ech_keys: {garbage}: not an ECH key file" in line
        for line in lines
    ), done.stderr
    assert any(
        f"gw.ini:9: [listener:other] ech_keys: cannot read {missing}" in line
        for line in lines
    ), done.stderr
    assert first.read_text().split("\n")[1] not in done.stderr
