"""
Signal handling for the gateway's own process (C{twistd tlsgateway} and
C{tlsgateway run}).  An application that embeds L{GatewayService} keeps its
own signal policy; L{installReloadOnSIGHUP} gives it the gateway's
C{SIGHUP}, and nothing else.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from zope.interface import Interface


class IReloadable(Interface):
    """
    What the signals act on: the gateway's service in one process
    (L{gateway.run.service.GatewayService}), or the supervisor of its workers
    (L{gateway.run.supervisor.Supervisor}).
    """

    def reload() -> object:
        """
        C{SIGHUP}: load the configuration file again and serve it, whole
        or not at all.
        """

    def reopenLogs() -> None:
        """
        C{SIGUSR1}: reopen the access log (logrotate moved it).
        """

    def retire() -> None:
        """
        C{SIGQUIT}: stop accepting, and stop once the last established
        connection has ended.
        """


#: Signals the gateway handles that would end the process by default: set
#: to be ignored as early as possible (see L{ignoreEarly}).
_LATE = (signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT)


def ignoreEarly() -> None:
    """
    Ignore C{SIGHUP}, C{SIGUSR1} and C{SIGQUIT} until the reactor runs and
    the real handlers are installed: a C{systemctl reload} during start-up,
    or a log rotation reaching a worker the supervisor has just started,
    must not end the process (the default action of all three).
    """
    for number in _LATE:
        signal.signal(number, signal.SIG_IGN)


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

    def __init__(self, reactor: Any, target: IReloadable) -> None:
        self._reactor = reactor
        self._target = target
        self._stopping = False
        self._previousUSR1: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        signal.signal(signal.SIGQUIT, self._retire)
        previous = signal.signal(signal.SIGUSR1, self._reopen)
        # twistd rotates its own --logfile on SIGUSR1: keep doing that too.
        self._previousUSR1 = previous if callable(previous) else None

    def _stop(self, number: int, frame: object) -> None:
        """
        Stop once.  A second stop signal is common, not an error: Ctrl-C
        reaches every process of the terminal's group, so a worker gets
        C{SIGINT} from the terminal and C{SIGTERM} from its supervisor, and
        an impatient operator presses it twice; C{reactor.stop()} a second
        time would raise C{ReactorNotRunning}, logged as a critical error.
        The drain already in progress ends by C{drain_timeout} anyway.
        """
        name = signal.Signals(number).name
        if self._stopping:
            self._log.info("received {signal}: already stopping", signal=name)
            return
        self._stopping = True
        self._log.info("received {signal}: stopping", signal=name)
        self._reactor.callFromThread(self._stopReactor)

    def _stopReactor(self) -> None:
        """
        Stop the reactor, unless it is stopping already: a retiring worker
        (C{SIGQUIT}) stops its own reactor when its last connection ends,
        and its supervisor's C{SIGTERM} can arrive in that same moment.
        """
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            self._log.info("the reactor was stopping already")

    def _reload(self, number: int, frame: object) -> None:
        if self._stopping:
            # A reload now would open the listening ports the drain has just
            # closed (and a supervisor would start workers that nothing
            # stops): a stopping gateway only stops.
            self._log.info("received SIGHUP: stopping, not reloading")
            return
        self._log.info("received SIGHUP: reloading the configuration")
        self._reactor.callFromThread(self._target.reload)

    def _reopen(self, number: int, frame: object) -> None:
        self._log.info("received SIGUSR1: reopening the access log")
        self._reactor.callFromThread(self._target.reopenLogs)
        if self._previousUSR1 is not None:
            self._previousUSR1(number, frame)

    def _retire(self, number: int, frame: object) -> None:
        """
        C{SIGQUIT}, from a supervisor replacing this worker after a reload:
        stop accepting and exit when the last connection ends, with no
        deadline (a later C{SIGTERM} still drains with one).
        """
        if self._stopping:
            return
        self._log.info("received SIGQUIT: retiring after the last connection")
        self._reactor.callFromThread(self._target.retire)


def installReloadOnSIGHUP(service: IReloadable, reactor: Any = None) -> None:
    """
    Make C{SIGHUP} reload an embedded gateway, as it does C{twistd
    tlsgateway} and C{tlsgateway run}, instead of ending the process (the
    signal's default action, which takes the embedding application's
    other services down with it).

    Call it from the main thread, in a C{.tac} file or before the reactor
    runs.  Only C{SIGHUP} is taken: the application keeps its own policy
    for every other signal.  The handler only schedules
    C{service.reload()} on the reactor; a reload that is refused is
    logged and shown on the status page, and the process goes on serving
    the running configuration.  A service that is not running (stopped,
    or not started yet) is not reloaded: a reload would open the
    listening ports a stop has just closed.

    @param service: a L{gateway.run.service.GatewayService} (or anything
        with a C{reload()}).
    @param reactor: the reactor the service runs on; L{None} for the
        global one, imported when the signal arrives.
    """
    log = Logger(namespace="gateway.run.signals")

    def reload() -> None:
        if getattr(service, "running", True):
            service.reload()
        else:
            log.info("received SIGHUP: the gateway is not running, not reloading")

    def onSIGHUP(number: int, frame: object) -> None:
        target = reactor
        if target is None:
            from twisted.internet import reactor as target
        log.info("received SIGHUP: reloading the configuration")
        target.callFromThread(reload)

    signal.signal(signal.SIGHUP, onSIGHUP)
