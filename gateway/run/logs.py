"""
The gateway's own log (not the access log): C{[gateway] log_level}, Twisted's
chatter, and a worker id on every line a worker writes.

At C{info}, the default, an operator reads what changed: listeners opened,
reloads, servers going down and up, warnings.  Nothing is logged per
connection (the access log has one line for each) and nothing per
C{/metrics} scrape.  Twisted's own start/stop chatter for every port
("ListenerFactory starting on 443", "(TCP Port 443 Closed)", "Starting
factory ...") repeats what the gateway says itself, so it is demoted to
C{debug}.

Under twistd the gateway does not own the log observer: twistd builds it
from C{--logfile}/C{--syslog}/C{-n}.  L{twistdObserver} builds the same
observer from the same options, filtered, for the application's
C{ILogObserver} component, which twistd uses when it is set.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Mapping
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    InvalidLogLevelError,
    LogEvent,
    Logger,
    LogLevel,
    PredicateResult,
    textFileLogObserver,
)
from zope.interface import implementer

from gateway.core import verbosity
from gateway.fast.twistedtext import isChatter

#: The levels C{--log-level} accepts; C{[gateway] log_level} takes the first
#: three.
LEVELS = ("debug", "info", "warn", "error", "critical")


@implementer(ILogFilterPredicate)
class _Level:
    """
    A filter predicate: events at C{minimum} or above pass, chatter counts
    as C{debug}.
    """

    def __init__(self, minimum: LogLevel) -> None:
        self._minimum = minimum

    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_namespace") == ACCESS_NAMESPACE:
            # An access log sent here (a daemon's access_log = -) is
            # the operator's record of every connection, not chatter.
            return cast(PredicateResult, PredicateResult.yes)
        level = event.get("log_level", LogLevel.info)
        if not isinstance(level, type(LogLevel.info)):
            level = LogLevel.info
        if level >= LogLevel.info and isChatter(event):
            level = LogLevel.debug
        result = PredicateResult.yes if level >= self._minimum else PredicateResult.no
        return cast(PredicateResult, result)


@implementer(ILogObserver)
class _Worker:
    """
    Name the worker in the C{[system]} part of every line it writes:
    C{[worker 2 gateway.run.service#info]}.  Workers share the supervisor's
    standard error, so without it their lines cannot be told apart.
    """

    def __init__(self, observer: ILogObserver, worker: int) -> None:
        self._observer = observer
        self._label = f"worker {worker}"

    def __call__(self, event: LogEvent) -> None:
        event = dict(event)
        level = event.get("log_level")
        system = event.get("log_system")
        if system is None or system == "-":
            namespace = event.get("log_namespace", "-")
            name = getattr(level, "name", None)
            system = f"{namespace}#{name}" if name else namespace
        event["log_system"] = f"{self._label} {system}"
        self._observer(event)


def filtered(
    observer: ILogObserver, level: str = "info", worker: int | None = None
) -> ILogObserver:
    """
    C{observer}, seeing only events at C{level} or above (Twisted's
    chatter as C{debug}), each labelled with C{worker} when given.
    """
    if worker is not None:
        observer = _Worker(observer, worker)
    minimum = LogLevel.levelWithName(level)
    return FilteringLogObserver(observer, [_Level(minimum)])


def setLevel(level: str) -> None:
    """
    The process's log takes events at C{level} and above: set by the
    gateway's own processes when they set up their log (L{gateway.cli.main},
    L{gateway.cli.tap}), never by an application that embeds the gateway.
    """
    verbosity.DEBUG = LogLevel.levelWithName(level) <= LogLevel.debug


def consoleObserver(
    level: str = "info", worker: int | None = None, output: IO[str] | None = None
) -> ILogObserver:
    """
    The observer of C{tlsgateway run} and of workers: standard error.
    """
    return filtered(
        textFileLogObserver(sys.stderr if output is None else output), level, worker
    )


def twistdObserver(serverOptions: Mapping[str, Any], level: str) -> ILogObserver | None:
    """
    The observer twistd would build from its options (C{-n}, C{--logfile}),
    filtered by C{level}; L{None} where twistd's own choice must stand:
    C{--syslog}, C{--logger}, or C{--logfile -} without C{-n} (which
    twistd refuses with its own message).
    """
    if serverOptions.get("syslog") or serverOptions.get("logger"):
        return None
    name = serverOptions.get("logfile") or ""
    nodaemon = bool(serverOptions.get("nodaemon"))
    output: IO[str]
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            return None
        output = sys.stdout
    else:
        from twisted.python.logfile import LogFile

        output = LogFile.fromFullPath(name or "twistd.log")
    return filtered(textFileLogObserver(output), level)


# --- access_log = - in a daemon -----------------------------------------------

#: The namespace of access-log lines sent to the process's log.
ACCESS_NAMESPACE = "tlsgateway.access"

#: Where C{access_log = -} writes, when not to standard output (L{None}).
_standardOutput: IO[str] | None = None


class LogLines:
    """
    A text file that turns each line written to it into one event of the
    process's log, in L{ACCESS_NAMESPACE}: what C{access_log = -} writes
    to once standard output is gone.

    A daemon (C{twistd} without C{-n}) has its standard output on
    C{/dev/null}: the lines written there were silently lost.  Its log
    (C{--logfile}, C{--syslog}) is where an operator looks instead.
    """

    def __init__(self) -> None:
        self._partial = ""
        self._log = Logger(namespace=ACCESS_NAMESPACE)

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.info("{line}", line=line)
        return len(text)

    def flush(self) -> None:
        """
        Nothing is buffered but a line without its newline yet.
        """

    def close(self) -> None:
        """
        The process's log is not the access log's to close.
        """


def sendStandardOutputToLog() -> None:
    """
    From now on C{access_log = -} writes to the process's log (see
    L{LogLines}): called by C{twistd tlsgateway} when it daemonizes.
    """
    global _standardOutput
    _standardOutput = cast(IO[str], LogLines())


def standardOutput() -> IO[str] | None:
    """
    Where C{access_log = -} writes: L{None} for standard output, or the
    process's log once L{sendStandardOutputToLog} was called.
    """
    return _standardOutput


#: A line of a worker's log as L{consoleObserver} writes it:
#: C{2026-12-01T10:00:00+0000 [worker 1 gateway.x#info] text}.
_LOGGED = re.compile(r"\S+ \[([^\]]*)\] (.*)", re.DOTALL)
_LEVEL = re.compile(r"#(\w+)$")


class Relay:
    """
    A worker's standard output (its access log, with C{access_log = -})
    and standard error (its log), read by a supervisor whose own are gone
    (a daemon), each line passed on to the supervisor's log.

    An access-log line goes on as L{LogLines} sends one; a log line keeps
    the worker's label and level, so it reads as it would have on a
    terminal.
    """

    def __init__(self) -> None:
        self._partial: dict[int, bytes] = {}
        self._access = LogLines()
        self._log = Logger(namespace="gateway.run.supervisor")

    def received(self, fd: int, data: bytes) -> None:
        lines = (self._partial.pop(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if fd == 1:
                self._access.write(line + "\n")
                continue
            match = _LOGGED.fullmatch(line)
            if match is None:
                self._log.info("{line}", line=line)
                continue
            system, text = match.groups()
            found = _LEVEL.search(system)
            level = LogLevel.info
            if found is not None:
                with contextlib.suppress(InvalidLogLevelError):
                    level = LogLevel.levelWithName(found[1])
            self._log.emit(level, "{line}", line=text, log_system=system)
