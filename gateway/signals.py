"""
Signal handling for the gateway's own process (C{twistd tlsgateway} and
C{tlsgateway run}); an application that embeds L{GatewayService} keeps its
own signal policy and does not use this.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.logger import Logger


class Reloadable(Protocol):
    """
    A gateway service or a supervisor.
    """

    def reload(self) -> object: ...

    def reopenLogs(self) -> None: ...


class SignalHandling(Service):
    """
    C{SIGTERM}/C{SIGINT} drain and stop, C{SIGHUP} reloads the
    configuration, C{SIGUSR1} reopens the access log (logrotate).

    Twisted's own handlers would stop the reactor too, but remember the
    signal, and twistd then re-raises it at exit so the process dies I{by}
    the signal.  The contract says a drain that ends normally exits 0, so
    the gateway installs its handlers once the reactor runs (after
    Twisted's).  The handlers only schedule work on the reactor: nothing
    runs inside the signal handler itself.
    """

    _log = Logger()

    def __init__(self, reactor: Any, target: Reloadable) -> None:
        self._reactor = reactor
        self._target = target

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        signal.signal(signal.SIGUSR1, self._reopen)

    def _stop(self, number: int, frame: object) -> None:
        self._log.info(
            "received {signal}: stopping", signal=signal.Signals(number).name
        )
        self._reactor.callFromThread(self._reactor.stop)

    def _reload(self, number: int, frame: object) -> None:
        self._log.info("received SIGHUP: reloading the configuration")
        self._reactor.callFromThread(self._target.reload)

    def _reopen(self, number: int, frame: object) -> None:
        self._log.info("received SIGUSR1: reopening the access log")
        self._reactor.callFromThread(self._target.reopenLogs)
