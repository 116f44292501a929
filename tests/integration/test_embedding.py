"""
Embedding, end to end: the examples of docs/embedding.rst run as real
processes, with a real TLS client going through them to a trustme backend.

  - C{docs/examples/embed.py} builds its configuration in code and runs the
    gateway under a L{MultiService} next to a health page; C{SIGTERM}
    drains it and the process exits 0.
  - C{docs/examples/gateway.tac} is the contract's embedding snippet,
    C{GatewayService(load_config("gateway.ini"))}, run by C{twistd -n -y}.
"""

from __future__ import annotations

import signal
import socket
import ssl
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .conftest import BackendStarter
from .harness import (
    BIN,
    REPO_ROOT,
    CertificateAuthority,
    Gateway,
    GatewayFailed,
    freePort,
    gatewayIni,
    httpsFetch,
    okBody,
)

pytestmark = pytest.mark.timeout(90)

EXAMPLES = REPO_ROOT / "docs" / "examples"
NAME = "app.example.test"


class Embedded(Gateway):
    """
    A process that embeds the gateway, started from an argv of its own in
    a directory that holds C{gateway.ini} (for the examples that read one).
    """

    def __init__(self, argv: Sequence[str], directory: Path, iniText: str = "") -> None:
        super().__init__(iniText, directory)
        self.command = list(argv)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[list[Embedded]]:
    """The processes a test started, each stopped (by PID) at teardown."""
    started: list[Embedded] = []
    yield started
    for process in started:
        process.stop()


def start(
    started: list[Embedded], argv: Sequence[str], directory: Path, iniText: str = ""
) -> Embedded:
    process = Embedded(argv, directory, iniText)
    started.append(process)
    process.start()
    return process


def httpsGet(port: int, context: ssl.SSLContext, serverName: str) -> str:
    """
    The body of C{GET /} over TLS through the gateway, the backend's
    certificate verified against C{serverName}.
    """
    response, _, _ = httpsFetch(port, context, serverName, serverName)
    return okBody(response)


def processesRunning(*needles: str) -> list[int]:
    """PIDs of processes whose command line contains every one of C{needles}."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if all(n in words for n in needles):
            found.append(int(entry.name))
    return found


def test_embedScriptRelaysTlsNextToItsOwnServiceAndExitsZeroOnSigterm(
    embedded: list[Embedded],
    backend: BackendStarter,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    app = backend("app", names=[NAME])
    port, healthPort = freePort(), freePort()
    script = str(EXAMPLES / "embed.py")
    argv = [
        sys.executable,
        script,
        "--port",
        str(port),
        "--upstream",
        app.address,
        "--health-port",
        str(healthPort),
    ]
    process = start(embedded, argv, tmp_path / "embed")
    process.waitForOutput("health page on")

    assert httpsGet(port, ca.clientContext(), NAME) == "app", process.explain()
    [record] = app.waitForRecords(1)
    assert record.sni == NAME
    # The access log goes to standard output in the example's settings.
    process.waitForOutput(f"sni={NAME}")
    assert "status=ok" in process.output(), process.explain()
    with urllib.request.urlopen(
        f"http://127.0.0.1:{healthPort}/healthz", timeout=10
    ) as response:
        assert response.read() == b"ok\n"

    process.sendSignal(signal.SIGTERM)
    assert process.waitForExit(20) == 0, process.explain()
    assert processesRunning(script, str(port)) == [], process.explain()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_embedScriptExitsOneWhenItsPortIsTaken(
    embedded: list[Embedded], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [
            sys.executable,
            str(EXAMPLES / "embed.py"),
            "--port",
            str(port),
            "--upstream",
            "127.0.0.1:9",
            "--health-port",
            str(freePort()),
        ]
        process = Embedded(argv, tmp_path / "taken")
        embedded.append(process)
        with pytest.raises(GatewayFailed, match="exited with 1"):
            process.start()
    assert "cannot start" in process.output(), process.explain()


def test_contractTacFileRunsUnderTwistd(
    embedded: list[Embedded],
    backend: BackendStarter,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    """
    C{GatewayService(load_config("gateway.ini"))} attached to a twistd
    C{application}: the global reactor is used, and the file is read from
    the working directory.
    """
    app = backend("app", names=[NAME])
    ini = gatewayIni(freePort(), upstream="app", upstreams={"app": app.address})
    argv = [str(BIN / "twistd"), "-n", "-y", str(EXAMPLES / "gateway.tac")]
    process = start(embedded, argv, tmp_path / "tac", ini)

    assert httpsGet(process.port, ca.clientContext(), NAME) == "app"
    entry = process.waitForLog(lambda e: e["sni"] == NAME)
    assert entry["status"] == "ok", entry

    process.sendSignal(signal.SIGTERM)
    code = process.waitForExit(20)
    # twistd ends an application by the signal that stopped it (exit status
    # 143 in a shell); `twistd tlsgateway` exits 0 because its plugin
    # installs the gateway's own SignalHandling.
    assert code in (0, -signal.SIGTERM), process.explain()
    assert not process.running()
