"""
L{gateway.connection.servertries}: the one rule for trying servers
(L{ServerTries}, which L{gateway.connection.session.Session} and the MySQL
legs share) and the connect loop of L{Dialer}, in memory.
"""

from __future__ import annotations

import errno

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ServerConfig
from gateway.connection.servertries import Dialer, ServerTries
from tests.helpers import FixedServers
from tests.transports import NO_CONNECTOR

SERVERS = tuple(ServerConfig(f"192.0.2.{n}", 3306) for n in range(1, 6))


@given(
    servers=st.integers(min_value=0, max_value=5),
    tries=st.integers(min_value=0, max_value=8),
)
def test_eachServerIsTriedOnceWhileTriesLast(servers: int, tries: int) -> None:
    chooser = FixedServers(*SERVERS[:servers])
    left = ServerTries(chooser, tries, "198.51.100.7")
    picked = []
    while (server := left.next()) is not None:
        picked.append(server)
        left.failed(server, "refused")
    assert picked == list(SERVERS[: min(servers, tries)])
    assert chooser.events == [("failed", s) for s in picked]
    assert left.lastError == (
        f"{picked[-1].address}: refused" if picked else "no server available"
    )


def test_aLocalFailureEndsTheTriesWithoutBlamingTheServer() -> None:
    chooser = FixedServers(*SERVERS)
    tries = ServerTries(chooser, 3, "198.51.100.7")
    server = tries.next()
    assert server is not None
    tries.failedLocally(server, "local resource error: EMFILE")
    assert tries.next() is None
    assert chooser.events == []
    assert tries.lastError == f"{server.address}: local resource error: EMFILE"


class Leg(Protocol):
    def __init__(self, server: ServerConfig) -> None:
        self.server = server


class DialerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.chooser = FixedServers(*SERVERS[:2])
        self.legs: list[Leg] = []
        self.exhausted: list[str] = []
        self.dialer: Dialer[Leg] = Dialer(
            self.reactor,
            ServerTries(self.chooser, 3, "198.51.100.7"),
            3,
            self.attempt,
            self.exhausted.append,
        )

    def attempt(self, server: ServerConfig) -> Leg:
        leg = Leg(server)
        self.legs.append(leg)
        return leg

    def refuse(self, error: Exception) -> None:
        _, _, factory, timeout, _ = self.reactor.tcpClients[-1]
        self.assertEqual(timeout, 3)
        factory.clientConnectionFailed(NO_CONNECTOR, Failure(error))

    def test_aRefusedConnectTriesTheNextServer(self) -> None:
        self.dialer.start()
        self.refuse(ConnectionRefusedError())
        hosts = [(host, port) for host, port, *_ in self.reactor.tcpClients]
        self.assertEqual(hosts, [("192.0.2.1", 3306), ("192.0.2.2", 3306)])
        self.assertEqual(self.chooser.events, [("failed", SERVERS[0])])

    def test_noServerLeftIsExhaustedWithTheLastError(self) -> None:
        self.dialer.start()
        self.refuse(ConnectionRefusedError())
        self.refuse(ConnectionRefusedError())
        self.assertEqual(len(self.exhausted), 1)
        self.assertIn(SERVERS[1].address, self.exhausted[0])
        self.assertIn("refused", self.exhausted[0])

    def test_aLegThatFailsAfterConnectingTriesTheNext(self) -> None:
        self.dialer.start()
        self.dialer.failed(self.legs[0], "not a MySQL greeting")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(self.dialer.succeeded(self.legs[1]))
        self.assertEqual(
            self.chooser.events,
            [("failed", SERVERS[0]), ("succeeded", SERVERS[1])],
        )

    def test_lateReportsOfAnAbandonedLegAreIgnored(self) -> None:
        self.dialer.start()
        first = self.legs[0]
        self.dialer.failed(first, "closed")
        self.dialer.failed(first, "closed again")
        self.assertFalse(self.dialer.succeeded(first))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.chooser.events, [("failed", SERVERS[0])])

    def test_aLocalResourceErrorTriesNoOtherServer(self) -> None:
        self.dialer.start()
        self.refuse(ConnectBindError(errno.EMFILE, "Too many open files"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.chooser.events, [])
        [error] = self.exhausted
        self.assertIn("local resource error: EMFILE", error)

    def test_cancelStopsTheConnectAndAnyRetry(self) -> None:
        self.dialer.start()
        connector = self.reactor.connectors[-1]
        self.dialer.cancel()
        self.assertTrue(connector.stoppedConnecting)
        self.refuse(ConnectionRefusedError())
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.exhausted, [])

    def test_cancelAbortsAConnectedLeg(self) -> None:
        self.dialer.start()
        leg = self.legs[0]
        transport = StringTransport()
        leg.makeConnection(transport)
        aborted: list[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.dialer.cancel()
        self.assertEqual(aborted, [True])
