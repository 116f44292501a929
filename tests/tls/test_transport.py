"""
The memory-BIO TLS layer, against a pyOpenSSL client in memory.
"""

import contextlib
import itertools
import socket

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.core.records import IRecordLayer
from gateway.fast import internals as fastpath
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.tls.transport import (
    CLOSED_DURING_HANDSHAKE,
    ITLSEvents,
    PublicRecords,
    TLSTransport,
    clientGaveUp,
)
from tests.helpers import fastPathOnly
from tests.transports import HalfCloseableTransport

CA = trustme.CA()
LEAF = CA.issue_cert("tls.example.test")


def serverContext() -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    LEAF.configure_cert(context)
    return context


def clientConnection(maxVersion: int | None = None) -> SSL.Connection:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    CA.configure_trust(context)
    context.set_verify(SSL.VERIFY_PEER)
    if maxVersion is not None:
        context.set_max_proto_version(maxVersion)
    connection = SSL.Connection(context, None)
    connection.set_tlsext_host_name(b"tls.example.test")
    connection.set_connect_state()
    return connection


@implementer(ITLSEvents)
class Events:
    def __init__(self) -> None:
        self.done = False
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.data: list[bytes] = []
        self.closed = False

    def tlsHandshakeDone(self) -> None:
        self.done = True

    def tlsHandshakeFailed(self, reason: str) -> None:
        self.failed.append(reason)

    def tlsData(self, data: bytes) -> None:
        self.data.append(data)

    def tlsReadClosed(self) -> None:
        self.closed = True

    def tlsError(self, reason: str) -> None:
        self.errors.append(reason)


class TLSTransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = HalfCloseableTransport()
        self.events = Events()
        self.record = ConnectionRecord("l", "c", 0.0, 0.0)
        server = SSL.Connection(serverContext(), None)
        server.set_accept_state()
        self.tls = TLSTransport(
            server, self.wire, self.events, clientBytes=ClientBytes(self.record)
        )

    def pump(self, client: SSL.Connection) -> None:
        """
        Move bytes both ways until neither side has anything to say.
        """
        for _ in range(10):
            moved = False
            with contextlib.suppress(SSL.WantReadError):
                out = client.bio_read(2**20)
                self.tls.ciphertextReceived(out)
                moved = True
            sent = self.wire.value()
            if sent:
                self.wire.clear()
                client.bio_write(sent)
                moved = True
            # WantReadError, or the alert of a refused handshake.
            with contextlib.suppress(SSL.Error):
                client.do_handshake()
            if not moved:
                return

    def handshake(self) -> SSL.Connection:
        client = clientConnection()
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        self.pump(client)
        return client

    def test_handshakeThenDataBothWays(self) -> None:
        client = self.handshake()
        self.assertTrue(self.events.done)
        client.sendall(b"ping")
        self.pump(client)
        self.assertEqual(b"".join(self.events.data), b"ping")
        self.tls.write(b"pong" * 10000)
        self.pump(client)
        received = b""
        with contextlib.suppress(SSL.WantReadError):
            while True:
                received += client.recv(65536)
        self.assertEqual(received, b"pong" * 10000)

    def test_wireBytesAreCounted(self) -> None:
        self.handshake()
        before = self.record.bytesOut
        self.assertGreater(before, 0)
        self.tls.write(b"x" * 1000)
        self.assertGreater(self.record.bytesOut, before + 1000)

    def test_closeNotifyIsAHalfClose(self) -> None:
        """
        The client's close_notify ends its direction only: the gateway can
        still send, as after a FIN in passthrough.
        """
        client = self.handshake()
        client.shutdown()
        self.pump(client)
        self.assertTrue(self.events.closed)
        self.assertFalse(self.wire.writeClosed)
        self.tls.write(b"late answer")
        self.pump(client)
        self.assertEqual(client.recv(100), b"late answer")

    def test_loseWriteConnectionSendsCloseNotifyThenFin(self) -> None:
        client = self.handshake()
        self.tls.loseWriteConnection()
        self.assertTrue(self.wire.writeClosed)
        self.pump(client)
        with self.assertRaises(SSL.ZeroReturnError):
            client.recv(100)
        client.sendall(b"still talking")
        self.pump(client)
        self.assertEqual(b"".join(self.events.data), b"still talking")

    def test_aCorruptRecordSendsTheAlertThenCloses(self) -> None:
        """
        A record whose MAC fails after the handshake: the events hear
        OpenSSL's reason, the alert OpenSSL queued goes out, and the wire
        is closed, not reset; nothing after it is decrypted.
        """
        client = self.handshake()
        client.sendall(b"fine")
        record = bytearray(client.bio_read(65536))
        record[-1] ^= 1
        self.wire.clear()
        self.wire.protocol = Protocol()
        self.tls.ciphertextReceived(bytes(record))
        self.assertEqual(len(self.events.errors), 1)
        self.assertIn("bad record mac", self.events.errors[0])
        self.assertFalse(self.wire.aborted)
        self.assertFalse(self.wire.connected)
        client.bio_write(self.wire.value())
        with self.assertRaisesRegex(SSL.Error, "alert bad record mac"):
            client.recv(100)
        self.tls.write(b"nothing more")
        self.tls.ciphertextReceived(b"\x17\x03\x03\x00\x10" + bytes(16))
        self.assertEqual(len(self.events.errors), 1)
        self.assertEqual(self.events.data, [])

    def test_oldProtocolFailsWithAReason(self) -> None:
        context = serverContext()
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        server = SSL.Connection(context, None)
        server.set_accept_state()
        self.tls = TLSTransport(server, self.wire, self.events)
        client = clientConnection(maxVersion=SSL.TLS1_2_VERSION)
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        self.pump(client)
        self.assertFalse(self.events.done)
        self.assertEqual(len(self.events.failed), 1)
        self.assertIn("protocol", self.events.failed[0])

    def test_finDuringHandshakeFails(self) -> None:
        self.tls.ciphertextEnded()
        self.assertEqual(self.events.failed, ["connection closed during the handshake"])


