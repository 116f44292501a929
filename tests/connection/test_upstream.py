"""
Pools: balancing through the pool, passive failure accounting, backups,
active-connection counts, host name resolution; and a L{Session} telling
its pool exactly when each attempt ends.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectionDone,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
)
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.config import ServerConfig, UpstreamConfig
from gateway.connection.session import Session, Timeouts, UpstreamRuntime
from gateway.connection.upstream import (
    ConfiguredNames,
    FirstServer,
    IServerChooser,
    Pool,
    localError,
)
from gateway.core.balancers import BALANCERS
from gateway.rules.accesslog import ConnectionRecord
from tests.transports import HalfCloseableTransport, TableOwner


def server(host: str, port: int = 443, **flags: object) -> ServerConfig:
    return ServerConfig(host, port, **flags)  # type: ignore[arg-type]


def upstream(*servers: ServerConfig, **keys: object) -> UpstreamConfig:
    return UpstreamConfig("app", servers, **keys)  # type: ignore[arg-type]


A = server("192.0.2.1")
B = server("192.0.2.2")
C = server("192.0.2.3")


def pickMany(pool: Pool, count: int, clientKey: str = "198.51.100.1") -> list[str]:
    """Pick and release at once: short connections, one after another."""
    chosen = []
    for _ in range(count):
        picked = pool.pick(clientKey, frozenset())
        assert picked is not None
        pool.connectSucceeded(picked)
        pool.released(picked)
        chosen.append(picked.address)
    return chosen


class ChooserTests(SynchronousTestCase):
    def test_bothChoosersProvideTheInterface(self) -> None:
        config = upstream(A, B)
        self.assertTrue(verifyObject(IServerChooser, FirstServer(config)))
        self.assertTrue(verifyObject(IServerChooser, Pool(config, Clock())))

    def test_firstServerSkipsOnlyWhatWasTried(self) -> None:
        chooser = FirstServer(upstream(A, B))
        self.assertEqual(chooser.pick("x", frozenset()), A)
        self.assertEqual(chooser.pick("x", frozenset({A})), B)
        self.assertIsNone(chooser.pick("x", frozenset({A, B})))
        chooser.released(A)


class BalancingTests(SynchronousTestCase):
    def test_roundRobinIsWeighted(self) -> None:
        pool = Pool(upstream(server("192.0.2.1", weight=5), B, C), Clock())
        self.assertEqual(
            pickMany(pool, 7),
            [A.address] * 2 + [B.address, A.address, C.address] + [A.address] * 2,
        )

    def test_excludedServersAreNotPicked(self) -> None:
        pool = Pool(upstream(A, B, C), Clock())
        for _ in range(5):
            self.assertEqual(pool.pick("x", frozenset({A, C})), B)
        self.assertIsNone(pool.pick("x", frozenset({A, B, C})))

    def test_leastConnCountsOpenConnections(self) -> None:
        pool = Pool(upstream(A, B, C, balance="least_conn"), Clock())
        held = [pool.pick("x", frozenset()) for _ in range(3)]
        self.assertEqual(held, [A, B, C])
        # A's connection ends; B's and C's stay: A takes the next one.
        assert held[0] is not None
        pool.released(held[0])
        self.assertEqual(pool.pick("x", frozenset()), A)
        self.assertEqual([m.active for m in pool.members()], [1, 1, 1])
        pool.connectFailed(A)  # an attempt also ends with a failure
        self.assertEqual([m.active for m in pool.members()], [0, 1, 1])

    def test_hashKeepsClientsAndFailsOverOnTheRing(self) -> None:
        pool = Pool(upstream(A, B, C, balance="hash"), Clock())
        clients = [f"203.0.113.{i}" for i in range(60)]
        first = {c: pool.pick(c, frozenset()) for c in clients}
        self.assertEqual({c: pool.pick(c, frozenset()) for c in clients}, first)
        self.assertEqual(len(set(first.values())), 3)
        for client, chosen in first.items():
            assert chosen is not None
            other = pool.pick(client, frozenset({chosen}))
            self.assertNotIn(other, (None, chosen))

    def test_randomSpreadsAnIdlePool(self) -> None:
        pool = Pool(upstream(A, B, balance="random"), Clock())
        counts = Counter(pickMany(pool, 400))
        self.assertEqual(set(counts), {A.address, B.address})


class BackupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backup = server("192.0.2.9", backup=True)
        self.pool = Pool(upstream(A, B, self.backup), Clock())

    def test_backupIsIdleWhilePrimariesAreUsable(self) -> None:
        self.assertNotIn(self.backup.address, pickMany(self.pool, 10))

    def test_backupTakesOverWhenEveryPrimaryWasTried(self) -> None:
        self.assertEqual(self.pool.pick("x", frozenset({A, B})), self.backup)

    def test_backupTakesOverWhenEveryPrimaryIsDown(self) -> None:
        a, b, _ = self.pool.members()
        self.pool.setHealthy(a, False)
        self.assertEqual(set(pickMany(self.pool, 4)), {B.address})
        self.pool.setHealthy(b, False)
        self.assertEqual(set(pickMany(self.pool, 4)), {self.backup.address})
        self.assertEqual(
            self.pool.serverStates(),
            {A.address: False, B.address: False, self.backup.address: True},
        )
        self.pool.setHealthy(a, True)
        self.assertEqual(set(pickMany(self.pool, 4)), {A.address})

    def test_nothingUsableMeansNone(self) -> None:
        for member in self.pool.members():
            self.pool.setHealthy(member, False)
        self.assertIsNone(self.pool.pick("x", frozenset()))


@given(
    balance=st.sampled_from(sorted(BALANCERS)),
    backup=st.booleans(),
    healthy=st.booleans(),
    tried=st.booleans(),
)
def test_aOneServerPoolPicksItWhenHealthyAndNotTried(
    balance: str, backup: bool, healthy: bool, tried: bool
) -> None:
    """
    A pool of one server (the common case, which C{pick} answers without
    the balancer) picks it exactly when it is healthy and not yet tried,
    whatever the policy and its backup flag, and counts it active.
    """
    only = server("192.0.2.1", backup=backup)
    pool = Pool(upstream(only, balance=balance), Clock())
    (member,) = pool.members()
    pool.setHealthy(member, healthy)
    picked = pool.pick("198.51.100.1", frozenset({only}) if tried else frozenset())
    assert picked == (only if healthy and not tried else None)
    assert member.active == (1 if picked else 0)


class PassiveFailureTests(SynchronousTestCase):
    """
    C{max_fails} failed connects within C{fail_timeout} take a server out
    for C{fail_timeout}; NGINX's semantics, on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.flaky = server("192.0.2.1", max_fails=2, fail_timeout=10.0)
        self.pool = Pool(upstream(self.flaky, B), self.clock)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def failOnce(self) -> None:
        self.pool.pick("x", frozenset({B}))
        self.pool.connectFailed(self.flaky)

    def usable(self) -> bool:
        return self.pool.serverStates()[self.flaky.address]

    def test_maxFailsWithinFailTimeoutTakeTheServerOut(self) -> None:
        self.failOnce()
        self.assertTrue(self.usable())
        self.clock.advance(9)
        self.failOnce()
        self.assertFalse(self.usable())
        self.assertEqual(set(pickMany(self.pool, 4)), {B.address})
        self.assertIsNone(self.pool.pick("x", frozenset({B})))
        self.clock.advance(9.9)
        self.assertFalse(self.usable())
        self.clock.advance(0.1)
        self.assertTrue(self.usable())
        self.assertIn(self.flaky.address, pickMany(self.pool, 2))
        messages = [e["log_format"] for e in self.log]
        self.assertEqual(len([m for m in messages if "unavailable for" in m]), 1)
        self.assertEqual(self.log[0]["server"], self.flaky.address)
        self.assertEqual(self.log[0]["upstream"], "app")

    def test_failuresFurtherApartThanFailTimeoutDoNotAddUp(self) -> None:
        self.failOnce()
        self.clock.advance(10.5)
        self.failOnce()
        self.assertTrue(self.usable())
        self.clock.advance(1)
        self.failOnce()
        self.assertFalse(self.usable())

    def test_aServerBackFromFailTimeoutIsOnProbation(self) -> None:
        """
        Until it succeeds once, one failure takes it out again: a dead
        server costs one attempt per fail_timeout, not max_fails.
        """
        self.failOnce()
        self.failOnce()
        self.clock.advance(10)
        self.assertTrue(self.usable())
        self.failOnce()
        self.assertFalse(self.usable())

    def test_aSuccessForgetsTheFailures(self) -> None:
        self.failOnce()
        self.failOnce()
        self.clock.advance(10)
        picked = self.pool.pick("x", frozenset({B}))
        self.assertEqual(picked, self.flaky)
        self.pool.connectSucceeded(self.flaky)
        self.assertIn("available again", self.log[-1]["log_format"])
        self.failOnce()
        self.assertTrue(self.usable())

    def test_maxFailsZeroDisablesTheAccounting(self) -> None:
        pool = Pool(upstream(server("192.0.2.1", max_fails=0), B), self.clock)
        for _ in range(20):
            pool.connectFailed(server("192.0.2.1", max_fails=0))
        self.assertTrue(all(pool.serverStates().values()))

    def test_aSingleServerIsNeverTakenOut(self) -> None:
        """As in NGINX: with nothing to fail over to, it would only hurt."""
        pool = Pool(upstream(self.flaky), self.clock)
        for _ in range(5):
            self.assertEqual(pool.pick("x", frozenset()), self.flaky)
            pool.connectFailed(self.flaky)
        self.assertEqual(pool.serverStates(), {self.flaky.address: True})

    def test_unknownServersAreIgnored(self) -> None:
        stranger = server("192.0.2.77")
        self.pool.connectFailed(stranger)
        self.pool.connectSucceeded(stranger)
        self.pool.released(stranger)


