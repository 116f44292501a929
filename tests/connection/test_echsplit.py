"""
Split-mode ECH in the connection layer, in memory: the pre-read opens an
outer ClientHello and hands off its inner one (L{gateway.wire.echopen.openHello}),
and L{ECHPassthroughStage} replaces a second ClientHello after a
HelloRetryRequest.  The outer hellos are sealed here with C{pyhpke}'s
sender side, as a client does (a real client's are tested end to end in
C{tests/integration/test_ech.py}).
"""

from __future__ import annotations

from collections.abc import Callable

from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey
from pyhpke.context_interface import ContextInterface
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.connection.echsplit import MAX_HELD, ECHPassthroughStage
from gateway.connection.preread import PrereadProtocol
from gateway.rules.accesslog import ConnectionRecord
from gateway.wire.ech import EXT_ECH, helloRecords
from gateway.wire.echopen import ECHKeyring, generateKeyFile, parseKeyFile
from tests.connection.test_preread import RecordingListener
from tests.transports import PromptClientTransport

_KEYS = parseKeyFile(generateKeyFile("public.example", 4)[0])
_CONFIG = _KEYS[0].config
_HRR_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _body(extensions: bytes, random: bytes, sessionId: bytes = b"") -> bytes:
    return (
        b"\x03\x03"
        + random
        + bytes([len(sessionId)])
        + sessionId
        + b"\x00\x02\x13\x01\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )


def _sni(name: bytes) -> bytes:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    return _extension(0, len(entry).to_bytes(2, "big") + entry)


_VERSIONS = _extension(43, b"\x02\x03\x04")


def _sender() -> tuple[bytes, ContextInterface]:
    suite = CipherSuite.new(
        KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM
    )
    public = KEMKey.from_pyca_cryptography_key(_KEYS[0].privateKey.public_key())
    return suite.create_sender_context(public, info=b"tls ech\x00" + _CONFIG.raw)


def _outer(context: ContextInterface, enc: bytes, name: bytes, random: bytes) -> bytes:
    """
    The records of an outer ClientHello for public.example whose ECH seals
    an inner hello for C{name} (ALPN C{x-inner}) with C{context}.
    """
    inner = _body(
        _sni(name)
        + _extension(16, b"\x00\x08\x07x-inner")
        + _VERSIONS
        + _extension(EXT_ECH, b"\x01"),
        random,
    )
    size = len(inner) + 16  # the AES-GCM tag
    head = b"\x00\x00\x01\x00\x01" + bytes([_CONFIG.configId])
    head += len(enc).to_bytes(2, "big") + enc + size.to_bytes(2, "big")

    def outer(payload: bytes) -> bytes:
        return _body(
            _sni(b"public.example") + _VERSIONS + _extension(EXT_ECH, head + payload),
            bytes(32),
            b"S" * 32,
        )

    payload = context.seal(inner, outer(bytes(size)))
    return helloRecords(outer(payload), 0x0301)


class PrereadECHTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = RecordingListener()
        self.record = ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)
        self.protocol = PrereadProtocol(
            self.listener,
            self.record,
            MemoryReactorClock(),
            10,
            16384,
            ech=ECHKeyring(_KEYS),
        )
        self.transport = PromptClientTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def test_innerHelloIsHandedOff(self) -> None:
        """
        The listener gets the inner hello to route on and its records to
        send upstream; the record shows both names.
        """
        enc, context = _sender()
        records = _outer(context, enc, b"secret.example", b"R" * 32)
        self.protocol.dataReceived(records[:100])
        self.protocol.dataReceived(records[100:] + b"early")
        [(hello, buffered)] = self.listener.handoffs
        self.assertEqual(hello.serverName, "secret.example")
        self.assertEqual(hello.alpn, ("x-inner",))
        self.assertTrue(buffered.endswith(b"early"))
        self.assertIn(b"secret.example", buffered)
        self.assertNotIn(b"public.example", buffered)
        self.assertIn(b"S" * 32, buffered)  # the outer session id
        self.assertEqual(
            (self.record.ech, self.record.sni, self.record.outerSni),
            ("decrypted", "secret.example", "public.example"),
        )
        self.assertIsNotNone(self.protocol.echOpened)

    def test_otherKeysRouteOnTheOuterName(self) -> None:
        enc, context = _sender()
        records = _outer(context, enc, b"secret.example", b"R" * 32)
        other = parseKeyFile(generateKeyFile("public.example", 4)[0])
        self.protocol._ech = ECHKeyring(other)
        self.protocol.dataReceived(records)
        [(hello, buffered)] = self.listener.handoffs
        self.assertEqual(hello.serverName, "public.example")
        self.assertEqual(buffered, records)
        self.assertEqual(self.record.ech, "rejected")
        self.assertIsNone(self.protocol.echOpened)

    def test_malformedIsRefusedWithItsAlert(self) -> None:
        hello = _body(
            _sni(b"public.example") + _VERSIONS + _extension(EXT_ECH, b"\x00\x00"),
            bytes(32),
        )
        self.protocol.dataReceived(helloRecords(hello, 0x0301))
        self.assertEqual(self.listener.handoffs, [])
        self.assertEqual(self.transport.value()[5:7], b"\x02\x32")  # decode_error
        self.assertEqual(
            (self.record.status, self.record.ech), ("bad_client_hello", "rejected")
        )


