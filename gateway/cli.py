"""
The C{tlsgateway} command: C{run}, C{check} and C{demo}.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from gateway.config import ConfigError, GatewayConfig, load_config

_log = Logger()


def _load(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)  # noqa: T201
    except OSError as e:
        print(f"{path}: {e.strerror}", file=sys.stderr)  # noqa: T201
    return None


def check(args: argparse.Namespace) -> int:
    """
    Like C{nginx -t}: everything that can be known without listening.
    """
    config = _load(args.config)
    if config is None:
        return 1
    for warning in config.warnings:
        print(warning)  # noqa: T201
    print("configuration OK")  # noqa: T201
    return 0


def run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    return serve(config, logLevel=args.log_level)


def worker(args: argparse.Namespace) -> int:
    """
    One worker of a supervisor (C{workers > 1}): serves the sockets it
    inherited.  Not for operators to start by hand.
    """
    from gateway.supervisor import inheritedSockets

    config = _load(args.config)
    if config is None:
        return 1
    return serve(config, inherited=inheritedSockets(), logLevel=args.log_level)


def makeTop(
    config: GatewayConfig, reactor: Any, inherited: Any = None, logLevel: str = "info"
) -> Any:
    """
    The service a gateway process runs: the gateway itself, or with
    C{workers > 1} (and not already a worker) a supervisor of workers;
    with the signal handling that fits it.
    """
    from twisted.application.service import MultiService

    from gateway.service import GatewayService
    from gateway.signals import SignalHandling
    from gateway.supervisor import Supervisor

    top = MultiService()
    main: Any
    if config.gateway.workers > 1 and not inherited:
        main = Supervisor(config, reactor, logLevel)
    else:
        main = GatewayService(config, reactor, inherited=inherited)
    main.setServiceParent(top)
    SignalHandling(reactor, main).setServiceParent(top)
    return top


def serve(config: GatewayConfig, inherited: Any = None, logLevel: str = "info") -> int:
    """
    Run the gateway on the global reactor until it is stopped.

    @return: the process exit status: 0 after a normal stop or drain, 1 if
        a listener could not be opened.
    """
    from twisted.internet import reactor

    from gateway.service import StartupError

    predicate = LogLevelFilterPredicate(
        defaultLogLevel=LogLevel.levelWithName(logLevel)
    )
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    top = makeTop(config, reactor, inherited, logLevel)
    try:
        top.startService()
    except (StartupError, RuntimeError) as e:
        _log.critical("{error}", error=str(e))
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()  # type: ignore[attr-defined]
    return 0


def reload(args: argparse.Namespace) -> int:
    """
    C{tlsgateway reload}: check the configuration, then send the running
    gateway C{SIGHUP}.  Checking first means a typo is reported here, on
    the operator's terminal, rather than only in the gateway's log.
    """
    if args.config is not None and _load(args.config) is None:
        return 1
    pid = args.pid
    if pid is None:
        if args.pidfile is None:
            print("reload needs --pid PID or --pidfile FILE", file=sys.stderr)  # noqa: T201
            return 2
        try:
            with open(args.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            print(f"{args.pidfile}: cannot read a pid: {e}", file=sys.stderr)  # noqa: T201
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"cannot signal process {pid}: {e.strerror}", file=sys.stderr)  # noqa: T201
        return 1
    print(f"sent SIGHUP to {pid}")  # noqa: T201
    return 0


def demo(args: argparse.Namespace) -> int:
    from gateway.demo import runDemo

    return runDemo(port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.signals import ignoreEarly

    ignoreEarly()
    parser = argparse.ArgumentParser(
        prog="tlsgateway", description="TLS gateway: SNI passthrough and termination"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in [
        ("run", run, "run the gateway in the foreground"),
        ("check", check, "validate a configuration, like nginx -t"),
        ("worker", worker, argparse.SUPPRESS),
    ]:
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", required=True, help="INI file")
        if name != "check":
            sub.add_argument(
                "--log-level",
                default="info",
                choices=["debug", "info", "warn", "error", "critical"],
                help="least important events logged (info)",
            )
        sub.set_defaults(func=func)
    sub = commands.add_parser(
        "reload", help="check a configuration and make the running gateway load it"
    )
    sub.add_argument("--config", "-c", help="INI file to check first")
    target = sub.add_mutually_exclusive_group()
    target.add_argument("--pid", type=int, help="the gateway's process id")
    target.add_argument("--pidfile", help="file holding the gateway's process id")
    sub.set_defaults(func=reload)
    sub = commands.add_parser("demo", help="SNI routing demo with its own backends")
    sub.add_argument("--port", type=int, default=8443, help="gateway port (8443)")
    sub.set_defaults(func=demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
