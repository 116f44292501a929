"""
Active health checks: the state table on its own, and the checker driven
on a memory reactor (no sockets; TLS against an in-memory pyOpenSSL server).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable

import trustme
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import (
    ServerConfig,
    UpstreamConfig,
)
from gateway.connection.health import (
    MAX_PROBE_TIME,
    TRANSITIONS,
    Health,
    HealthChecker,
    HealthState,
    probeTimeout,
)
from gateway.connection.upstream import Pool
from gateway.run.loading import load_config_text
from gateway.run.service import GatewayService

# -- the state table -----------------------------------------------------------


def test_theTableCoversEveryStateAndResult() -> None:
    assert set(TRANSITIONS) == {(s, r) for s in Health for r in (True, False)}


def run(results: str, rise: int = 2, fall: int = 3) -> list[bool]:
    """C{up} after each result of C{results} ("+" passed, "-" failed)."""
    state = HealthState()
    ups = []
    for result in results:
        state = state.observe(result == "+", rise, fall)
        ups.append(state.up)
    return ups


def test_anUncheckedServerIsTrustedAndItsFirstCheckDecides() -> None:
    assert HealthState().up
    assert run("-") == [False]
    assert run("+") == [True]


def test_fallFailuresInARowTakeAServerDown() -> None:
    assert run("+---") == [True, True, True, False]
    assert run("+--+--") == [True] * 6  # a pass starts the count over


def test_risePassesInARowBringItBack() -> None:
    assert run("-++") == [False, False, True]
    assert run("-+-++") == [False, False, False, False, True]
    assert run("-+++", rise=3) == [False, False, False, True]


def test_riseAndFallOfOneFollowEachResult() -> None:
    assert run("+-+-", rise=1, fall=1) == [True, False, True, False]


def reference(results: list[bool], rise: int, fall: int) -> list[bool]:
    """HAProxy's rule, written as plainly as possible: a run counter."""
    up: bool | None = None
    run = 0
    ups = []
    for passed in results:
        if up is None:
            up = passed
        elif passed != up:
            run += 1
            if run >= (rise if passed else fall):
                up, run = passed, 0
        else:
            run = 0
        ups.append(up)
    return ups


@given(
    results=st.lists(st.booleans(), max_size=40),
    rise=st.integers(min_value=1, max_value=5),
    fall=st.integers(min_value=1, max_value=5),
)
def test_theTableIsTheRunCountingRule(
    results: list[bool], rise: int, fall: int
) -> None:
    state = HealthState()
    ups = []
    for passed in results:
        state = state.observe(passed, rise, fall)
        ups.append(state.up)
    assert ups == reference(results, rise, fall)


def test_probesAreBounded() -> None:
    assert probeTimeout(1.0) == 1.0
    assert probeTimeout(60.0) == MAX_PROBE_TIME


# -- the checker ---------------------------------------------------------------

A = ServerConfig("192.0.2.1", 443)
NAMED = ServerConfig("app.example", 8443)


