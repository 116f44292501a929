"""
The table of client protocols: which L{gateway.connection.strategy.IProtocolStrategy}
serves a listener, keyed by its C{protocol} setting (or C{tcp} for
C{mode = tcp}, which reads nothing whatever the protocol).

Adding a protocol: a module providing the strategy (as L{gateway.protocols.postgres}
and L{gateway.protocols.mysql} do), one entry in L{STRATEGIES}, and the new
C{protocol} value in L{gateway.config}.  The generic core never names a
protocol: the service resolves each listener's strategy here and gives it
to the listener, which asks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from gateway.config import ListenerConfig
from gateway.connection.strategy import IProtocolStrategy
from gateway.protocols.mysql import MYSQL
from gateway.protocols.postgres import POSTGRES
from gateway.protocols.tls import TCP, TLS

STRATEGIES: Final[Mapping[str, IProtocolStrategy]] = {
    "tls": TLS,
    "postgres": POSTGRES,
    "mysql": MYSQL,
    "tcp": TCP,
}
"""Every client protocol, by its C{protocol} value (C{tcp}: C{mode = tcp})."""


def strategyFor(config: ListenerConfig) -> IProtocolStrategy:
    """
    The strategy of a listener: C{mode = tcp} reads nothing, whatever its
    C{protocol}; otherwise its C{protocol} decides.
    """
    return STRATEGIES["tcp" if config.mode == "tcp" else config.protocol]
