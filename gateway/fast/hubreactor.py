"""
The gateway's reactor: Twisted's epoll reactor, with the splice hub's
readiness handed to the hub directly.

Every connection the hub serves (accepted, pre-read, spliced or copied:
L{gateway.fast.hub}) is woken through one descriptor of the reactor, the
hub's epoll set.  Twisted dispatches each readiness event through
C{callWithLogger}, two context managers and C{_doReadOrWrite}: about
1.5 us of Python per wake-up, which on a keep-alive request relayed by
the hub (two wake-ups: the request, the answer) is a fifth of what the
gateway spends on it; and the hub then polls its own set, a second
C{epoll_wait} per wake-up.  L{HubReactor} lends the hub its own epoll
set for the sockets only the hub registers (L{lendPoller}) and hands
their events to the hub's C{turn}, and calls the hub's C{doRead} itself
for the others (kept in the hub's set): one C{epoll_wait} per wake-up,
no Twisted dispatch, under the same rules Twisted applies (an exception
is logged and the hub disconnected with it).  Every other descriptor is
dispatched as Twisted does.

Part of the quarantine (L{gateway.fast}): it overrides the epoll
reactor's C{doPoll} over its private C{_poller} and C{_selectables}, and
reads the hub's table of sockets.
Where they are missing (another Twisted), or the fast paths are off
(L{gateway.fast.portable}), or there is no epoll, L{install} installs
nothing and Twisted's default reactor runs the gateway: the hub is then
dispatched as any reader is.
"""

from __future__ import annotations

import select
import sys
from collections.abc import Mapping
from typing import Final

from twisted.logger import Logger
from twisted.python import log

from gateway.fast.hub import Hub
from gateway.fast.portable import EPOLL

_log = Logger()

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll: Twisted's default runs
    EPollReactor = None  # type: ignore[assignment,misc]

_IN: Final[int] = getattr(select, "EPOLLIN", 0)

#: No sockets, for a poll before the hub is made.
_NONE: Final[Mapping[int, object]] = {}

#: What L{HubReactor} uses of Twisted's epoll reactor that is not public.
_PRIVATE: Final = ("_poller", "_selectables", "_doReadOrWrite", "_disconnectSelectable")


if EPollReactor is not None:

    class HubReactor(EPollReactor):
        """
        Twisted's epoll reactor, calling the splice hub (one per reactor,
        L{gateway.fast.hub.hubFor}) without Twisted's per-event dispatch.

        @ivar _hub: the hub, once it reads through this reactor.
        @ivar _hubFd: its epoll set's descriptor.
        """

        _hub: Hub | None = None
        _hubFd = -1

        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            #: What the override needs is there (else Twisted's doPoll runs).
            self._direct = all(hasattr(self, name) for name in _PRIVATE)

        def lendPoller(self, hub: Hub) -> select.epoll | None:
            """
            The reactor's epoll set, for the hub to register the sockets
            only it reads and writes (L{gateway.fast.hub.Hub}), whose
            events then go to the hub's C{turn}; L{None} where Twisted's
            doPoll runs (the hub then keeps every socket in its own set).
            """
            self._hub = hub
            self._hubFd = hub.fileno()
            return self._poller if self._direct else None

        def doPoll(self, timeout: float | None) -> None:
            """
            Twisted's C{EPollReactor.doPoll}, but for the hub's descriptors.
            """
            if not self._direct:
                super().doPoll(timeout)  # type: ignore[no-untyped-call]
                return
            if timeout is None:
                timeout = -1
            selectables = self._selectables
            hub, hubFd = self._hub, self._hubFd
            ends: Mapping[int, object]
            released: Mapping[int, object]
            if hub is not None:
                ends, released = hub._sockets, hub._released
            else:
                ends = released = _NONE
            try:
                events = self._poller.poll(timeout, len(selectables) + len(ends) + 1)
            except InterruptedError:
                return
            drdw = self._doReadOrWrite
            hubs = None
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    # A socket of the hub's, or one released and not yet
                    # taken (which the hub's turn takes out of the set).
                    if fd in ends or fd in released:
                        if hubs is None:
                            hubs = [(fd, event)]
                        else:
                            hubs.append((fd, event))
                elif (
                    fd == hubFd
                    and event & _IN
                    and hub is not None
                    and selectable is hub
                ):
                    self._turnHub(hub, None)
                else:
                    log.callWithLogger(selectable, drdw, selectable, fd, event)
            if hubs is not None and hub is not None:
                self._turnHub(hub, hubs)

        doIteration = doPoll

        def _turnHub(self, hub: Hub, events: list[tuple[int, int]] | None) -> None:
            """
            A turn of the hub: for C{events} of the sockets it registered in
            the reactor's set, or, for L{None}, its own set being readable
            (its C{doRead} polls it).  What Twisted does when a reader
            raises is done here too: the exception logged, the hub
            disconnected with it.
            """
            try:
                if events is None:
                    hub.doRead()
                else:
                    hub.turn(events)
            except BaseException:  # noqa: BLE001 - as Twisted's _doReadOrWrite
                why = sys.exc_info()[1]
                _log.failure("splice hub")
                self._disconnectSelectable(hub, why, True)  # type: ignore[no-untyped-call]

else:  # pragma: no cover - no epoll
    HubReactor = None  # type: ignore[assignment,misc]


def install() -> bool:
    """
    Install L{HubReactor} as the global reactor, where there is epoll, the
    fast paths are on and no reactor is installed yet (the global
    reactor's first import installs Twisted's default for good).

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules or not EPOLL or HubReactor is None:
        return False
    from twisted.internet.main import installReactor

    installReactor(HubReactor())
    return True