def pool(*servers: ServerConfig, clock: MemoryReactorClock, **keys: object) -> Pool:
    settings: dict[str, object] = {
        "health_check": "tcp",
        "health_interval": 5.0,
        **keys,
    }
    return Pool(UpstreamConfig("app", servers, **settings), clock)  # type: ignore[arg-type]


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = pool(A, NAMED, clock=self.reactor)
        self.checker = HealthChecker(self.pool, self.reactor)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.checker.start()
        self.addCleanup(self.checker.stop)

    def probes(self) -> list[tuple[str, int, ClientFactory, float]]:
        return [(h, p, f, t) for h, p, f, t, _ in self.reactor.tcpClients]

    def refuse(self, index: int) -> None:
        _, _, factory, _ = self.probes()[index]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]

    def accept(self, index: int) -> StringTransportWithDisconnection:
        _, _, factory, _ = self.probes()[index]
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def up(self) -> dict[str, bool]:
        return self.pool.serverStates()

    def test_everyServerIsProbedAtStartWithABoundedTimeout(self) -> None:
        self.assertEqual(
            [(h, p, t) for h, p, _, t in self.probes()],
            [("192.0.2.1", 443, 5.0), ("app.example", 8443, 5.0)],
        )

    def test_aRefusedServerIsDownAndLogged(self) -> None:
        self.refuse(0)
        self.assertEqual(self.up(), {"192.0.2.1:443": False, "app.example:8443": True})
        self.assertIsNone(self.pool.pick("x", frozenset({NAMED})))
        [event] = [e for e in self.log if "is down" in e["log_format"]]
        self.assertEqual((event["upstream"], event["server"]), ("app", "192.0.2.1:443"))
        self.assertIn("refused", event["why"])

    def test_aLocalResourceErrorIsNoVerdict(self) -> None:
        """
        A probe whose socket cannot be made (EMFILE: the gateway's
        descriptors ran out) says nothing about the server.
        """
        _, _, factory, _ = self.probes()[0]
        error = ConnectBindError(errno.EMFILE, "Too many open files")
        factory.clientConnectionFailed(None, Failure(error))  # type: ignore[arg-type]
        self.assertEqual(self.up(), {"192.0.2.1:443": True, "app.example:8443": True})
        self.assertNotIn(self.pool.members()[0], self.checker.states)
        self.reactor.advance(5)
        self.assertEqual(len(self.probes()), 4)  # probed again next round

    def test_aTcpCheckPassesOnConnectAndCloses(self) -> None:
        transport = self.accept(0)
        self.assertFalse(transport.connected)
        self.assertEqual(self.checker.states[self.pool.members()[0]].state, Health.UP)

    def test_downThenUpAfterRisePasses(self) -> None:
        self.refuse(0)
        self.reactor.advance(5)
        self.assertEqual(len(self.probes()), 4)  # one more round, both servers
        self.accept(2)
        self.assertFalse(self.up()["192.0.2.1:443"])  # rise = 2
        self.reactor.advance(5)
        self.accept(4)
        self.assertTrue(self.up()["192.0.2.1:443"])
        [event] = [e for e in self.log if "is up" in e["log_format"]]
        self.assertEqual(event["server"], "192.0.2.1:443")

    def test_fallFailuresTakeAnUpServerDown(self) -> None:
        self.accept(0)
        for round in range(1, 4):
            self.reactor.advance(5)
            self.refuse(2 * round)
            self.assertEqual(self.up()["192.0.2.1:443"], round < 3)

    def test_aDownServerKeepsItsLastErrorAndSinceWhen(self) -> None:
        """
        The status page's cause and "since": the last failed check's
        error, and the clock's time the server went down; both cleared
        when it comes back.
        """
        member = self.pool.members()[0]
        self.accept(0)
        self.assertEqual((member.checkError, member.downSince), (None, None))
        for round in range(1, 4):
            self.reactor.advance(5)
            self.refuse(2 * round)
        self.assertIn("refused", member.checkError or "")
        self.assertEqual(member.downSince, 15)
        self.reactor.advance(5)
        self.refuse(8)
        self.assertEqual(member.downSince, 15)  # down since the fall, not later
        for round in range(5, 7):
            self.reactor.advance(5)
            self.accept(2 * round)
        self.assertTrue(member.healthy)
        self.assertEqual((member.checkError, member.downSince), (None, None))

    def test_aSilentServerFailsAtTheTimeout(self) -> None:
        _, _, factory, _ = self.probes()[0]
        connector = self.reactor.connectors[0]
        self.reactor.advance(4.9)
        self.assertTrue(self.up()["192.0.2.1:443"])
        self.reactor.advance(0.1)
        self.assertFalse(self.up()["192.0.2.1:443"])
        self.assertTrue(connector.stoppedConnecting)
        # The stopped connect then fails, too late to count twice.
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(self.checker.states[self.pool.members()[0]].state, Health.DOWN)

    def test_aServerIsNotProbedTwiceAtOnce(self) -> None:
        self.accept(1)
        self.reactor.advance(5)  # server 0's probe times out, then the round
        self.assertEqual(
            [h for h, _, _, _ in self.probes()],
            ["192.0.2.1", "app.example", "192.0.2.1", "app.example"],
        )

    def test_stopLeavesNothingBehind(self) -> None:
        self.accept(1)
        self.reactor.advance(5)
        self.accept(3)
        self.assertTrue(self.reactor.getDelayedCalls())
        self.checker.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(self.reactor.connectors[2].stoppedConnecting)
        # A cancelled probe gives no verdict.
        before = dict(self.checker.states)
        self.refuse(2)
        self.assertEqual(self.checker.states, before)
        self.reactor.advance(60)
        self.assertEqual(len(self.probes()), 4)


# -- TLS checks ----------------------------------------------------------------


