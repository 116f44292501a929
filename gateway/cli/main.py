"""
The C{tlsgateway} command: C{run}, C{check}, C{reload}, C{cluster},
C{demo}, C{convert} and C{ech-keygen}.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, globalLogBeginner

from gateway.config import ConfigError, GatewayConfig

if TYPE_CHECKING:
    from gateway.run.privileges import Account

_log = Logger()


def version() -> str:
    """
    The installed package's version, or the source tree's when run from a
    checkout that is not installed.
    """
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tlsgateway")
    except PackageNotFoundError:
        import configparser

        setup = os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.cfg")
        parser = configparser.ConfigParser()
        parser.read(setup)
        return parser.get("metadata", "version", fallback="unknown")


def _load(path: str) -> GatewayConfig | None:
    # Here, not at the top: the TLS stack it loads is not needed for
    # --version, --help or demo --write-certs.
    from gateway.run.loading import load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print(e, file=sys.stderr)  # noqa: T201
    except OSError as e:
        print(f"{path}: {e.strerror}", file=sys.stderr)  # noqa: T201
    return None


def check(args: argparse.Namespace) -> int:
    """
    Like C{nginx -t}: everything that can be known without listening;
    and, as a warning only, upstream host names that do not resolve now.

    Warnings go to standard error, as problems do, each flushed before
    C{configuration OK} is printed on standard output: in a terminal, or
    with both streams in one pipe, C{configuration OK} is the last line.
    """
    config = _load(args.config)
    if config is None:
        return 1
    from gateway.run.resolution import unresolvedServers

    for warning in (*config.warnings, *unresolvedServers(config)):
        print(warning, file=sys.stderr, flush=True)  # noqa: T201
    print("configuration OK", flush=True)  # noqa: T201
    return 0


def run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    return serve(
        config,
        logLevel=args.log_level or config.gateway.log_level,
        pidfile=args.pidfile,
    )


def worker(args: argparse.Namespace) -> int:
    """
    One worker of a supervisor (C{workers > 1}): serves the sockets it
    inherited.  Not for operators to start by hand.
    """
    from gateway.run.supervisor import WORKER_ENV, inheritedSockets

    config = _load(args.config)
    if config is None:
        return 1
    number = os.environ.get(WORKER_ENV, "")
    return serve(
        config,
        inherited=inheritedSockets(),
        logLevel=args.log_level or config.gateway.log_level,
        worker=int(number) if number.isdigit() else os.getpid(),
    )


def makeTop(
    config: GatewayConfig,
    reactor: Any,
    inherited: Any = None,
    logLevel: str = "info",
    *,
    worker: bool = False,
) -> Any:
    """
    The service a gateway process runs: the gateway itself, or with
    C{workers > 1} (and not already a worker) a supervisor of workers;
    with the signal handling that fits it.

    @param worker: this process is a supervisor's worker: it serves the
        stream endpoints only (the supervisor serves the UDP ones), on the
        sockets it C{inherited}, which may be none.
    """
    from twisted.application.service import MultiService

    from gateway.run.service import GatewayService
    from gateway.run.signals import SignalHandling
    from gateway.run.split import streamPart
    from gateway.run.supervisor import Supervisor

    kind = type(reactor)
    _log.debug("reactor: {reactor}", reactor=f"{kind.__module__}.{kind.__qualname__}")
    top = MultiService()
    main: Any
    worker = worker or bool(inherited)
    if config.gateway.workers > 1 and not worker:
        main = Supervisor(
            config,
            reactor,
            logLevel,
            lambda part, metrics: GatewayService(part, reactor, metrics=metrics),
        )
    else:
        main = GatewayService(
            config,
            reactor,
            inherited=inherited,
            view=streamPart if worker else None,
        )
    main.setServiceParent(top)
    if config.cluster is not None and isinstance(main, GatewayService):
        from gateway.run.fleet import Fleet

        Fleet(main, config.cluster, reactor).setServiceParent(top)  # type: ignore[no-untyped-call]
    SignalHandling(reactor, main).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top


def serve(
    config: GatewayConfig,
    inherited: Any = None,
    logLevel: str = "info",
    *,
    pidfile: str | None = None,
    worker: int | None = None,
) -> int:
    """
    Run the gateway on the global reactor until it is stopped.

    @param pidfile: write the process id there once every listener is
        open (as twistd's C{--pidfile} does), remove it at exit.
    @param worker: this process is that worker of a supervisor: say so on
        every log line.
    @return: the process exit status: 0 after a normal stop or drain, 1 if
        a listener could not be opened.
    """
    from gateway.fast import hubreactor

    # Before the global reactor's first import, which installs Twisted's.
    hubreactor.install()
    from twisted.internet import reactor

    from gateway.run.generation import StartupError
    from gateway.run.logs import consoleObserver, setLevel

    setLevel(logLevel)
    globalLogBeginner.beginLoggingTo(
        [consoleObserver(logLevel, worker)], redirectStandardIO=False
    )
    account, problems = _account(config, checkFiles=worker is None)
    for line in problems:
        _log.critical("{error}", error=line)
    if problems:
        return 1
    if pidfile is not None:
        problem = _claimPidfile(pidfile)
        if problem is not None:
            _log.critical("{error}", error=problem)
            return 1
    top = makeTop(config, reactor, inherited, logLevel, worker=worker is not None)
    try:
        top.startService()
    except (StartupError, RuntimeError) as e:
        _log.critical("{error}", error=str(e))
        _releasePidfile(pidfile)
        return 1
    if account is not None and (inherited or config.gateway.workers == 1):
        # Listening and logging: the drop comes after both.  A supervisor
        # keeps its privileges (see gateway.run.privileges).
        problem = _drop(config, account)
        if problem is not None:
            _log.critical("{error}", error=problem)
            top.stopService()
            _releasePidfile(pidfile)
            return 1
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    if worker is not None:
        # After the signal handlers (SignalHandling installs them when the
        # reactor runs, and was started first): a supervisor that retires
        # the old workers once this one is ready may signal it at once.
        reactor.callWhenRunning(_tellSupervisorReady)
    reactor.run()
    _releasePidfile(pidfile)
    return 0


def _account(
    config: GatewayConfig, checkFiles: bool
) -> tuple[Account | None, list[str]]:
    """
    The account of C{[gateway] user}/C{group}, and why the gateway cannot
    start as it: each file a reload reads that it cannot (unless
    C{checkFiles} is false: a worker, whose supervisor checked).

    @return: the account (L{None}: no drop) and the problems, one line
        each.
    """
    from gateway.run.privileges import (
        AccountError,
        configuredAccount,
        unreadableFiles,
    )

    try:
        account = configuredAccount(config)
        problems = (
            []
            if account is None or not checkFiles
            else (unreadableFiles(config, account))
        )
    except AccountError as e:
        return None, [f"[gateway] user/group: {e}"]
    return account, problems


def _drop(config: GatewayConfig, account: Account) -> str | None:
    """
    Serve as C{account} from now on, once listening and logging.

    @return: why the drop failed, or L{None}.
    """
    from gateway.run.privileges import AccountError, dropPrivileges, handOver

    handOver(config, account)
    try:
        dropPrivileges(account)
    except AccountError as e:
        return f"[gateway] user/group: {e}"
    _log.info("serving as {account}", account=str(account))
    return None


def _claimPidfile(path: str) -> str | None:
    """
    Write this process's id to C{path}, unless a running process's id is
    already there (two gateways on one pidfile would make C{reload} signal
    the wrong one).

    @return: why the file could not be claimed, or L{None}.
    """
    try:
        with open(path) as f:
            other = int(f.read().strip() or "0")
    except (OSError, ValueError):
        other = 0
    alive = False
    if other and other != os.getpid():
        try:
            os.kill(other, 0)
        except ProcessLookupError:
            pass  # stale: that process is gone
        except PermissionError:
            alive = True
        else:
            alive = True
        if alive:
            return (
                f"{path}: process {other} is running: is another gateway using"
                " this pid file? (remove the file if not)"
            )
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as e:
        return f"{path}: cannot write the pid file: {e.strerror}"
    return None


def _releasePidfile(path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.remove(path)
    except OSError:
        pass


def _tellSupervisorReady() -> None:
    """
    A worker serves its listeners: say so on the descriptor the
    supervisor gave it (L{gateway.run.supervisor.READY_ENV}), once.
    """
    from gateway.run.supervisor import READY, READY_ENV

    fd = os.environ.pop(READY_ENV, None)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), READY)
        os.close(int(fd))
    except OSError as e:
        _log.warn("cannot tell the supervisor this worker is ready: {error}", error=e)


def reload(args: argparse.Namespace) -> int:
    """
    C{tlsgateway reload}: check the configuration, then send the running
    gateway C{SIGHUP}.  Checking first means a typo is reported here, on
    the operator's terminal, rather than only in the gateway's log.  Only
    a process that is a gateway is signalled (L{gateway.cli.target}).
    """
    if args.config is not None and _load(args.config) is None:
        return 1
    from gateway.cli.target import refusal

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
    problem = refusal(pid, args.pidfile)
    if problem is not None:
        print(f"tlsgateway reload: {problem}", file=sys.stderr)  # noqa: T201
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"cannot signal process {pid}: {e.strerror}", file=sys.stderr)  # noqa: T201
        return 1
    print(f"sent SIGHUP to {pid}")  # noqa: T201
    return 0


def cluster(args: argparse.Namespace) -> int:
    """
    C{tlsgateway cluster}: what the cluster adds to the configuration.
    """
    config = _load(args.config)
    if config is None:
        return 1
    from gateway.cli.clustershow import showCluster

    return showCluster(config, args.json)


def demo(args: argparse.Namespace) -> int:
    if args.write_certs is not None:
        from gateway.cli.democerts import writeExampleCertificates

        for path in writeExampleCertificates(args.write_certs):
            print(f"wrote {path}")  # noqa: T201
        return 0
    from gateway.cli.demo import runDemo

    return runDemo(port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.run.logs import LEVELS
    from gateway.run.signals import ignoreEarly

    ignoreEarly()
    parser = argparse.ArgumentParser(
        prog="tlsgateway", description="TLS gateway: SNI passthrough and termination"
    )
    parser.add_argument(
        "--version", action="version", version=f"tlsgateway {version()}"
    )
    # The metavar lists the commands for operators; `worker` (what a
    # supervisor starts) is left out of it and, having no help, of the list.
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{run,check,reload,cluster,demo,convert,ech-keygen}",
    )
    for name, func, text in [
        ("run", run, "run the gateway in the foreground"),
        ("check", check, "validate a configuration, like nginx -t"),
        ("worker", worker, None),
    ]:
        sub = (
            commands.add_parser(name)
            if text is None
            else commands.add_parser(name, help=text)
        )
        sub.add_argument("--config", "-c", required=True, help="INI file")
        if name != "check":
            sub.add_argument(
                "--log-level",
                default=None,
                choices=LEVELS,
                help="least important events logged (default: [gateway] log_level,"
                " itself info by default)",
            )
        if name == "run":
            sub.add_argument(
                "--pidfile",
                help="write the process id to this file (for tlsgateway reload"
                " --pidfile), removed at exit",
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
    sub = commands.add_parser(
        "cluster",
        help="list what the cluster (etcd) adds to a configuration: members,"
        " stored routes and upstreams applied or refused",
    )
    sub.add_argument("--config", "-c", required=True, help="INI file with [cluster]")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=cluster)
    sub = commands.add_parser("demo", help="SNI routing demo with its own backends")
    sub.add_argument("--port", type=int, default=8443, help="gateway port (8443)")
    sub.add_argument(
        "--write-certs",
        metavar="FOLDER",
        help="instead: write throwaway certificates for the etc/ examples"
        " into FOLDER (etc/tls for a checkout) and exit",
    )
    sub.set_defaults(func=demo)
    from gateway.cli.convert.command import addConvertCommand

    addConvertCommand(commands)

    from gateway.cli.echkeygen import addParser

    addParser(commands)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
