"""
What Twisted's listening ports do at accept that the gateway must see:
connections Twisted closes out of descriptors (each still gets its
access-log line), and a shared listening socket that another process shut
down (a quiet end, not a traceback).

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

With C{workers > 1} the listening sockets are shared with the supervisor,
which shuts its copy down when it stops or when a reload removes the
listener (so that the port refuses connections at once).  A worker that
is woken for that before its own signal arrives finds C{accept()} failing
with C{EINVAL} (the socket no longer listens), which Twisted's port does
not expect: it logs an unhandled error with a traceback and stays
registered with the reactor, woken again at once by a socket that is
readable for good.  For a shared port, L{watch} first asks the socket
whether it still listens (C{SO_ACCEPTCONN}, one C{getsockopt} per
readiness event) and, if not, ends the port as any lost descriptor,
with one info line.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.error import ConnectionDone
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from zope.interface import provider

#: The message Twisted logs for each socket it accepts and closes at EMFILE.
_RECOVERY_CLOSE = "EMFILE recovery: Closed socket from {address}"


class ClosedAtAccept(Protocol):
    """
    What a listener does about a connection Twisted closed at accept
    (L{gateway.connection.listener.ListenerFactory.closedAtAccept}).
    """

    def closedAtAccept(self, address: object) -> None: ...


#: The listener whose port's C{doRead} is running, if any.
_reading: list[ClosedAtAccept] = []
_observing = False
_log = Logger()


@provider(ILogObserver)
def _observe(event: LogEvent) -> None:
    if not _reading or event.get("log_format") != _RECOVERY_CLOSE:
        return
    _reading[-1].closedAtAccept(event.get("address"))


def watch(
    port: Any, listener: Callable[[], ClosedAtAccept | None], *, shared: bool = False
) -> None:
    """
    Give each socket C{port} closes at EMFILE to C{listener()} (called at
    each read: a reload gives a port a new factory).  A port that is not
    read through C{doRead} (not one of Twisted's own) is left alone.

    @param shared: the listening socket is shared with the supervisor
        (a worker's), which may shut it down: a read finds that out first.
    """
    global _observing
    original = getattr(port, "doRead", None)
    if original is None:
        return
    if not _observing:
        globalLogPublisher.addObserver(_observe)
        _observing = True

    def doRead() -> object:
        if shared and not _listening(port):
            _log.info(
                "{port}: the listening socket was shut down (by the supervisor,"
                " which holds it too): stopped accepting on it",
                port=port,
            )
            # Returned, a reason makes the reactor drop the port and call
            # its connectionLost, as for any descriptor that went away.
            return ConnectionDone("the listening socket was shut down")
        current = listener()
        if current is None:
            return original()
        _reading.append(current)
        try:
            return original()
        finally:
            _reading.pop()

    port.doRead = doRead


def _listening(port: Any) -> bool:
    """
    C{port}'s socket still listens (a socket shut down does not), or it
    cannot be told (then Twisted's C{accept} finds out as before).
    """
    sock = getattr(port, "socket", None)
    return sock is None or listening(sock)


def listening(sock: socket.socket) -> bool:
    """
    C{sock} still listens (C{SO_ACCEPTCONN}: a listening socket shut down
    by another process holding it does not), or it cannot be told.
    """
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return True
