"""
The pre-read protocol, driven through an in-memory transport and clock.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.accesslog import ConnectionRecord
from gateway.clienthello import ClientHello
from gateway.preread import PrereadProtocol
from gateway.testing import makeClientHello
from tests.transports import HalfCloseableTransport

HELLO = makeClientHello("db.example.com", [b"h2"])


class RecordingStage:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.eof = False
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.eof = True

    def connectionLost(self, reason: object) -> None:
        self.lost = True

    def shutdown(self) -> None:
        pass


class RecordingListener:
    def __init__(self) -> None:
        self.handoffs: list[tuple[ClientHello, bytes]] = []
        self.endings: list[ConnectionRecord] = []
        self.stage = RecordingStage()

    def handoff(
        self, protocol: PrereadProtocol, hello: ClientHello, buffered: bytes
    ) -> RecordingStage:
        self.handoffs.append((hello, buffered))
        return self.stage

    def ended(self, protocol: PrereadProtocol) -> None:
        self.endings.append(protocol.record)


class PrereadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.listener = RecordingListener()
        self.record = ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)
        self.protocol = PrereadProtocol(
            self.listener, self.record, self.clock, 10, 16384
        )
        self.transport = HalfCloseableTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def test_helloSplitInTwoIsHandedOffWhole(self) -> None:
        self.protocol.dataReceived(HELLO[:7])
        self.assertEqual(self.listener.handoffs, [])
        self.protocol.dataReceived(HELLO[7:])
        [(hello, buffered)] = self.listener.handoffs
        self.assertEqual((hello.serverName, hello.alpn), ("db.example.com", ("h2",)))
        self.assertEqual(buffered, HELLO)
        self.assertEqual(self.record.sni, "db.example.com")
        self.assertEqual(self.record.bytesIn, len(HELLO))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_helloOneByteAtATime(self) -> None:
        for i in range(len(HELLO)):
            self.protocol.dataReceived(HELLO[i : i + 1])
        self.assertEqual(len(self.listener.handoffs), 1)

    def test_laterEventsGoToTheStage(self) -> None:
        self.protocol.dataReceived(HELLO)
        self.protocol.dataReceived(b"after")
        self.protocol.readConnectionLost()
        self.protocol.connectionLost()
        stage = self.listener.stage
        self.assertEqual(
            (stage.received, stage.eof, stage.lost), ([b"after"], True, True)
        )
        self.assertEqual(self.listener.endings, [])

    def test_silentClientIsDroppedAtTimeout(self) -> None:
        self.clock.advance(9.9)
        self.assertTrue(self.transport.connected)
        self.clock.advance(0.1)
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "preread_timeout")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbageIsRefusedAndNeverHandedOff(self) -> None:
        self.protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.record.status, "bad_client_hello")
        self.protocol.dataReceived(HELLO)
        self.assertEqual(self.listener.handoffs, [])
        self.assertEqual(self.listener.endings, [self.record])

    def test_tooLargeHelloIsRefused(self) -> None:
        protocol = PrereadProtocol(self.listener, self.record, self.clock, 10, 100)
        transport = HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(HELLO)
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertEqual(self.listener.handoffs, [])

    def test_clientFinBeforeHelloIsBadClientHello(self) -> None:
        self.protocol.dataReceived(HELLO[:20])
        self.protocol.readConnectionLost()
        self.assertEqual(self.record.status, "bad_client_hello")
        self.assertIn("20 bytes", self.record.reason)
        self.assertFalse(self.transport.connected)

    def test_shutdownDuringPrereadIsLoggedShutdown(self) -> None:
        self.protocol.shutdown()
        self.assertTrue(self.transport.aborted)
        self.assertEqual(self.record.status, "shutdown")
