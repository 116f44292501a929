"""
Embedding: L{GatewayService} as one service among others, on an injected
reactor, with its configuration built in code from the attrs classes.

Everything runs on a L{MemoryReactorClock}: the listening port is a record
in C{reactor.tcpServers}, a connection is a protocol built from the
listener's factory over an in-memory transport, and the upstream connect is
a record in C{reactor.tcpClients}.  What an embedding application relies on
is checked here: the package's public names, that a configuration built in
code is the one an INI file gives, that the service listens where it says
and that stopping it leaves nothing behind (no port, no pending timer) so
the application can go on running or stop its reactor.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import gateway
from gateway.config import (
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
)
from gateway.core.routing import normalizePattern
from gateway.run.generation import StartupError
from gateway.run.loading import load_config
from gateway.run.service import GatewayService
from gateway.testing import makeClientHello
from tests.transports import HalfCloseableTransport

HELLO = makeClientHello("app.example.test")
CLIENT = IPv4Address("TCP", "192.0.2.7", 50000)
DRAIN = 5.0


@implementer(IListeningPort)
class RecordingPort:
    """
    A listening port that remembers whether it was closed (the
    L{MemoryReactor}'s own port forgets).
    """

    def __init__(self, host: IPv4Address) -> None:
        self.host = host
        self.listening = True

    def startListening(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> IPv4Address:
        return self.host


class RecordingReactor(MemoryReactorClock):
    """
    @ivar ports: every port opened, in order.
    @ivar refuse: ports whose C{listenTCP} fails, as a port in use does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[RecordingPort] = []
        self.refuse: set[int] = set()

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> RecordingPort:
        if port in self.refuse:
            raise CannotListenError(interface, port, OSError(98, "Address in use"))
        fake = super().listenTCP(port, factory, backlog, interface)
        recording = RecordingPort(fake.getHost())
        self.ports.append(recording)
        return recording


def buildConfig(accessLog: str, *listen: str) -> GatewayConfig:
    """
    A passthrough gateway built in code: one listener, a routing table
    with an exact name and a default, two upstreams.
    """
    return GatewayConfig(
        path="<in code>",
        gateway=GatewaySettings(
            access_log=accessLog, access_log_format="json", drain_timeout=DRAIN
        ),
        listeners=(
            ListenerConfig(
                name="web",
                listen=listen or ("tcp:8443:interface=127.0.0.1",),
                routes=(
                    # RouteConfig takes patterns as load_config leaves them.
                    RouteConfig(normalizePattern("App.Example.Test"), "app"),
                    RouteConfig("default", "fallback"),
                ),
            ),
        ),
        upstreams={
            "app": UpstreamConfig(
                name="app", servers=(ServerConfig(host="192.0.2.10", port=443),)
            ),
            "fallback": UpstreamConfig(
                name="fallback",
                servers=(ServerConfig(host="192.0.2.11", port=443),),
            ),
        },
    )


INI = """\
[gateway]
access_log = {accessLog}
access_log_format = json
drain_timeout = 5s

[listener:web]
listen = tcp:8443:interface=127.0.0.1
routes =
    App.Example.Test app
    default fallback

[upstream:app]
servers = 192.0.2.10:443

[upstream:fallback]
servers = 192.0.2.11:443
"""


def test_packageExportsTheEmbeddingNames() -> None:
    """
    C{from gateway import GatewayService, load_config}, as the contract's
    embedding example writes it.
    """
    assert gateway.GatewayService is GatewayService
    assert gateway.load_config is load_config
    assert {"GatewayService", "load_config", "ConfigError"} <= set(gateway.__all__)


def test_configBuiltInCodeIsTheOneTheIniFileGives(tmp_path: Path) -> None:
    """
    The attrs classes built in code make the same model as the INI file
    with the same settings: only the file's path (and the line numbers,
    which take no part in equality) differ.
    """
    accessLog = str(tmp_path / "access.log")
    path = tmp_path / "gateway.ini"
    path.write_text(INI.format(accessLog=accessLog))
    loaded = load_config(path)
    assert buildConfig(accessLog) == attrs.evolve(loaded, path="<in code>")


class EmbeddedServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = RecordingReactor()
        # Not self.mktemp(): that is relative to the working directory,
        # which pytest leaves at the top of the checkout.
        folder = Path(tempfile.mkdtemp(prefix="tlsgateway-embedding-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        self.accessLog = folder / "access.log"
        self.service = GatewayService(
            buildConfig(str(self.accessLog)), reactor=self.reactor
        )
        self.ticks: list[float] = []
        timer = TimerService(60, lambda: self.ticks.append(self.reactor.seconds()))
        timer.clock = self.reactor
        self.application = MultiService()
        self.service.setServiceParent(self.application)
        timer.setServiceParent(self.application)

    def start(self) -> None:
        self.application.startService()
        self.addCleanup(self._stopIfRunning)

    def _stopIfRunning(self) -> None:
        if self.application.running:
            self.application.stopService()

    def accessLogEntries(self) -> list[dict[str, Any]]:
        if not self.accessLog.exists():
            return []
        return [json.loads(line) for line in self.accessLog.read_text().splitlines()]

    def connect(self) -> tuple[HalfCloseableTransport, HalfCloseableTransport]:
        """
        Accept a client that sends a ClientHello for app.example.test and
        complete the upstream connect it causes.

        @return: the client's and the upstream's transports.
        """
        (_, factory, _, _) = self.reactor.tcpServers[-1]
        client = HalfCloseableTransport(peerAddress=CLIENT)
        protocol = factory.buildProtocol(CLIENT)
        assert protocol is not None
        client.protocol = protocol
        protocol.makeConnection(client)
        protocol.dataReceived(HELLO)
        host, port, connectFactory, timeout, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout), ("192.0.2.10", 443, 10.0))
        upstreamProtocol = connectFactory.buildProtocol(None)
        assert isinstance(upstreamProtocol, Protocol)
        upstream = HalfCloseableTransport()
        upstream.protocol = upstreamProtocol
        upstreamProtocol.makeConnection(upstream)
        return client, upstream

    def test_listensNextToTheOtherService(self) -> None:
        """
        Started as a child of the application's L{MultiService}, the
        gateway listens where its configuration says, and the sibling
        service runs too.
        """
        self.start()
        self.assertTrue(self.service.running)
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        self.assertIs(factory, self.service.factories["web"])
        self.assertEqual([p.listening for p in self.reactor.ports], [True])
        self.assertEqual(self.ticks, [0.0])

    def test_stopClosesThePortAndLeavesNoTimer(self) -> None:
        """
        Stopping the application stops the gateway at once when no
        connection is open: the port is closed and no delayed call is
        left on the reactor.
        """
        self.start()
        self.successResultOf(self.application.stopService())
        self.assertFalse(self.service.running)
        self.assertEqual([p.listening for p in self.reactor.ports], [False])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopEndsTheHealthChecksToo(self) -> None:
        """
        Active health checks are timers and connects of the gateway's own:
        a stop leaves none of them behind either.
        """
        config = buildConfig(str(self.accessLog))
        checked = {
            name: attrs.evolve(upstream, health_check="tcp", health_interval=5.0)
            for name, upstream in config.upstreams.items()
        }
        service = GatewayService(
            attrs.evolve(config, upstreams=checked), reactor=self.reactor
        )
        service.startService()
        self.reactor.advance(12)
        self.successResultOf(service.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(all(c.stoppedConnecting for c in self.reactor.connectors))

    def test_startsAgainAfterAStop(self) -> None:
        """
        An application may stop and start its services again (a
        L{MultiService} does not forbid it): the gateway listens anew and
        serves connections.
        """
        self.start()
        self.successResultOf(self.application.stopService())
        self.application.startService()
        self.assertEqual([p.listening for p in self.reactor.ports], [False, True])
        _, upstream = self.connect()
        self.assertEqual(upstream.value(), HELLO)

    def test_connectionIsRelayedToTheRoutedUpstream(self) -> None:
        """
        A connection accepted by the embedded service is routed by its
        server name, the ClientHello reaches the upstream unchanged, and
        bytes flow both ways.
        """
        self.start()
        client, upstream = self.connect()
        self.assertEqual(upstream.value(), HELLO)
        upstream.protocol.dataReceived(b"server flight")
        self.assertEqual(client.value(), b"server flight")
        client.protocol.dataReceived(b"client finished")
        self.assertEqual(upstream.value(), HELLO + b"client finished")

    def test_stopWaitsForTheConnectionToFinish(self) -> None:
        """
        Stopping with a connection open closes the port at once, then
        waits: the connection ends normally (both sides half-close), the
        stop completes, the access log has its line, and no timer is
        left.
        """
        self.start()
        client, upstream = self.connect()
        stopped = self.application.stopService()
        self.assertEqual([p.listening for p in self.reactor.ports], [False])
        self.assertNoResult(stopped)
        self.reactor.advance(DRAIN / 2)
        for side in (client, upstream):
            assert IHalfCloseableProtocol.providedBy(side.protocol)
            cast(IHalfCloseableProtocol, side.protocol).readConnectionLost()
        self.successResultOf(stopped)
        [entry] = self.accessLogEntries()
        self.assertEqual(
            (entry["status"], entry["sni"], entry["upstream"]),
            ("ok", "app.example.test", "192.0.2.10:443"),
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopCutsWhatIsLeftAtTheDrainDeadline(self) -> None:
        """
        A connection still open at C{drain_timeout} is cut and logged as
        C{shutdown}; the stop then completes.
        """
        self.start()
        client, upstream = self.connect()
        stopped = self.application.stopService()
        self.reactor.advance(DRAIN - 0.1)
        self.assertNoResult(stopped)
        self.reactor.advance(0.1)
        self.successResultOf(stopped)
        self.assertTrue(client.aborted)
        self.assertTrue(upstream.aborted)
        [entry] = self.accessLogEntries()
        self.assertEqual(entry["status"], "shutdown")

    def test_stopAtTheDrainDeadlineLeavesNoTimer(self) -> None:
        """
        Once the cut connections are gone and the stop completed, nothing
        is left on the reactor: an application that keeps running after
        stopping the gateway must not be called back by it.
        """
        self.start()
        self.connect()
        stopped = self.application.stopService()
        self.reactor.advance(DRAIN)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_portThatCannotOpenFailsTheStartAndClosesTheOthers(self) -> None:
        """
        The application learns at C{startService} that a listener cannot
        listen (L{StartupError}, naming it), and the ports that did open
        are closed again.
        """
        self.service = GatewayService(
            buildConfig("off", "tcp:8443", "tcp:8444"), reactor=self.reactor
        )
        self.reactor.refuse.add(8444)
        error = self.assertRaises(StartupError, self.service.startService)
        self.assertIn("tcp:8444", str(error))
        self.assertFalse(self.service.running)
        self.assertEqual([p.listening for p in self.reactor.ports], [False])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
