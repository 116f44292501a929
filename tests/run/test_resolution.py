"""
C{check}'s look-up of upstream host names (L{gateway.run.resolution}),
with a resolver passed in: no DNS.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from gateway.config import parseConfig
from gateway.run.resolution import unresolvedServers

INI = """\
[listener:web]
listen = tcp:8443
routes =
    a.example  app
    default    app

[upstream:app]
balance = round_robin
servers =
    192.0.2.10:443
    backend.invalid:443   # a typo
    good.example:443
    unix:/run/app.sock
next_upstream_tries = 2
"""


def resolver(known: set[str]) -> Any:
    looked: list[str] = []

    def resolve(host: str, port: int) -> Any:
        looked.append(host)
        if host not in known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]

    resolve.looked = looked  # type: ignore[attr-defined]
    return resolve


def load(tmp_path: Path, text: str = INI) -> Any:
    path = tmp_path / "gateway.ini"
    path.write_text(text)
    return parseConfig(path)


def test_aNameThatDoesNotResolveIsAWarningAtItsLine(tmp_path: Path) -> None:
    resolve = resolver({"good.example"})
    [warning] = unresolvedServers(load(tmp_path), resolve)
    assert str(warning) == (
        f"{tmp_path / 'gateway.ini'}:11: [upstream:app] servers: warning:"
        " backend.invalid does not resolve now (Name or service not known); the"
        " gateway resolves it again at each connection"
    )
    # Addresses and UNIX sockets are not looked up.
    assert sorted(resolve.looked) == ["backend.invalid", "good.example"]


def test_everythingResolvesNoWarning(tmp_path: Path) -> None:
    resolve = resolver({"good.example", "backend.invalid"})
    assert unresolvedServers(load(tmp_path), resolve) == []


def test_aHangingResolverIsBounded(tmp_path: Path) -> None:
    release = threading.Event()

    def hang(host: str, port: int) -> Any:
        if host == "backend.invalid":
            release.wait(10)
        return []

    try:
        [warning] = unresolvedServers(load(tmp_path), hang, timeout=0.2)
    finally:
        release.set()
    assert "no answer from the resolver within 0.2s" in warning.message
    assert warning.line == 11
