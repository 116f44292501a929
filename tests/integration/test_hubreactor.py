"""
The reactor a gateway process runs on (issue 27): the gateway's own
(L{gateway.fast.hubreactor}, the hub's events handed to it directly)
under C{tlsgateway run} and a plain C{twistd tlsgateway}; Twisted's when
twistd is told C{--reactor}, or when the fast paths are off.  Either way
a passthrough and a terminated route echo a series of messages
exactly and log one line per connection with the bytes that crossed the
client's socket.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.fast.portable import PORTABLE

from .backends import Backend, closeCleanly, echoRounds, tlsConnect
from .harness import CertificateAuthority, Gateway, bySni, freePort
from .test_operations import iniText, listen

pytestmark = pytest.mark.timeout(120)

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]

GATEWAYS = "reactor: gateway.fast.hubreactor.HubReactor"
TWISTEDS = "reactor: twisted.internet.epollreactor.EPollReactor"


@pytest.mark.parametrize("command", ["module", "twistd", "twistd-epoll"])
def test_theReactorIsTheGatewaysUnlessAnotherIsAskedFor(
    gateway: StartGateway,
    backend: StartBackend,
    ca: CertificateAuthority,
    command: str,
) -> None:
    """
    Ten messages of many sizes through a passthrough route and ten through
    a terminated one, on one connection each, are echoed back whole, each connection logged once with the
    bytes its client's socket carried; the debug log names the reactor:
    the gateway's, but with C{--reactor=epoll} or C{TLSGATEWAY_PORTABLE=1}.
    """
    own = ca.issue("t.example.test")
    passed = backend("p", "echo", names=["p.example.test"])
    plain = backend("t", "echo", tls=False)
    gw = gateway(
        iniText(
            gateway={"log_level": "debug"},
            listeners={
                "web": {
                    "listen": listen(freePort()),
                    "routes": ["p.example.test p", "t.example.test t terminate"],
                    "certificate": str(own.certificatePath),
                    "private_key": str(own.privateKeyPath),
                }
            },
            upstreams={
                "p": {"servers": passed.address},
                "t": {"servers": plain.address},
            },
        ),
        command=command,
    )
    expected = TWISTEDS if PORTABLE or command == "twistd-epoll" else GATEWAYS
    output = gw.output()
    assert expected in output, gw.explain()
    assert (TWISTEDS if expected == GATEWAYS else GATEWAYS) not in output
    for name in ("p.example.test", "t.example.test"):
        stream = tlsConnect(gw.port, ca.clientContext(), name)
        sent, received = echoRounds(stream, 10)
        assert sent == received, gw.explain()
        assert closeCleanly(stream) == b""
        entry = gw.waitForLog(bySni(name))
        assert entry["status"] == "ok", entry
        assert (entry["bytes_in"], entry["bytes_out"]) == (
            stream.rawSent,
            stream.rawReceived,
        ), entry
    assert "Unhandled" not in gw.output(), gw.explain()
