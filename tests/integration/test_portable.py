"""
The public-API fallbacks, end to end: a gateway process on a Python with
no epoll and no C{os.splice} (removed from C{select} and C{os} before
anything is imported), and one with C{TLSGATEWAY_PORTABLE=1}, relay
passthrough and terminated connections byte for byte, and say in their
debug log that the portable relay carried them.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Any

import pytest

from .backends import downloadAll, tlsConnect, uploadPattern
from .harness import (
    CertificateAuthority,
    Gateway,
    bySni,
    freePort,
    gatewayIni,
    httpsFetch,
    okBody,
)

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
NAME = "portable.example.test"

#: Runs the gateway's command line after taking epoll and splice away, as
#: on a platform that never had them (BSD, macOS, an old kernel).
WITHOUT_EPOLL_OR_SPLICE = """
import os, select, sys
for name in [n for n in dir(select) if n.lower().startswith("epoll")]:
    delattr(select, name)
if hasattr(os, "splice"):
    del os.splice
from gateway.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _start(
    tmp_path: Path, iniText: str, *, bare: bool, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    gw = Gateway(iniText, tmp_path / "gateway")
    if bare:
        # The missing platform alone must turn the fast paths off, also
        # when the whole suite runs with TLSGATEWAY_PORTABLE=1.
        monkeypatch.delenv("TLSGATEWAY_PORTABLE", raising=False)
        gw.command = [
            sys.executable,
            "-c",
            WITHOUT_EPOLL_OR_SPLICE,
            "run",
            "--config",
            str(gw.configPath),
            "--log-level",
            "debug",
        ]
    else:
        monkeypatch.setenv("TLSGATEWAY_PORTABLE", "1")
    return gw.start()


MODES = pytest.mark.parametrize("bare", [True, False], ids=["no-epoll", "env"])


@MODES
def test_passthroughBothWaysByteExact(
    tmp_path: Path,
    backend: Any,
    client: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    bare: bool,
) -> None:
    sink = backend("sink", "sink-hash", names=[NAME])
    source = backend("source", "source", names=[NAME], sourceBytes=8 * MiB)
    gw = _start(
        tmp_path,
        gatewayIni(
            freePort(),
            routes=[(NAME, "sink"), ("default", "source")],
            upstreams={"sink": sink.address, "source": source.address},
            # splice is asked for: without epoll and splice, or with the
            # fast paths off, the portable relay must be what runs.
            listenerKeys={"relay": "splice"},
            # The relay each connection got is a debug line.
            gatewayKeys={"log_level": "debug"},
        ),
        bare=bare,
        monkeypatch=monkeypatch,
    )
    try:
        stream = tlsConnect(gw.port, client, NAME)
        answer, digest = uploadPattern(stream, 8 * MiB, seed=5)
        assert answer == f"{digest} {8 * MiB}\n", gw.explain()
        why = "this platform has no splice" if bare else "TLSGATEWAY_PORTABLE is set"
        gw.waitForOutput(f"portable (relay = splice, but {why})")
        entry = gw.waitForLog(bySni(NAME))
        assert entry["status"] == "ok", entry
    finally:
        assert gw.stop() == 0, gw.explain()


@MODES
def test_downloadAndTermination(
    tmp_path: Path,
    backend: Any,
    ca: CertificateAuthority,
    client: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    bare: bool,
) -> None:
    source = backend("source", "source", names=[NAME], sourceBytes=8 * MiB)
    plain = backend("plain", tls=False)
    served = ca.issue("term.example.test")
    port, termPort = freePort(), freePort()
    iniText = gatewayIni(
        port,
        upstream="source",
        upstreams={"source": source.address, "plain": plain.address},
    ) + (
        f"\n[listener:term]\nlisten = tcp:{termPort}:interface=127.0.0.1\n"
        "mode = terminate\nupstream = plain\n"
        f"certificate = {served.certificatePath}\n"
        f"private_key = {served.privateKeyPath}\n"
    )
    gw = _start(tmp_path, iniText, bare=bare, monkeypatch=monkeypatch)
    try:
        stream = tlsConnect(port, client, NAME)
        received, digest = downloadAll(stream)
        (record,) = source.waitForRecords(1)
        assert received == record.sent == 8 * MiB, gw.explain()
        assert digest == record.sentDigest
        response, _, _ = httpsFetch(
            termPort, client, "term.example.test", "term.example.test"
        )
        assert okBody(response) == "plain", gw.explain()
        entry = gw.waitForLog(lambda e: e["listener"] == "term")
        assert entry["status"] == "ok", entry
        assert entry["action"] == "terminate", entry
    finally:
        assert gw.stop() == 0, gw.explain()
