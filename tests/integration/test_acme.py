"""
ACME end to end: a real gateway process gets its certificates from a real
ACME server (pebble, started here), answering the C{tls-alpn-01}
validations itself.

Issuance through a passthrough listener, clients verifying against
pebble's root, a restart that orders nothing, renewal under a live
connection, two workers sharing one order, the pending state and a
challenge that fails.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import stat
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import BackendStarter, GatewayStarter
from .harness import CertificateAuthority, Gateway, freePort, httpsFetch, okBody
from .pebble import ChallengeDNS, Pebble

PebbleStarter = Callable[..., Pebble]

NAME = "site.example.test"
ALIAS = "www.site.example.test"

ISSUED = "acme: issued certificate site"
RENEWED = "acme: renewed certificate site"


@pytest.fixture(scope="module")
def challengeDNS(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallengeDNS]:
    dns = ChallengeDNS(tmp_path_factory.mktemp("dns"))
    yield dns
    dns.stop()


@pytest.fixture
def pebble(tmp_path: Path, challengeDNS: ChallengeDNS) -> Iterator[PebbleStarter]:
    """
    A starter: C{pebble(tlsPort, validity=None)} runs a pebble whose
    C{tls-alpn-01} validations go to 127.0.0.1:C{tlsPort}.
    """
    started: list[Pebble] = []

    def start(tlsPort: int, **options: Any) -> Pebble:
        server = Pebble(
            tmp_path / f"pebble{len(started) + 1}", challengeDNS, tlsPort, **options
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def acmeSections(
    server: Pebble,
    stateDir: Path,
    renewBefore: str = "30d",
    names: tuple[str, ...] = (NAME, ALIAS),
) -> str:
    return (
        "[acme]\n"
        f"directory = {server.directory}\n"
        "email = ops@example.test\n"
        f"state_dir = {stateDir}\n"
        f"ca_bundle = {server.caBundle}\n"
        f"renew_before = {renewBefore}\n\n"
        "[certificate:site]\n"
        "acme = on\n"
        f"names = {', '.join(names)}\n\n"
    )


def gatewaySection(**keys: str) -> str:
    settings = {"access_log": "access.log", "access_log_format": "json", **keys}
    return "[gateway]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()) + "\n"


def fetchName(
    port: int, context: ssl.SSLContext, name: str = NAME
) -> tuple[str, bytes]:
    """
    @return: the body of an HTTP request for C{name} through the gateway,
        and the DER of the certificate the gateway served.
    """
    response, _, der = httpsFetch(port, context, name, name)
    return okBody(response), der


def metricsText(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def expiry(text: str, certificate: str) -> float:
    match = re.search(
        rf'^tlsgateway_certificate_expiry_seconds\{{certificate="{re.escape(certificate)}"\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert match, text
    return float(match.group(1))


def waitFor(gateway: Gateway, text: str, timeout: float = 60.0) -> None:
    gateway.waitForOutput(text, timeout=timeout)


def test_issuedThroughAPassthroughListenerVerifiedAndKeptAcrossARestart(
    gateway: GatewayStarter,
    backend: BackendStarter,
    pebble: PebbleStarter,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    """
    pebble validates on a passthrough listener that routes the name to a
    backend: the gateway answers the validations itself (the backend never
    sees one).  The certificate is then served by the terminating
    listener, verifies against pebble's root, is stored 0600, and a
    restart serves it again without a new order.
    """
    passthroughBackend = backend(NAME)
    plain = backend("plain", tls=False)
    files = ca.issue("files.example.test")
    front, secure, metrics = freePort(), freePort(), freePort()
    server = pebble(front)
    state = tmp_path / "state"
    rest = (
        "[certificate:files]\n"
        f"certificate = {files.certificatePath}\n"
        f"private_key = {files.privateKeyPath}\n\n"
        "[listener:front]\n"
        f"listen = tcp:{front}:interface=127.0.0.1\n"
        "routes =\n"
        f"    {NAME} tlsbackend\n"
        "    default tlsbackend\n\n"
        "[listener:secure]\n"
        f"listen = tcp:{secure}:interface=127.0.0.1\n"
        "mode = terminate\n"
        "upstream = plain\n"
        "certificates = site, files\n\n"
        f"[upstream:tlsbackend]\nservers = {passthroughBackend.address}\n\n"
        f"[upstream:plain]\nservers = {plain.address}\n"
    )
    head = gatewaySection(metrics=f"tcp:{metrics}:interface=127.0.0.1")
    ini = head + acmeSections(server, state) + rest
    first = gateway(ini)
    waitFor(first, ISSUED)
    assert re.search(
        rf"{ISSUED} for {NAME}, {ALIAS} \(serial [0-9a-f]+, valid until ",
        first.output(),
    ), first.output()
    assert first.output().count("acme: issued certificate") == 1

    roots = server.rootContext()
    body, der = fetchName(secure, roots)
    assert body == "plain"
    assert fetchName(secure, roots, ALIAS)[0] == "plain"
    # Both names were validated on the passthrough listener, by the gateway.
    challenges = [e for e in first.accessLog() if e["alpn"] == ["acme-tls/1"]]
    assert {e["sni"] for e in challenges} == {NAME, ALIAS}, first.explain()
    for entry in challenges:
        assert entry["listener"] == "front"
        assert entry["action"] == "terminate"
        assert entry["upstream"] is None
        assert entry["status"] == "ok", entry
    assert passthroughBackend.accepted == 0

    for path in (state / "account.key", state / "certs" / "site.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(state.stat().st_mode) == 0o700

    text = metricsText(metrics)
    assert 0 < expiry(text, "site") <= 5 * 366 * 86400
    assert expiry(text, "files") > 0

    first.stop()
    issued = server.issued()
    assert issued == 1, server.output()
    second = gateway(ini)
    # Served at once, from the state directory: no pending window.
    body, again = fetchName(secure, roots)
    assert (body, again) == ("plain", der)
    # A reload keeps serving it, and orders nothing either.
    second.sendSignal(signal.SIGHUP)
    second.waitForOutput("reloaded")
    assert fetchName(secure, roots) == ("plain", der)
    time.sleep(2)  # give a wrong implementation the time to order
    assert server.issued() == issued
    assert "acme: issued" not in second.output()
    second.stop()

    # Other names: a new order, by the account registered the first time.
    third = gateway(
        head + acmeSections(server, state, names=(NAME, "api.example.test")) + rest
    )
    waitFor(third, ISSUED)
    assert fetchName(secure, roots, "api.example.test")[0] == "plain"
    assert server.issued() == issued + 1
    assert server.output().count("POST /sign-me-up") == 1, server.output()


def test_renewedUnderALiveConnection(
    gateway: GatewayStarter,
    backend: BackendStarter,
    pebble: PebbleStarter,
    tmp_path: Path,
) -> None:
    """
    pebble issues 20-second certificates and the gateway renews with 15
    seconds left: the renewal swaps the certificate in while a connection
    made with the old one keeps relaying, and new handshakes get the new
    one.
    """
    echo = backend("echo", mode="echo", tls=False)
    port = freePort()
    server = pebble(port, validity=20)
    ini = (
        gatewaySection()
        + acmeSections(server, tmp_path / "state", renewBefore="15s")
        + "[listener:secure]\n"
        f"listen = tcp:{port}:interface=127.0.0.1\n"
        "mode = terminate\n"
        "upstream = echo\n"
        "certificates = site\n\n"
        f"[upstream:echo]\nservers = {echo.address}\n"
    )
    process = gateway(ini)
    waitFor(process, ISSUED)
    roots = server.rootContext()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        roots.wrap_socket(raw, server_hostname=NAME) as live,
    ):
        old = live.getpeercert(binary_form=True)
        live.sendall(b"before")
        assert live.recv(100) == b"before"
        waitFor(process, RENEWED, timeout=40)
        live.sendall(b"after the renewal")
        assert live.recv(100) == b"after the renewal"
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw2,
            roots.wrap_socket(raw2, server_hostname=NAME) as fresh,
        ):
            assert fresh.getpeercert(binary_form=True) != old
            fresh.sendall(b"new")
            assert fresh.recv(100) == b"new"
    del live
    entries = process.waitForEntries(2, predicate=lambda e: e["alpn"] == [])
    assert all(e["status"] == "ok" for e in entries), entries
    assert server.issued() >= 2


def test_workersShareOneOrderPerCertificate(
    gateway: GatewayStarter,
    backend: BackendStarter,
    pebble: PebbleStarter,
    tmp_path: Path,
) -> None:
    """
    Two workers, one state directory, two ACME certificates ordered at the
    same time: one worker orders each, the other picks it up; both serve
    both.
    """
    plain = backend("plain", tls=False)
    port = freePort()
    server = pebble(port)
    ini = (
        gatewaySection(workers="2")
        + acmeSections(server, tmp_path / "state")
        + "[certificate:api]\nacme = on\nnames = api.example.test\n\n"
        + "[listener:secure]\n"
        f"listen = tcp:{port}:interface=127.0.0.1\n"
        "mode = terminate\n"
        "upstream = plain\n"
        "certificates = site, api\n\n"
        f"[upstream:plain]\nservers = {plain.address}\n"
    )
    process = gateway(ini)
    waitFor(process, ISSUED)
    waitFor(process, "acme: issued certificate api")
    time.sleep(3)  # longer than a waiting worker's poll interval
    roots = server.rootContext()
    for name in (NAME, "api.example.test"):
        served = {fetchName(port, roots, name)[1] for _ in range(8)}
        assert len(served) == 1, name
    assert server.issued() == 2, server.output()
    assert process.output().count("acme: issued certificate") == 2
    assert server.output().count("POST /sign-me-up") == 1, server.output()
    failed = [e for e in process.accessLog() if e["status"] != "ok"]
    assert failed == [], failed


def test_pendingUntilIssuedAndAFailedChallengeIsRetried(
    gateway: GatewayStarter,
    backend: BackendStarter,
    pebble: PebbleStarter,
    tmp_path: Path,
) -> None:
    """
    pebble validates on a port where nothing listens: the challenge fails,
    the failure is logged with pebble's problem document and retried, and
    meanwhile handshakes for the name fail as pending.
    """
    plain = backend("plain", tls=False)
    port = freePort()
    server = pebble(freePort())
    ini = (
        gatewaySection()
        + acmeSections(server, tmp_path / "state")
        + "[listener:secure]\n"
        f"listen = tcp:{port}:interface=127.0.0.1\n"
        "mode = terminate\n"
        "upstream = plain\n"
        "certificates = site\n\n"
        f"[upstream:plain]\nservers = {plain.address}\n"
    )
    process = gateway(ini)
    waitFor(process, "a challenge failed; problem document:")
    line = next(
        line for line in process.output().splitlines() if "a challenge failed" in line
    )
    assert "acme: certificate site for site.example.test" in line
    assert "urn:ietf:params:acme:error:" in line, line
    assert "retrying in 10s" in line, line

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=NAME),
    ):
        pass
    entry = process.waitForLog(lambda e: e["sni"] == NAME and e["alpn"] == [])
    assert entry["status"] == "handshake_failed"
    assert "pending" in entry["reason"], entry
    assert plain.accepted == 0

    # A validation-style hello with no validation in progress is refused too.
    context.set_alpn_protocols(["acme-tls/1"])
    with (
        pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=ALIAS),
    ):
        pass
    entry = process.waitForLog(lambda e: e["sni"] == ALIAS)
    assert entry["status"] == "handshake_failed"
    assert "no validation in progress" in entry["reason"], entry
