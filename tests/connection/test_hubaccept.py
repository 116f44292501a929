"""
Who accepts a listener's connections (L{gateway.connection.hubaccept}):
the hub, in batches, or the port as Twisted made it; on a private epoll
reactor against real loopback sockets, every wait bounded.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import LogEvent, globalLogPublisher

from gateway.connection.hubaccept import (
    BATCH,
    HubAcceptor,
    PortAcceptor,
    chooseAcceptor,
)
from gateway.connection.hubclient import HubClient
from gateway.fast import hub as fasthub
from gateway.fast.portable import PORTABLE
from tests.helpers import appendingTo
from tests.hubreactor import KINDS, privateReactor, spinUntil

pytestmark = [pytest.mark.timeout(60)]
#: The hub's tests: Linux, with the fast paths on (CI's first pass).
linuxFastPath = pytest.mark.skipif(
    not hasattr(os, "splice") or PORTABLE,
    reason="the hub needs Linux epoll and the fast paths on",
)

if hasattr(os, "splice"):
    from twisted.internet.epollreactor import EPollReactor


class Listener(ServerFactory):
    """
    A listener's factory as the acceptors see it: what the hub accepted,
    what the port accepted, what was closed at accept.
    """

    def __init__(self) -> None:
        self.inHub: list[HubClient] = []
        self.byPort: list[Protocol] = []
        self.closed: list[object] = []

    def buildProtocol(self, addr: object) -> Protocol:
        protocol = Protocol()
        self.byPort.append(protocol)
        return protocol

    def acceptedInHub(self, client: HubClient) -> None:
        self.inHub.append(client)

    def closedAtAccept(self, address: object) -> None:
        self.closed.append(address)


@pytest.fixture(params=KINDS)
def reactor(request: pytest.FixtureRequest) -> Iterator[EPollReactor]:
    yield from privateReactor(request.param)


def assertThePortAccepts(reactor: EPollReactor, port: Any, listener: Listener) -> None:
    """
    C{port} is read by the reactor, and a connection reaches C{listener}
    through it, none through the hub.  Then the port closes.
    """
    assert port in reactor.getReaders()
    with socket.create_connection(("127.0.0.1", port.getHost().port)):
        spinUntil(reactor, lambda: bool(listener.byPort), "the port's accept")
    assert listener.inHub == []
    port.stopListening()


def current(listener: Listener) -> Callable[[], Listener]:
    return lambda: listener


def closeAll(clients: list[HubClient]) -> None:
    for client in clients:
        client.socket.close()


@linuxFastPath
def test_thePreReadListenerIsAcceptedByTheHubNotThePort(reactor: EPollReactor) -> None:
    """
    The port stops being one of the reactor's readers; a connection reaches
    the factory's C{acceptedInHub} with a non-blocking socket whose peer is
    the client.
    """
    listener = Listener()
    port = reactor.listenTCP(0, listener, interface="127.0.0.1")
    acceptor = chooseAcceptor(
        reactor, port, lambda: listener, preread=True, shared=False
    )
    assert isinstance(acceptor, HubAcceptor)
    assert port not in reactor.getReaders()
    with socket.create_connection(("127.0.0.1", port.getHost().port)) as client:
        spinUntil(reactor, lambda: bool(listener.inHub), "the hub's accept")
        accepted = listener.inHub[0]
        host, clientPort = client.getsockname()
        assert (accepted.getPeer().host, accepted.getPeer().port) == (host, clientPort)
        assert accepted.getHost().port == port.getHost().port
        assert accepted.socket.getblocking() is False
        assert listener.byPort == []
    closeAll(listener.inHub)
    acceptor.stop()
    port.stopListening()


@linuxFastPath
def test_aListenerTheHubDoesNotPreReadIsAcceptedByItsPort(
    reactor: EPollReactor,
) -> None:
    listener = Listener()
    port = reactor.listenTCP(0, listener, interface="127.0.0.1")
    acceptor = chooseAcceptor(
        reactor, port, lambda: listener, preread=False, shared=False
    )
    assert isinstance(acceptor, PortAcceptor)
    assertThePortAccepts(reactor, port, listener)


@linuxFastPath
def test_aQueueLongerThanABatchIsAcceptedWholeOnceEach(reactor: EPollReactor) -> None:
    """
    More connections wait than one readiness event accepts: the rest are
    accepted on the next ones, each exactly once.
    """
    listener = Listener()
    port = reactor.listenTCP(0, listener, interface="127.0.0.1", backlog=512)
    acceptor = chooseAcceptor(
        reactor, port, lambda: listener, preread=True, shared=False
    )
    count = BATCH * 2 + 7
    clients = [
        socket.create_connection(("127.0.0.1", port.getHost().port))
        for _ in range(count)
    ]
    try:
        spinUntil(reactor, lambda: len(listener.inHub) >= count, "every accept")
        reactor.iterate(0.05)
        assert len(listener.inHub) == count
        peers = {client.getPeer().port for client in listener.inHub}
        assert peers == {sock.getsockname()[1] for sock in clients}
    finally:
        for sock in clients:
            sock.close()
        closeAll(listener.inHub)
    acceptor.stop()
    port.stopListening()


@linuxFastPath
def test_stoppingGivesThePortBackToTheReactor(reactor: EPollReactor) -> None:
    """
    A reload that makes the listener one the hub does not pre-read stops
    the hub's acceptor: the port reads again, and nothing is lost.
    """
    listener = Listener()
    port = reactor.listenTCP(0, listener, interface="127.0.0.1")
    acceptor = chooseAcceptor(
        reactor, port, lambda: listener, preread=True, shared=False
    )
    acceptor.stop()
    assertThePortAccepts(reactor, port, listener)


@linuxFastPath
def test_theFactoryIsThePortsCurrentOneAtEachAccept(reactor: EPollReactor) -> None:
    """
    A reload gives the port a new factory: the next connection goes to it.
    """
    before, after = Listener(), Listener()
    port = reactor.listenTCP(0, before, interface="127.0.0.1")
    acceptor = chooseAcceptor(
        reactor,
        port,
        lambda: port.factory,
        preread=True,
        shared=False,
    )
    address = ("127.0.0.1", port.getHost().port)
    with socket.create_connection(address):
        spinUntil(reactor, lambda: bool(before.inHub), "the first accept")
    port.factory = after
    with socket.create_connection(address):
        spinUntil(reactor, lambda: bool(after.inHub), "the second accept")
    assert len(before.inHub) == 1
    closeAll(before.inHub + after.inHub)
    acceptor.stop()
    port.stopListening()


@linuxFastPath
def test_aSharedSocketIsAcceptedByOneOfTheHubsWatchingIt() -> None:
    """
    Two workers' reactors share one listening socket, each through its
    hub with C{EPOLLEXCLUSIVE}: every connection is accepted by exactly one.
    """
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    reactors = [EPollReactor(), EPollReactor()]
    listeners = [Listener(), Listener()]
    ports = [
        made.adoptStreamPort(listening.fileno(), socket.AF_INET, listener)
        for made, listener in zip(reactors, listeners, strict=True)
    ]
    acceptors = [
        chooseAcceptor(made, port, current(listener), preread=True, shared=True)
        for made, port, listener in zip(reactors, ports, listeners, strict=True)
    ]
    assert all(isinstance(acceptor, HubAcceptor) for acceptor in acceptors)
    clients = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(listening.getsockname()))
        deadline = time.monotonic() + 5
        while sum(len(listener.inHub) for listener in listeners) < 20:
            assert time.monotonic() < deadline, "timed out: the shared accepts"
            for made in reactors:
                made.iterate(0.002)
        accepted = [c.getPeer().port for listener in listeners for c in listener.inHub]
        assert sorted(accepted) == sorted(sock.getsockname()[1] for sock in clients)
    finally:
        for sock in clients:
            sock.close()
        for listener in listeners:
            closeAll(listener.inHub)
        for acceptor, port, made in zip(acceptors, ports, reactors, strict=True):
            acceptor.stop()
            port.stopListening()
            made.iterate(0)
            fasthub.hubFor(made).close()
            made.removeAll()
            made._poller.close()
        listening.close()


@linuxFastPath
def test_aSharedSocketShutDownElsewhereStopsTheHubsAccepting(
    reactor: EPollReactor,
) -> None:
    """
    The supervisor shut its copy of a shared socket down: the hub stops
    accepting on it and gives the port back to the reactor, whose read
    (watched in the gateway by L{gateway.fast.acceptwatch}) ends it.
    """
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    listener = Listener()
    port = reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, listener)
    acceptor = chooseAcceptor(
        reactor, port, lambda: listener, preread=True, shared=True
    )
    assert isinstance(acceptor, HubAcceptor)
    listening.shutdown(socket.SHUT_RDWR)
    spinUntil(reactor, lambda: not acceptor.reading, "the hub giving the port up")
    assert listener.inHub == []
    port.stopListening()
    listening.close()


@pytest.mark.skipif(not PORTABLE, reason="checks TLSGATEWAY_PORTABLE=1 (CI's 2nd pass)")
def test_withTheFastPathsOffThePortAcceptsEveryListener() -> None:
    """
    C{TLSGATEWAY_PORTABLE=1}: no listener is accepted by the hub, whatever
    its configuration says.
    """
    from twisted.internet.selectreactor import SelectReactor

    made = SelectReactor()
    listener = Listener()
    port = made.listenTCP(0, listener, interface="127.0.0.1")
    try:
        acceptor = chooseAcceptor(
            made, port, lambda: listener, preread=True, shared=False
        )
        assert isinstance(acceptor, PortAcceptor)
        assert port in made.getReaders()
    finally:
        port.stopListening()


@linuxFastPath
def test_aConnectionThatFailsToStartIsDroppedAloneAndLogged(
    reactor: EPollReactor,
) -> None:
    """
    The listener raises for one connection (a bug): that one is logged and
    closed, and the hub goes on accepting the next ones.
    """

    class Failing(Listener):
        def acceptedInHub(self, client: HubClient) -> None:
            if not self.inHub:
                self.inHub.append(client)
                raise RuntimeError("a bug in starting the first connection")
            super().acceptedInHub(client)

    listener = Failing()
    port = reactor.listenTCP(0, listener, interface="127.0.0.1")
    acceptor = chooseAcceptor(
        reactor, port, lambda: listener, preread=True, shared=False
    )
    events: list[LogEvent] = []
    observer = appendingTo(events)
    globalLogPublisher.addObserver(observer)
    address = ("127.0.0.1", port.getHost().port)
    try:
        with socket.create_connection(address, timeout=5) as first:
            spinUntil(reactor, lambda: bool(listener.inHub), "the first accept")
            assert first.recv(10) == b"", "the failed connection is closed"
        with socket.create_connection(address):
            spinUntil(reactor, lambda: len(listener.inHub) == 2, "the next accept")
    finally:
        globalLogPublisher.removeObserver(observer)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert [e["log_failure"].type for e in failures] == [RuntimeError]
    assert isinstance(acceptor, HubAcceptor)
    assert acceptor.reading
    closeAll(listener.inHub[1:])
    acceptor.stop()
    port.stopListening()