def pump(
    client: StringTransportWithDisconnection,
    server: SSL.Connection | None,
    deliver: Callable[[bytes], None],
    garbage: bytes = b"",
) -> None:
    """Move bytes between the probe's transport and a memory TLS server."""
    for _ in range(10):
        data = client.value()
        client.clear()
        if server is None:
            if data:
                deliver(garbage)
            return
        if data:
            server.bio_write(data)
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
        try:
            answer = server.bio_read(65536)
        except SSL.WantReadError:
            answer = b""
        if answer:
            deliver(answer)
        elif not data:
            return


class TLSCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def startChecks(self, server: ServerConfig, **keys: object) -> HealthChecker:
        checker = HealthChecker(
            pool(server, clock=self.reactor, health_check="tls", **keys),
            self.reactor,
        )
        checker.start()
        self.addCleanup(checker.stop)
        return checker

    def connect(self) -> tuple[StringTransportWithDisconnection, IProtocol]:
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport, protocol

    def serverFor(self, context: SSL.Context) -> tuple[SSL.Connection, list[bytes]]:
        names: list[bytes] = []
        context.set_tlsext_servername_callback(
            lambda connection: names.append(connection.get_servername() or b"")
        )
        connection = SSL.Connection(context, None)
        connection.set_accept_state()
        return connection, names

    def test_aCompletedHandshakePassesWithTheConfiguredName(self) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        trustme.CA().issue_cert("app.example").configure_cert(context)
        server, names = self.serverFor(context)
        checker = self.startChecks(NAMED)
        transport, protocol = self.connect()
        pump(transport, server, protocol.dataReceived)
        [member] = checker.states
        self.assertEqual(checker.states[member].state, Health.UP)
        self.assertEqual(names, [b"app.example"])
        self.assertFalse(transport.connected)

    def test_tlsServerNameIsSentInsteadWhenSet(self) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        trustme.CA().issue_cert("x.example").configure_cert(context)
        server, names = self.serverFor(context)
        self.startChecks(A, tls_server_name="x.example")
        transport, protocol = self.connect()
        pump(transport, server, protocol.dataReceived)
        self.assertEqual(names, [b"x.example"])

    def test_aServerThatAnswersGarbageIsDown(self) -> None:
        checker = self.startChecks(A)
        transport, protocol = self.connect()
        pump(transport, None, protocol.dataReceived, b"HTTP/1.1 400 Bad\r\n\r\n")
        [member] = checker.states
        self.assertEqual(checker.states[member].state, Health.DOWN)
        [event] = [e for e in self.log if "is down" in e["log_format"]]
        self.assertIn("TLS", event["why"])

    def test_stopAbortsAHandshakeInFlight(self) -> None:
        checker = self.startChecks(A)
        transport, _ = self.connect()
        self.assertTrue(transport.value())  # the ClientHello, unanswered
        checker.stop()
        self.assertFalse(transport.connected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(checker.states, {})

    def test_aServerThatClosesAfterAcceptingIsDown(self) -> None:
        checker = self.startChecks(A)
        _, protocol = self.connect()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        [member] = checker.states
        self.assertFalse(checker.states[member].up)


# -- with the service ------------------------------------------------------------


class ServiceLifecycleTests(SynchronousTestCase):
    """
    The checks start with the service and stop with it: nothing is left on
    the reactor after C{stopService}.
    """

    def test_checksStartAndStopWithTheService(self) -> None:
        config = load_config_text(
            "[gateway]\naccess_log = off\n"
            "[listener:web]\nlisten = tcp:0:interface=127.0.0.1\nupstream = app\n"
            "[upstream:app]\nservers =\n    192.0.2.1:443\n    192.0.2.2:443\n"
            "health_check = tcp\nhealth_interval = 2s\n"
            "[upstream:plain]\nservers = 192.0.2.3:443\n",
            checkFiles=False,
        )
        reactor = MemoryReactorClock()
        service = GatewayService(config, reactor)
        service.startService()
        self.assertEqual(
            [(h, p) for h, p, *_ in reactor.tcpClients],
            [("192.0.2.1", 443), ("192.0.2.2", 443)],
        )
        self.assertEqual(
            service.pools["app"].serverStates(),
            {"192.0.2.1:443": True, "192.0.2.2:443": True},
        )
        reactor.advance(2)
        self.assertEqual(len(reactor.tcpClients), 4)
        self.successResultOf(service.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertTrue(all(c.stoppedConnecting for c in reactor.connectors))
        reactor.advance(10)
        self.assertEqual(len(reactor.tcpClients), 4)
