"""
Where a connection the hub accepted goes at its verdict (issue 27), end to
end: a passthrough to TCP servers stays in the hub and is spliced (a server
given by name too); a passthrough to a C{unix:} server and a terminated
connection are handed to the reactor, which relays them as it relays a
connection its port accepted; a hand-off the reactor cannot take (no
descriptor left) is refused and logged as a port-accepted connection is.
The terminated and refused cases of a listener behind a balancer are in
L{tests.integration.test_hubaccept}.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.fast.portable import PORTABLE
from gateway.testing import makeClientHello
from gateway.wire.alerts import AlertDescription, alertRecord

from .backends import Backend, TLSStream, readUntilTcpEof
from .harness import CertificateAuthority, Gateway, bySni, freePort, httpRequest
from .test_hubaccept import HUB, acceptor, assertAcceptedBy, holdUntil, httpsGet
from .test_operations import iniText, listen
from .test_reliability import (
    echoOnce,
    limited,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.timeout(120)

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]


@pytest.fixture
def unixEcho(tmp_path: Path) -> Iterator[str]:
    """
    An echo server on a UNIX socket, one connection at a time: its path.
    """
    path = str(tmp_path / "echo.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed at teardown
            with client, contextlib.suppress(OSError):
                client.settimeout(10)
                while data := client.recv(65536):
                    client.sendall(data)

    thread = threading.Thread(target=serve, name="unix-echo", daemon=True)
    thread.start()
    yield path
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)


def test_passthroughToAUnixServerIsHandedToTheReactor(
    gateway: StartGateway, backend: StartBackend, unixEcho: str
) -> None:
    """
    One listener accepted by the hub, two passthrough routes: to a server
    given by name (TCP, spliced from the hub) and to a C{unix:} server
    (which splice cannot reach: the reactor adopts the client and the
    portable relay carries it).  Both echo the whole hello back and log
    one C{ok} line with exact byte counts.
    """
    echo = backend("echo", "echo", tls=False)
    gw = gateway(
        iniText(
            gateway={"log_level": "debug"},
            listeners={
                "web": {
                    "listen": listen(freePort()),
                    "routes": ["u.example.test local", "n.example.test named"],
                }
            },
            upstreams={
                "local": {"servers": f"unix:{unixEcho}"},
                "named": {"servers": f"localhost:{echo.port}"},
            },
        )
    )
    assertAcceptedBy(gw, acceptor())
    for name in ("u.example.test", "n.example.test"):
        hello = makeClientHello(name)
        assert echoOnce(gw.port, hello) == hello, gw.explain()
        entry = gw.waitForLog(bySni(name))
        assert (entry["status"], entry["action"]) == ("ok", "passthrough"), entry
        assert (entry["bytes_in"], entry["bytes_out"]) == (len(hello), len(hello))
    assert gw.waitForLog(bySni("u.example.test"))["upstream"] == f"unix:{unixEcho}"
    if not PORTABLE:
        output = gw.output()
        assert ": splice (relay = auto)" in output, gw.explain()
        assert "portable (relay = auto, but the upstream side is not an IP socket)" in (
            output
        ), gw.explain()
    assert "Unhandled" not in gw.output(), gw.explain()


@pytest.mark.parametrize("relay", ["auto", "portable"])
def test_aTerminatedConnectionAtTheLastDescriptorIsRefusedAndLogged(
    limited: Callable[[str, int], Gateway],  # noqa: F811 - the fixture imported above
    backend: StartBackend,
    ca: CertificateAuthority,
    relay: str,
) -> None:
    """
    The last descriptor goes to a client whose route terminates: the hub
    cannot hand it to the reactor (which needs a descriptor of its own)
    and refuses it with an C{internal_error} alert, as the port-accepted
    path refuses it when it cannot connect the upstream; either way one
    C{upstream_unavailable} line for a local resource error, and a
    terminated connection works again once descriptors are free.
    """
    own = ca.issue("t.example.test")
    plain = backend("plain", tls=False)
    limit = 48
    gw = limited(
        iniText(
            gateway={"log_level": "debug"},
            listeners={
                "web": {
                    "listen": listen(freePort()),
                    "routes": [
                        "t.example.test plain terminate",
                        "p.example.test plain",
                    ],
                    "certificate": str(own.certificatePath),
                    "private_key": str(own.privateKeyPath),
                    "preread_timeout": "60s",
                    "relay": relay,
                }
            },
            upstreams={"plain": {"servers": plain.address}},
        ),
        limit,
    )
    assertAcceptedBy(gw, acceptor(relay))
    held = holdUntil(gw, limit - 1)
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            stream = TLSStream(
                sock, ca.clientContext(), serverHostname="t.example.test"
            )
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                stream.handshake()
                stream.send(httpRequest("t.example.test"))
                readUntilTcpEof(stream)
        refused = gw.waitForLog(bySni("t.example.test"))
    finally:
        for sock in held:
            sock.close()
    assert (refused["status"], refused["action"]) == (
        "upstream_unavailable",
        "terminate",
    ), refused
    # The words every local resource error has, for an operator's grep.
    assert (
        "local resource error: EMFILE (Too many open files)" in (refused["reason"])
    ), refused
    if acceptor(relay) == HUB:
        assert refused["reason"].endswith(
            ": cannot hand the connection to the reactor"
        ), refused
        assert refused["bytes_out"] == len(
            alertRecord(AlertDescription.INTERNAL_ERROR)
        ), refused
    assert plain.accepted == 0
    gw.waitForEntries(len(held) + 1)
    assert httpsGet(gw.port, ca.clientContext(), "t.example.test") == "plain"
    assert gw.waitForEntries(len(held) + 2)[-1]["status"] == "ok"
    assert "Unhandled" not in gw.output(), gw.explain()
