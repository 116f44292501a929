"""
L{gateway.fast.acceptwatch}: a socket Twisted's port closes at EMFILE reaches
the listener the port was reading for.  End to end (a real process out of
descriptors): C{tests/integration/test_reliability.py}.
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from gateway.fast.acceptwatch import watch


class Listener:
    def __init__(self) -> None:
        self.closed: list[object] = []

    def closedAtAccept(self, address: object) -> None:
        self.closed.append(address)


class Port:
    """Logs what Twisted's tcp.Port logs when it closes a socket at EMFILE."""

    _log = Logger(namespace="twisted.internet.tcp.Port")

    def __init__(self) -> None:
        self.reads = 0

    def doRead(self) -> None:
        self.reads += 1
        self._log.info(
            "EMFILE recovery: Closed socket from {address}", address=("192.0.2.7", 4321)
        )


def test_aSocketClosedAtAcceptGoesToTheListenerOfThatPort() -> None:
    first, second = Listener(), Listener()
    one, other = Port(), Port()
    watch(one, lambda: first)
    watch(other, lambda: second)
    one.doRead()
    assert (first.closed, second.closed, one.reads) == ([("192.0.2.7", 4321)], [], 1)
    other.doRead()
    assert second.closed == [("192.0.2.7", 4321)]


def test_theSameEventOutsideAWatchedReadIsIgnored() -> None:
    listener = Listener()
    port = Port()
    watch(port, lambda: listener)
    Port._log.info(
        "EMFILE recovery: Closed socket from {address}", address=("192.0.2.7", 1)
    )
    assert listener.closed == []


def test_aSharedSocketShutDownElsewhereEndsThePortQuietly() -> None:
    """
    A worker's copy of a listening socket that the supervisor shut down:
    C{accept()} fails with C{EINVAL}, and instead of an unhandled error the
    port's read says it is done, which makes the reactor close it.
    """
    reactor = EPollReactor()
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    port = reactor.adoptStreamPort(
        listening.fileno(), socket.AF_INET, Factory.forProtocol(Protocol)
    )
    try:
        watch(port, lambda: None, shared=True)
        listening.shutdown(socket.SHUT_RDWR)
        why = port.doRead()
        assert isinstance(why, ConnectionDone)
        reactor._disconnectSelectable(port, why, True)
        assert not port.connected
        assert port not in reactor.getReaders()
    finally:
        listening.close()
        reactor._poller.close()


def test_aListeningSharedSocketIsReadAsBefore() -> None:
    """
    The check costs nothing else: a shared port that still listens
    accepts the waiting connection.
    """
    reactor = EPollReactor()
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    made: list[Protocol] = []

    class Counting(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

    port = reactor.adoptStreamPort(
        listening.fileno(), socket.AF_INET, Factory.forProtocol(Counting)
    )
    try:
        watch(port, lambda: None, shared=True)
        with socket.create_connection(listening.getsockname()):
            assert port.doRead() is None
            assert len(made) == 1
        for protocol in made:
            assert protocol.transport is not None
            cast(ITCPTransport, protocol.transport).abortConnection()
        port.stopListening()
    finally:
        listening.close()
        reactor._poller.close()