class PublicAPITLSTransportTests(TLSTransportTests):
    """
    The same, through pyOpenSSL's public API only: what the layer falls
    back to when the direct OpenSSL calls are not available.
    """

    def setUp(self) -> None:
        super().setUp()
        self.tls._records = PublicRecords(self.tls.connection)


@fastPathOnly
def test_directCallsAreUsedOnMemoryBIOs() -> None:
    """
    With today's pyOpenSSL the data path calls OpenSSL directly; a
    connection on a socket (no memory BIOs) cannot.
    """
    server = SSL.Connection(serverContext(), None)
    tls = TLSTransport(server, HalfCloseableTransport(), Events())
    assert isinstance(tls._records, fastpath.DirectRecords)
    a, b = socket.socketpair()
    try:
        onSocket = TLSTransport(
            SSL.Connection(serverContext(), a), HalfCloseableTransport(), Events()
        )
        assert isinstance(onSocket._records, PublicRecords)
    finally:
        a.close()
        b.close()


def test_theFastPathsOffMeanPyOpenSSLsAPI(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With C{TLSGATEWAY_PORTABLE=1} (or no binding) no connection gets the
    direct calls; L{PublicAPITLSTransportTests} runs that path.
    """
    monkeypatch.setattr(fastpath, "DIRECT_TLS", False)
    server = SSL.Connection(serverContext(), None)
    tls = TLSTransport(server, HalfCloseableTransport(), Events())
    assert isinstance(tls._records, PublicRecords)


def test_aClientRejectingTheCertificateGaveUp() -> None:
    """
    The alerts a client sends about the gateway's certificate, and a close
    in the middle, are the client's choice; the gateway's own refusals are
    not.
    """
    for alert in ("tlsv1 alert unknown ca", "sslv3 alert bad certificate"):
        reason = clientGaveUp(alert)
        assert reason is not None
        assert alert in reason
        assert "rejected the gateway's certificate" in reason
    assert clientGaveUp(CLOSED_DURING_HANDSHAKE) == (
        "client closed during the TLS handshake"
    )
    for refused in (
        "no shared cipher",
        "unsupported protocol",
        "peer did not return a certificate",
        "certificate verify failed",
    ):
        assert clientGaveUp(refused) is None


def _handshaken(direct: bool) -> tuple[SSL.Connection, SSL.Connection, IRecordLayer]:
    """
    A pyOpenSSL client and a server in memory, handshake done, and the
    server's record layer: direct OpenSSL calls or pyOpenSSL's API.
    """
    client = clientConnection()
    server = SSL.Connection(serverContext(), None)
    server.set_accept_state()
    for _ in range(10):
        for connection in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                connection.do_handshake()
        for source, sink in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                sink.bio_write(source.bio_read(1 << 20))
    records = fastpath.directRecords(server) if direct else None
    return client, server, records or PublicRecords(server)


@pytest.mark.parametrize("direct", [pytest.param(True, marks=fastPathOnly), False])
@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=1, max_size=40000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=1 << 17), max_size=6),
)
def test_decryptAndEncryptMoveExactlyTheBytes(
    direct: bool, messages: list[bytes], cuts: list[int]
) -> None:
    """
    However the client's records are cut into reads, C{decrypt} gives the
    plaintext exactly, joined, and no end or error; C{encrypt} gives
    records the client reads back exactly.  Both record layers alike.
    """
    client, _server, records = _handshaken(direct)
    for message in messages:
        client.sendall(message)
    wire = b""
    with contextlib.suppress(SSL.WantReadError):
        while chunk := client.bio_read(1 << 20):
            wire += chunk
    edges = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    plaintext = b""
    for start, end in itertools.pairwise(edges):
        got, ended, broken, out = records.decrypt(wire[start:end])
        assert (ended, broken) == (False, None)
        assert out is None or isinstance(out, bytes)
        plaintext += got
    assert plaintext == b"".join(messages)
    answer = b"".join(reversed(messages))
    out = records.encrypt(answer)
    assert out is not None
    client.bio_write(out)
    echoed = b""
    with contextlib.suppress(SSL.WantReadError):
        while len(echoed) < len(answer):
            echoed += client.recv(1 << 17)
    assert echoed == answer


@pytest.mark.parametrize("direct", [pytest.param(True, marks=fastPathOnly), False])
def test_decryptSaysWhenTheStreamEndsOrBreaks(direct: bool) -> None:
    """
    The peer's C{close_notify} is an end; a record that fails to decrypt
    is OpenSSL's reason, with the alert OpenSSL queued for the peer.
    """
    client, _server, records = _handshaken(direct)
    client.sendall(b"last")
    client.shutdown()
    plaintext, ended, broken, _out = records.decrypt(client.bio_read(1 << 20))
    assert (plaintext, ended, broken) == (b"last", True, None)
    client, _server, records = _handshaken(direct)
    plaintext, ended, broken, out = records.decrypt(b"\x17\x03\x03\x00\x20" + bytes(32))
    assert (plaintext, ended) == (b"", False)
    assert broken
    assert out is not None
    assert out[:1] in (b"\x15", b"\x17")  # the alert, in a record
