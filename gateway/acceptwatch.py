"""
Connections Twisted closes at accept, out of descriptors: each still gets
its access-log line.

When C{accept()} fails with C{EMFILE}, Twisted's TCP port releases a
descriptor it keeps in reserve, accepts every connection waiting in the
backlog and closes it at once, then reserves the descriptor again: without
that, the listening socket would stay readable and the reactor would spin
on it.  Those sockets never reach the listener's factory; the only trace
is one log event per socket (C{"EMFILE recovery: Closed socket from
{address}"}), emitted while the port's C{doRead} runs.  The contract says
every accepted connection ends with one access-log line, so L{watch} notes
which listener a port's C{doRead} is reading for, and one log observer
turns each such event into that listener's line (status
C{upstream_unavailable}, a local resource error).

This leans on Twisted's log message, not its API: should a Twisted release
word it differently, the sockets are closed exactly as before, without
their lines (C{tests/integration/test_reliability.py} notices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

#: The message Twisted logs for each socket it accepts and closes at EMFILE.
_RECOVERY_CLOSE = "EMFILE recovery: Closed socket from {address}"


class ClosedAtAccept(Protocol):
    """
    What a listener does about a connection Twisted closed at accept
    (L{gateway.listener.ListenerFactory.closedAtAccept}).
    """

    def closedAtAccept(self, address: object) -> None: ...


#: The listener whose port's C{doRead} is running, if any.
_reading: list[ClosedAtAccept] = []
_observing = False


@provider(ILogObserver)
def _observe(event: LogEvent) -> None:
    if not _reading or event.get("log_format") != _RECOVERY_CLOSE:
        return
    _reading[-1].closedAtAccept(event.get("address"))


def watch(port: Any, listener: Callable[[], ClosedAtAccept | None]) -> None:
    """
    Give each socket C{port} closes at EMFILE to C{listener()} (called at
    each read: a reload gives a port a new factory).  A port that is not
    read through C{doRead} (not one of Twisted's own) is left alone.
    """
    global _observing
    original = getattr(port, "doRead", None)
    if original is None:
        return
    if not _observing:
        globalLogPublisher.addObserver(_observe)
        _observing = True

    def doRead() -> object:
        current = listener()
        if current is None:
            return original()
        _reading.append(current)
        try:
            return original()
        finally:
            _reading.pop()

    port.doRead = doRead
