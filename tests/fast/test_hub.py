"""
The hub's registrations handed from one end of a socket to the next
(L{gateway.fast.hub.Hub.release}, L{gateway.fast.hub.Hub.forget}), on a
private epoll reactor against real loopback sockets: whoever holds a
descriptor is called for its events, and no one else, whatever was
released, taken, closed or reused in between.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest
from twisted.python.failure import Failure

from gateway.fast import hub as fasthub
from gateway.fast.portable import PORTABLE
from tests.hubreactor import KINDS, privateReactor, socketPair, turn

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "splice") or PORTABLE,
        reason="the hub needs Linux epoll and the fast paths on",
    ),
    pytest.mark.timeout(60),
]


class End:
    """
    One holder of a socket in the hub, counting what it is called for.
    """

    side = "test"

    def __init__(self, sock: socket.socket, *, reading: bool = True) -> None:
        self.socket = sock
        self.fd = sock.fileno()
        self.reading = reading
        self.writing = False
        self.reads = 0
        self.lost: list[Failure] = []

    def doRead(self) -> None:
        self.reads += 1

    def doWrite(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@pytest.fixture(params=KINDS)
def hub(request: pytest.FixtureRequest) -> Iterator[fasthub.Hub]:
    for reactor in privateReactor(request.param):
        yield fasthub.hubFor(reactor)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    yield from socketPair()


def test_theNextEndOfAReleasedSocketIsCalledForItsEvents(
    hub: fasthub.Hub, pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = pair
    first = End(left)
    hub.update(first)
    hub.release(first, left)
    second = End(left)
    hub.update(second)
    right.send(b"x")
    turn(hub)
    assert (first.reads, second.reads) == (0, 1)


def test_theNextEndMayWaitForOtherEvents(
    hub: fasthub.Hub, pair: tuple[socket.socket, socket.socket]
) -> None:
    """
    A connect's end waited to write; the relay's end of the same socket
    reads: it gets the readable event, not the writable one.
    """
    left, right = pair
    connecting = End(left, reading=False)
    connecting.writing = True
    hub.update(connecting)
    hub.release(connecting, left)
    relay = End(left)
    hub.update(relay)
    turn(hub)  # writable, not readable: nothing for the relay's end
    assert relay.reads == 0
    right.send(b"x")
    turn(hub)
    assert relay.reads == 1


def test_aReleasedSocketNoOneTookDoesNotKeepTheHubBusy(
    hub: fasthub.Hub, pair: tuple[socket.socket, socket.socket]
) -> None:
    """
    Readable, released, and not taken yet: the first event takes it out
    of the set (level-triggered epoll would report it forever); the end
    that takes it later registers it anew and is called.
    """
    left, right = pair
    first = End(left)
    hub.update(first)
    hub.release(first, left)
    right.send(b"x")
    turn(hub)
    assert _pending(hub, left.fileno()) == [], "an epoll set still reports the socket"
    late = End(left)
    hub.update(late)
    turn(hub)
    assert late.reads == 1


def test_aReleasedSocketClosedAndItsDescriptorReusedIsRegisteredAnew(
    hub: fasthub.Hub,
) -> None:
    left, right = socket.socketpair()
    first = End(left)
    hub.update(first)
    hub.release(first, left)
    fd = left.fileno()
    left.close()
    right.close()
    reused, peer = socket.socketpair()
    try:
        if reused.fileno() != fd:
            # Take the number back for the new socket, as an accept would.
            os.dup2(reused.fileno(), fd)
            reused.close()
            reused = socket.socket(fileno=fd)
        newcomer = End(reused)
        hub.update(newcomer)
        peer.send(b"x")
        turn(hub)
        assert newcomer.reads == 1
    finally:
        reused.close()
        peer.close()


def test_aForgottenSocketIsNeverCalledAgain(
    hub: fasthub.Hub, pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = pair
    end = End(left)
    hub.update(end)
    hub.forget(end)
    right.send(b"x")
    turn(hub)
    assert end.reads == 0
    assert end.lost == []


def _pending(hub: fasthub.Hub, fd: int) -> list[tuple[int, int]]:
    """
    What the epoll set that registers the hub's sockets reports now for
    C{fd}: the reactor's, where it lends it to the hub (a poll of a
    level-triggered set takes nothing away), else the hub's own, seen from
    outside through a second set watching the hub's descriptor.
    """
    main = hub._main
    if main is not None:
        return [event for event in main.poll(0) if event[0] == fd]
    watcher = select.epoll()
    try:
        watcher.register(hub.fileno(), select.EPOLLIN)
        return watcher.poll(0)
    finally:
        watcher.close()


def divideByZero() -> None:
    1 / 0  # noqa: B018


def test_soonRunsAtTheEndOfTheTurnInOrderAndAFailureIsTheEnds(
    hub: fasthub.Hub, pair: tuple[socket.socket, socket.socket]
) -> None:
    """
    Asked during the hub's turn, calls run after every event of it, in
    the order asked; one that raises drops its end (its C{connectionLost})
    and the others still run.
    """
    left, right = pair
    order: list[str] = []
    failing = End(socket.socket())
    try:

        class Asking(End):
            def doRead(self) -> None:
                order.append("event")
                hub.soon(self, lambda: order.append("first"))
                hub.soon(failing, divideByZero)
                hub.soon(self, lambda: order.append("second"))
                order.append("event done")

        asking = Asking(left)
        hub.update(asking)
        right.send(b"x")
        turn(hub)
        assert order == ["event", "event done", "first", "second"]
        assert len(failing.lost) == 1
        assert failing.lost[0].check(ZeroDivisionError)
    finally:
        failing.socket.close()
