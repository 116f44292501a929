"""
Signal handling for the gateway's own process (C{twistd tlsgateway} and
C{tlsgateway run}); an application that embeds L{GatewayService} keeps its
own signal policy and does not use this.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


class SignalHandling(Service):
    """
    C{SIGTERM} and C{SIGINT} stop the reactor, which drains the gateway.

    Twisted's own handlers do the same, but remember the signal, and twistd
    then re-raises it at exit so the process dies I{by} the signal.  The
    contract says a drain that ends normally exits 0, so the gateway
    installs its handlers once the reactor runs (after Twisted's).
    """

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._stop)

    def _stop(self, number: int, frame: object) -> None:
        self._log.info(
            "received {signal}: stopping", signal=signal.Signals(number).name
        )
        self._reactor.callFromThread(self._reactor.stop)