@implementer(IHostResolution)
@attrs.define
class _Resolution:
    name: str

    def cancel(self) -> None:
        raise NotImplementedError


@implementer(IHostnameResolver)
class FakeResolver:
    """An C{IHostnameResolver} that answers when the test says so."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, IResolutionReceiver]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        self.asked.append((hostName, portNumber, resolutionReceiver))
        return resolution

    def answer(self, index: int, *addresses: IAddress) -> None:
        receiver = self.asked[index][2]
        for address in addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()


class ResolutionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.named = server("app.example", 8443, weight=3, max_fails=2)
        self.unix = ServerConfig(None, None, "/run/app.sock")
        self.pool = Pool(upstream(A, self.named, self.unix), Clock())
        self.resolver = FakeResolver()
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def test_onlyNamesAreResolved(self) -> None:
        self.pool.resolve(self.resolver)
        self.assertEqual(
            [(n, p) for n, p, _ in self.resolver.asked], [("app.example", 8443)]
        )

    def test_everyAddressBecomesAServerWithTheLinesFlags(self) -> None:
        done = self.pool.resolve(self.resolver)
        # Until the answer, the name itself is the server.
        self.assertEqual(
            [m.server for m in self.pool.members()], [A, self.named, self.unix]
        )
        self.resolver.answer(
            0,
            IPv4Address("TCP", "10.0.0.1", 8443),
            IPv6Address("TCP", "2001:db8::1", 8443),
            IPv4Address("TCP", "10.0.0.1", 8443),
        )
        self.successResultOf(done)
        v4 = attrs.evolve(self.named, host="10.0.0.1")
        v6 = attrs.evolve(self.named, host="2001:db8::1")
        self.assertEqual(
            [m.server for m in self.pool.members()], [A, v4, v6, self.unix]
        )
        self.assertEqual(
            list(self.pool.serverStates()),
            [A.address, "10.0.0.1:8443", "[2001:db8::1]:8443", "unix:/run/app.sock"],
        )
        self.assertEqual(self.pool.configured(v6), self.named)
        self.assertEqual(self.pool.configured(A), A)
        self.assertEqual(self.log[-1]["addresses"], "10.0.0.1:8443, [2001:db8::1]:8443")

    def test_aNameWithoutAddressesStaysAName(self) -> None:
        self.pool.resolve(self.resolver)
        self.resolver.answer(0)
        self.assertIn(self.named, [m.server for m in self.pool.members()])
        self.assertIn("cannot resolve", self.log[-1]["log_format"])

    def test_lateAnswersAfterStopAreIgnored(self) -> None:
        self.pool.resolve(self.resolver)
        self.pool.stop()
        self.resolver.answer(0, IPv4Address("TCP", "10.0.0.1", 8443))
        self.assertIn(self.named, [m.server for m in self.pool.members()])

    def test_reportsForTheNameStillCount(self) -> None:
        """A connection that picked the name before the answer ends well."""
        pool = Pool(upstream(self.named), Clock())
        self.assertEqual(pool.pick("x", frozenset()), self.named)
        pool.resolve(self.resolver)
        self.resolver.answer(0, IPv4Address("TCP", "10.0.0.1", 8443))
        pool.released(self.named)
        self.assertEqual(pool.members()[0].server.host, "10.0.0.1")

    def test_tlsUsesTheConfiguredName(self) -> None:
        seen: list[ServerConfig] = []

        class Policy:
            def connectionFor(self, server: ServerConfig) -> object:
                seen.append(server)
                return object()

            def verify(self, connection: object, server: ServerConfig) -> None:
                seen.append(server)

        self.pool.resolve(self.resolver)
        self.resolver.answer(0, IPv4Address("TCP", "10.0.0.1", 8443))
        tls = ConfiguredNames(Policy(), self.pool)  # type: ignore[arg-type]
        resolved = attrs.evolve(self.named, host="10.0.0.1")
        tls.verify(tls.connectionFor(resolved), resolved)
        tls.connectionFor(A)
        self.assertEqual(seen, [self.named, self.named, A])


class SessionAccountingTests(SynchronousTestCase):
    """
    A session ends every attempt it picked exactly once: with
    C{connectFailed}, or with C{released} when it is over.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = Pool(upstream(A, B, balance="least_conn"), self.reactor)
        self.client = HalfCloseableTransport()
        self.client.protocol = Protocol()
        self.record = ConnectionRecord(
            listener="web", client="198.51.100.1:5000", accepted=0.0, started=0.0
        )
        self.owner = TableOwner(self.record)
        self.addCleanup(lambda: self.assertEqual(self.owner.refused, []))
        self.session = Session(
            self.reactor,
            self.reactor,
            self.client,
            self.record,
            self.owner,
            UpstreamRuntime("app", self.pool, 3),
            "198.51.100.1",
            Timeouts(connect=5.0, idle=60.0),
            clientBytes=self.owner.clientBytes,
        )

    def active(self) -> list[int]:
        return [m.active for m in self.pool.members()]

    def test_failoverThenRelayThenRelease(self) -> None:
        self.session.connect(b"hello")
        self.assertEqual(self.active(), [1, 0])
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("192.0.2.1", 443))
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(self.active(), [0, 1])
        self.assertEqual(self.pool.members()[0].fails, 1)
        host, _, factory, _, _ = self.reactor.tcpClients[1]
        self.assertEqual(host, "192.0.2.2")
        upstreamTransport = HalfCloseableTransport()
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        upstreamTransport.protocol = protocol
        protocol.makeConnection(upstreamTransport)
        self.assertEqual(upstreamTransport.value(), b"hello")
        self.assertEqual(self.active(), [0, 1])
        self.assertEqual(self.owner.ends, 0)
        # The client resets: the relay resets the upstream, and both are over.
        self.session.clientLost(Failure(ConnectionRefusedError()))
        self.assertTrue(upstreamTransport.aborted)
        self.assertEqual(self.owner.ends, 1)
        self.assertEqual(self.active(), [0, 0])

    def test_aClientThatLeavesWhileConnectingReleasesItsServer(self) -> None:
        self.session.connect(b"hello")
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        self.session.clientLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.active(), [1, 0])
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(self.owner.ends, 1)
        self.assertEqual(self.active(), [0, 0])
        # Not the server's fault: no failure counted.
        self.assertEqual(self.pool.members()[0].fails, 0)

    def test_aLocalResourceErrorCountsAgainstNoServer(self) -> None:
        """
        The upstream socket cannot be made (EMFILE): the server is released,
        not failed, no other server is tried, and the connection is
        C{upstream_unavailable} naming the error; the client's close ends it.
        """
        self.session.connect(b"hello")
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(
            self.reactor.connectors[0],
            Failure(ConnectBindError(errno.EMFILE, "Too many open files")),
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual([m.fails for m in self.pool.members()], [0, 0])
        self.assertEqual(self.record.status, "upstream_unavailable")
        assert self.record.reason is not None
        self.assertIn("local resource error: EMFILE", self.record.reason)
        self.assertFalse(self.client.connected)
        self.assertEqual(self.owner.ends, 0)
        self.session.clientLost(Failure(ConnectionDone()))
        self.assertEqual(self.owner.ends, 1)
        self.assertEqual(self.active(), [0, 0])

    def test_noServerLeftReleasesNothing(self) -> None:
        for member in self.pool.members():
            self.pool.setHealthy(member, False)
        self.session.connect(b"hello")
        self.assertEqual(self.record.status, "upstream_unavailable")
        self.assertEqual(self.active(), [0, 0])


def test_pickAfterResolutionUsesAddresses() -> None:
    pool = Pool(upstream(server("app.example", 443)), Clock())
    resolver = FakeResolver()
    pool.resolve(resolver)
    resolver.answer(
        0, IPv4Address("TCP", "10.0.0.1", 443), IPv4Address("TCP", "10.0.0.2", 443)
    )
    assert set(pickMany(pool, 4)) == {"10.0.0.1:443", "10.0.0.2:443"}
    # Two addresses: no longer a single server, so failures count.
    pool.connectFailed(attrs.evolve(pool.members()[0].server))
    assert pool.serverStates() == {"10.0.0.1:443": False, "10.0.0.2:443": True}


@pytest.mark.parametrize(
    ("failure", "local"),
    [
        (ConnectBindError(errno.EMFILE, "Too many open files"), "EMFILE"),
        (ConnectBindError(errno.ENFILE, "Too many open files in system"), "ENFILE"),
        (ConnectError(errno.ENOBUFS, "No buffer space available"), "ENOBUFS"),
        (OSError(errno.EMFILE, "Too many open files"), "EMFILE"),
        (ConnectionRefusedError(), None),
        (ConnectError(errno.ECONNREFUSED, "refused"), None),
        (ValueError("no errno"), None),
    ],
)
def test_localErrorsAreTheGatewaysOwn(failure: Exception, local: str | None) -> None:
    """
    Out of descriptors or buffers: the gateway's fault, never the
    server's (the session and the health checks do not count it).
    """
    found = localError(Failure(failure))
    if local is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(f"local resource error: {local} (")
