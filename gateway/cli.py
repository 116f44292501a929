"""
The C{tlsgateway} command: C{run}, C{check} and C{demo}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

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
        print(f"warning: {warning}", file=sys.stderr)  # noqa: T201
    print("configuration OK")  # noqa: T201
    return 0


def run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    return serve(config)


def serve(config: GatewayConfig) -> int:
    """
    Run a L{GatewayService} on the global reactor until it is stopped.

    @return: the process exit status: 0 after a normal stop or drain, 1 if
        a listener could not be opened.
    """
    from twisted.internet import reactor

    from gateway.service import GatewayService, StartupError
    from gateway.signals import SignalHandling

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    service = GatewayService(config, reactor)
    try:
        service.startService()
    except StartupError as e:
        _log.critical("{error}", error=str(e))
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    SignalHandling(reactor).startService()
    reactor.run()  # type: ignore[attr-defined]
    return 0


def demo(args: argparse.Namespace) -> int:
    from gateway.demo import runDemo

    return runDemo(port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tlsgateway", description="TLS gateway: SNI passthrough and termination"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in [
        ("run", run, "run the gateway in the foreground"),
        ("check", check, "validate a configuration, like nginx -t"),
    ]:
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", required=True, help="INI file")
        sub.set_defaults(func=func)
    sub = commands.add_parser("demo", help="SNI routing demo with its own backends")
    sub.add_argument("--port", type=int, default=8443, help="gateway port (8443)")
    sub.set_defaults(func=demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