class _Session:
    """
    What the stage drives of a L{gateway.connection.session.Session}: the
    bytes it passes on to the upstream side, and the watcher slot.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.upstreamWatcher: Callable[[bytes], None] | None = None
        self.relay = None
        self.stopped = False

    def clientData(self, data: bytes) -> None:
        self.sent.append(data)

    def shutdown(self) -> None:
        self.stopped = True


def _serverHello(random: bytes) -> bytes:
    body = b"\x03\x03" + random + b"\x00\x13\x01\x00\x00\x00"
    message = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(message).to_bytes(2, "big") + message


class StageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.enc, self.context = _sender()
        first = _outer(self.context, self.enc, b"secret.example", b"1" * 32)
        opened = ECHKeyring(_KEYS).open(first[9:])
        self.session = _Session()
        self.transport = PromptClientTransport()
        self.record = ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)
        self.stage = ECHPassthroughStage(
            self.session,  # type: ignore[arg-type]
            opened,
            self.transport,
            0x0303,
        )

    def test_secondHelloAfterRetryIsReplaced(self) -> None:
        """
        After a HelloRetryRequest, the client's ChangeCipherSpec passes as
        it is and its second outer hello (same context, no enc) is sent
        on as its inner hello; then the stage passes bytes untouched.
        """
        watcher = self.session.upstreamWatcher
        assert watcher is not None
        hrr = _serverHello(_HRR_RANDOM)
        watcher(hrr[:20])
        watcher(hrr[20:])
        self.assertIsNone(self.session.upstreamWatcher)
        ccs = b"\x14\x03\x03\x00\x01\x01"
        second = _outer(self.context, b"", b"secret.example", b"2" * 32)
        self.stage.dataReceived(ccs + second[:50])
        self.assertEqual(self.session.sent, [ccs])
        self.stage.dataReceived(second[50:] + b"\x17rest")
        replaced = self.session.sent[1]
        self.assertIn(b"secret.example", replaced)
        self.assertIn(b"2" * 32, replaced)
        self.assertNotIn(b"public.example", replaced)
        self.assertTrue(replaced.endswith(b"\x17rest"))
        # bytes_in is the owner's count of what arrived (the outer hello):
        # the stage counts nothing for the inner one it sends in its place.
        self.assertEqual(self.record.bytesIn, 0)
        self.stage.dataReceived(b"later")
        self.assertEqual(self.session.sent[2:], [b"later"])

    def test_serverHelloEndsTheWatch(self) -> None:
        """
        A ServerHello that is not an HRR: what the client sends from then
        on passes untouched, held bytes first.
        """
        self.stage.dataReceived(b"\x16\x03\x03\x00")
        self.assertEqual(self.session.sent, [])
        watcher = self.session.upstreamWatcher
        assert watcher is not None
        watcher(_serverHello(b"x" * 32))
        self.assertIsNone(self.session.upstreamWatcher)
        self.stage.dataReceived(b"\x10next")
        self.assertEqual(self.session.sent, [b"\x16\x03\x03\x00", b"\x10next"])

    def test_heldBytesAreBounded(self) -> None:
        """
        Handshake records held while the backend has not answered are
        bounded: past L{MAX_HELD}, the connection is refused.
        """
        record = b"\x16\x03\x03\x40\x00" + bytes(2**14)
        for _ in range(MAX_HELD // len(record)):
            self.stage.dataReceived(record)
        self.assertFalse(self.session.stopped)
        self.stage.dataReceived(record)
        self.assertTrue(self.session.stopped)
        self.assertEqual(self.transport.value(), b"\x15\x03\x03\x00\x02\x02\x32")
        self.stage.dataReceived(b"after")
        self.assertEqual(self.session.sent, [])

    def test_secondHelloThatDoesNotOpenIsRefused(self) -> None:
        """
        A second hello sealed with another context gets C{decrypt}-level
        refusal: an alert and the end of the connection.
        """
        watcher = self.session.upstreamWatcher
        assert watcher is not None
        watcher(_serverHello(_HRR_RANDOM))
        _, stranger = _sender()
        self.stage.dataReceived(_outer(stranger, b"", b"secret.example", b"3" * 32))
        self.assertEqual(self.session.sent, [])
        self.assertEqual(self.transport.value(), b"\x15\x03\x03\x00\x02\x02\x33")
        self.assertTrue(self.session.stopped)
