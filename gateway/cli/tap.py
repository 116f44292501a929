"""
The twistd side of the gateway: C{twistd [-n] tlsgateway --config FILE}.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from gateway.config import ConfigError, GatewayConfig
from gateway.run.loading import load_config

_USAGE = "twistd -n tlsgateway --config /etc/tlsgateway/gateway.ini"


class Options(usage.Options):
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "the gateway's INI configuration file"],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            # One line, not twistd's page of usage followed by the error.
            raise SystemExit(f"tlsgateway: --config FILE is required, as in: {_USAGE}")


class _TwistdRoot(MultiService):
    """
    The service twistd runs: the gateway's top service, plus what twistd
    does not do for it.

      - Its log: twistd uses the application's C{ILogObserver} component
        when one is set, so setting one (the observer twistd would build,
        filtered by C{log_level}) is how the level applies under twistd.
      - A start failure (a port in use): one line in the log and exit 1,
        rather than twistd's traceback.  A daemonizing twistd waits on a
        status pipe for its child to start: the reason is written there,
        so the parent prints it.

    @ivar _serverOptions: twistd's own options (C{--pidfile}, C{--logfile},
        the status pipe of a daemon).
    """

    _log = Logger()

    def __init__(self, serverOptions: Mapping[str, Any], logLevel: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._serverOptions = serverOptions
        self._logLevel = logLevel

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if hasattr(parent, "setComponent"):
            from gateway.run.logs import setLevel, twistdObserver

            observer = twistdObserver(self._serverOptions, self._logLevel)
            if observer is not None:
                setLevel(self._logLevel)
                parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        from gateway.run.generation import StartupError

        try:
            super().startService()  # type: ignore[no-untyped-call]
        except (StartupError, RuntimeError) as e:
            self._failed(str(e))

    def _failed(self, message: str) -> None:
        self._log.critical("{error}", error=message)
        options = self._serverOptions
        pipe = options.get("statusPipe")
        if isinstance(pipe, int):
            with contextlib.suppress(OSError):
                os.write(pipe, f"1 {message}".encode()[:100])
                os.close(pipe)
        elif options.get("logfile") not in (None, "", "-"):
            # The log is a file: say it where the operator is, too.
            print(f"tlsgateway: {message}", file=sys.__stderr__)
        pidfile = options.get("pidfile")
        if pidfile:
            with contextlib.suppress(OSError, ValueError):
                with open(pidfile) as f:
                    mine = int(f.read().strip()) == os.getpid()
                if mine:
                    os.remove(pidfile)
        raise SystemExit(1)


def makeService(options: Options) -> IService:
    """
    Load and validate the configuration before twistd daemonizes, so that a
    bad file is reported on the terminal that started it, with every
    problem, and twistd exits 1.
    """
    from gateway.run.signals import ignoreEarly

    ignoreEarly()
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        raise SystemExit(1) from None
    except OSError as e:
        sys.stderr.write(f"{options['config']}: {e.strerror}\n")
        raise SystemExit(1) from None
    from gateway.fast import hubreactor

    # The gateway's reactor, unless twistd was given one (--reactor), which
    # it then installed already.
    hubreactor.install()
    from twisted.internet import reactor

    from gateway.cli.main import makeTop

    serverOptions = getattr(options, "parent", None) or {}
    _checkAccount(config, serverOptions)
    if serverOptions and not serverOptions.get("nodaemon"):
        from gateway.run.logs import sendStandardOutputToLog

        # A daemon's standard output is /dev/null: access_log = - goes to
        # twistd's log (--logfile, --syslog) instead.
        sendStandardOutputToLog()
    level = config.gateway.log_level
    root = _TwistdRoot(serverOptions, level)
    makeTop(config, reactor, logLevel=level).setServiceParent(root)
    return root


def _checkAccount(config: GatewayConfig, serverOptions: Mapping[str, Any]) -> None:
    """
    With C{--uid}/C{--gid}, twistd drops privileges before the gateway
    starts, and every reload runs as that account: refuse to start, naming
    each file it cannot read, here, on the terminal that started twistd.

    C{[gateway] user}/C{group} stand in for C{--uid}/C{--gid} when those
    are not given, so one configuration means the same under C{tlsgateway
    run} and twistd.
    """
    from gateway.run.privileges import (
        AccountError,
        accountFor,
        handOver,
        unreadableFiles,
    )

    uid, gid = serverOptions.get("uid"), serverOptions.get("gid")
    fromConfig = uid is None and gid is None
    if fromConfig:
        uid, gid = config.gateway.user, config.gateway.group
    try:
        account = accountFor(uid, gid)
        problems = [] if account is None else unreadableFiles(config, account)
    except AccountError as e:
        account, problems = None, [f"[gateway] user/group: {e}"]
    for problem in problems:
        sys.stderr.write(f"{problem}\n")
    if problems:
        raise SystemExit(1)
    if account is not None:
        handOver(config, account)
    if account is not None and fromConfig and isinstance(serverOptions, dict):
        # twistd drops to these after daemonizing, as for --uid/--gid.
        serverOptions["uid"], serverOptions["gid"] = account.uid, account.gid
