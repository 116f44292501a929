"""
What one C{protocol = mysql} connection needs from its listener, as plain
values and callables, so that the connection knows nothing of the
listener factory (and is tested without one).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTCP, IReactorTime

from gateway.connection.session import Timeouts, UpstreamRuntime
from gateway.rules.accesslog import ExtraFields
from gateway.rules.decision import Reject
from gateway.wire.clienthello import ClientHello

__all__ = [
    "ER_SECURE_TRANSPORT_REQUIRED",
    "ER_UNKNOWN_ERROR",
    "Wiring",
]

ER_UNKNOWN_ERROR = 1105
"""The server's generic error code: for the gateway's own refusals."""

ER_SECURE_TRANSPORT_REQUIRED = 3159
"""MySQL's code for a plaintext login where TLS is required."""


@attrs.frozen
class Wiring:
    """
    What one C{protocol = mysql} connection needs from its listener.

    @ivar greetings: the upstreams whose servers may greet the client, in
        the order they are tried: the default route's (or C{upstream}, or
        the first route's) first, then the listener's other upstreams, so
        that one dead server never takes a whole listener down.
    @ivar choose: the listener's verdict (L{gateway.rules.decision.decide},
        as for every protocol) on a ClientHello, or on a plaintext login
        for L{None}: the upstream, or the L{Reject} (C{no_route},
        C{denied}, C{plaintext_refused}) that the connection tells the
        client in an C{ERR} packet where it can read one.
    @ivar contextFor: the termination context for a server name.
    @ivar describe: the handshake facts for the access log.
    @ivar proxyHeader: the PROXY header builder of an upstream connection
        (for a server name and client TLS connection known so far), or
        L{None} without C{proxy_protocol}.
    """

    reactor: IReactorTCP
    clock: IReactorTime
    timeouts: Timeouts
    prereadTimeout: float
    maxHello: int
    clientKey: str
    greetings: tuple[UpstreamRuntime, ...]
    choose: Callable[[ClientHello | None], UpstreamRuntime | Reject]
    contextFor: Callable[[str | None], SSL.Context]
    describe: Callable[[SSL.Connection], ExtraFields]
    handshakeTimed: Callable[[float], None]
    proxyHeader: Callable[
        [str | None, SSL.Connection | None], Callable[[], bytes] | None
    ]
