"""
With C{workers > 1}, who serves what: the workers serve the stream
endpoints (C{tcp:}, C{tcp6:}, C{unix:}) on the sockets the supervisor
hands them; the supervisor serves the UDP endpoints (QUIC) itself.

QUIC flows cannot be spread over processes the way TCP connections are:
a TCP connection is one socket, whichever worker accepted it, but every
datagram of every flow arrives on the one UDP socket of its endpoint.  If
each worker read that socket (shared, or with C{SO_REUSEPORT}), a flow's
datagrams would land in whichever worker read first, or where the
kernel's hash of the client address points, which changes when the
client migrates; the worker holding the flow's state and upstream socket
would miss them.  And a reload replaces the workers, which would end
every established flow.  One process that outlives reloads owns them
instead: the supervisor.  The cost is one core for all QUIC relaying (see
C{docs/quic.rst}).
"""

from __future__ import annotations

import attrs

from gateway.config import GatewayConfig


def streamPart(config: GatewayConfig) -> GatewayConfig:
    """
    What a worker serves: every listener with its stream endpoints only
    (a listener with UDP endpoints only is left out).  The same object
    when nothing is to be removed.
    """
    if not any(listener.udpListen for listener in config.listeners):
        return config
    return attrs.evolve(
        config,
        listeners=tuple(
            attrs.evolve(listener, listen=listener.streamListen)
            for listener in config.listeners
            if listener.streamListen
        ),
    )


def quicPart(config: GatewayConfig) -> GatewayConfig | None:
    """
    What the supervisor serves itself: the listeners with UDP endpoints,
    with those only, in one process, with no C{/metrics} of its own (the
    supervisor serves that page); L{None} when there is none.
    """
    listeners = tuple(
        attrs.evolve(listener, listen=listener.udpListen)
        for listener in config.listeners
        if listener.udpListen
    )
    if not listeners:
        return None
    gateway = attrs.evolve(config.gateway, workers=1, metrics=None)
    return attrs.evolve(config, listeners=listeners, gateway=gateway)
