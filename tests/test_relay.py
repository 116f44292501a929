"""
The portable relay, driven through in-memory transports and a fake clock.
"""

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.accesslog import ConnectionRecord
from gateway.relay import PortableRelay
from tests.transports import HalfCloseableTransport


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = HalfCloseableTransport()
        self.upstream = HalfCloseableTransport()
        for transport in (self.client, self.upstream):
            transport.protocol = Protocol()
        self.record = ConnectionRecord("l", "127.0.0.1:1", 0.0, 0.0)
        self.done: list[bool] = []
        self.relay = PortableRelay(
            self.client,
            self.upstream,
            self.record,
            self.clock,
            60.0,
            lambda: self.done.append(True),
        )

    def test_bytesAreForwardedAndCountedBothWays(self) -> None:
        self.relay.clientData(b"hello")
        self.relay.upstreamData(b"world!")
        self.assertEqual(self.upstream.value(), b"hello")
        self.assertEqual(self.client.value(), b"world!")
        self.assertEqual((self.record.bytesIn, self.record.bytesOut), (5, 6))

    def test_eachSideIsTheOthersProducer(self) -> None:
        """
        A full write buffer on one side pauses reading on the other: that is
        what bounds memory for a slow reader.
        """
        self.assertIs(self.client.producer, self.upstream)
        self.assertIs(self.upstream.producer, self.client)
        self.assertTrue(self.client.streaming)

    def test_clientFinHalfClosesUpstream(self) -> None:
        self.relay.clientReadClosed()
        self.assertTrue(self.upstream.writeClosed)
        self.assertIsNone(self.upstream.producer)
        self.assertTrue(self.client.connected)
        self.relay.upstreamData(b"still flowing")
        self.assertEqual(self.client.value(), b"still flowing")

    def test_upstreamFinHalfClosesClient(self) -> None:
        self.relay.upstreamReadClosed()
        self.assertTrue(self.client.writeClosed)
        self.assertFalse(self.upstream.writeClosed)
        self.relay.clientData(b"more")
        self.assertEqual(self.upstream.value(), b"more")

    def test_finBothWaysClosesBoth(self) -> None:
        self.relay.clientReadClosed()
        self.relay.upstreamReadClosed()
        self.assertFalse(self.client.connected)
        self.assertFalse(self.upstream.connected)
        self.assertFalse(self.client.aborted or self.upstream.aborted)
        self.relay.clientLost(Failure(ConnectionDone()))
        self.assertEqual(self.done, [])
        self.relay.upstreamLost(Failure(ConnectionDone()))
        self.assertEqual(self.done, [True])
        self.assertIsNone(self.record.status)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resetIsPropagated(self) -> None:
        self.relay.upstreamLost(Failure(ConnectionLost()))
        self.assertTrue(self.client.aborted)
        self.assertEqual(self.record.extra["closed_by"], "upstream_reset")
        self.relay.clientLost(Failure(ConnectionLost()))
        self.assertEqual(self.done, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleConnectionIsClosedAtTimeout(self) -> None:
        self.clock.advance(59)
        self.assertTrue(self.client.connected)
        self.clock.advance(1)
        self.assertTrue(self.client.aborted and self.upstream.aborted)
        self.assertEqual(self.record.status, "idle_timeout")

    def test_trafficPostponesIdleTimeout(self) -> None:
        self.clock.advance(50)
        self.relay.clientData(b"x")
        self.clock.advance(50)
        self.assertTrue(self.client.connected)
        self.relay.upstreamData(b"y")
        self.clock.advance(59.5)
        self.assertTrue(self.client.connected)
        self.clock.advance(0.5)
        self.assertEqual(self.record.status, "idle_timeout")

    def test_abortRecordsFirstCauseOnly(self) -> None:
        self.relay.abort("shutdown", "gateway stopped")
        self.relay.abort("idle_timeout", "late")
        self.assertEqual(self.record.status, "shutdown")
        self.assertTrue(self.client.aborted and self.upstream.aborted)
