"""
A private epoll reactor for the tests of the hub and what it calls
(L{gateway.fast.hub}, L{gateway.connection.hubaccept},
L{gateway.connection.hubclient}), and a bounded way to turn it.

Each of those tests runs on both reactors the hub may be read by:
Twisted's epoll reactor (the hub one of its readers, as when the gateway
is embedded) and the gateway's own (L{gateway.fast.hubreactor}, which
calls the hub directly).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from gateway.fast import hub as fasthub

if TYPE_CHECKING:
    from twisted.internet.epollreactor import EPollReactor


#: The reactors a hub test runs on (a parametrized fixture's params).
KINDS = ("twisted", "gateway")


def privateReactor(kind: str = "twisted") -> Iterator[EPollReactor]:
    """
    An epoll reactor of the test's own, closed with its hub afterwards
    (a generator for a pytest fixture to yield from).

    @param kind: one of L{KINDS}: Twisted's epoll reactor, or the gateway's
        L{gateway.fast.hubreactor.HubReactor}.
    """
    from twisted.internet.epollreactor import EPollReactor

    from gateway.fast.hubreactor import HubReactor

    made = EPollReactor() if kind == "twisted" else HubReactor()
    yield made
    hub = fasthub.HUBS.get(made)
    if hub is not None:
        hub.close()
    made.removeAll()
    made._poller.close()


def spinUntil(
    reactor: EPollReactor, done: Callable[[], bool], what: str, timeout: float = 5.0
) -> None:
    """
    Turn C{reactor} until C{done()}, failing the test after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out: {what}"
        reactor.iterate(0.005)


def turn(hub: fasthub.Hub) -> None:
    """
    One turn of C{hub}, on either reactor: one poll of its reactor, which
    calls the hub's C{doRead} when the hub's own set is readable (Twisted's)
    or hands the hub the events of the sockets it registered in the
    reactor's set (the gateway's).
    """
    reactor = hub._reactor()
    assert reactor is not None
    reactor.doIteration(0)  # type: ignore[attr-defined]


def socketPair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """
    A connected pair of sockets, the first non-blocking (the one a hub's
    end holds), closed afterwards (for a pytest fixture to yield from).
    """
    left, right = socket.socketpair()
    left.setblocking(False)
    yield left, right
    left.close()
    right.close()
