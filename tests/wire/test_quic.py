"""
Tests for L{gateway.wire.quic}'s keys and headers: the RFC 9001 and RFC
9369 known answers, header protection, long headers, short-header
connection IDs, Version Negotiation and the refusal of a connection.

This module also holds what the reader's tests (C{test_quic_reader.py})
build their input with: a writer of protected client Initials, L{protect},
which uses the module's own key functions and packet protection
(L{encryptInitial}; the known-answer tests show that they reproduce the
RFCs' packets byte for byte), and real ClientHellos from aioquic.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from C
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.events import ConnectionTerminated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.clienthello import NEED_MORE, ClientHello
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.quic import (
    QUIC_V1,
    QUIC_V2,
    SUPPORTED_VERSIONS,
    InitialKeys,
    InitialReader,
    LongHeader,
    PacketType,
    QuicError,
    UnsupportedVersion,
    initialKeys,
    isLongHeader,
    longHeaders,
    parseLongHeader,
    shortHeaderDCID,
    versionNegotiation,
)
from gateway.wire.quic.crypto import (
    decodePacketNumber,
    decryptInitial,
    encryptInitial,
    headerProtectionMask,
    initialSecret,
    minimumPayload,
)
from gateway.wire.quic.frames import cryptoFrames
from gateway.wire.quic.packet import encodeVarint, longPacketTypeBits, readVarint
from gateway.wire.quic.refusal import CONNECTION_REFUSED, connectionRefused
from tests.helpers import frameworksImportedBy

DATA = Path(__file__).parents[1] / "data" / "quic"

FAST = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# RFC 9001 appendix A and RFC 9369 appendix A: one client Initial, both
# versions, from the same connection ID and the same CRYPTO frame.
RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
#: The frames of the RFC packet: the CRYPTO frame, padded to 1162 bytes.
RFC_PAYLOAD = RFC_CRYPTO_FRAME + bytes(1162 - len(RFC_CRYPTO_FRAME))


def rfcPacket(name: str) -> bytes:
    return bytes.fromhex("".join((DATA / name).read_text().split()))


RFC9001_PACKET = rfcPacket("rfc9001-client-initial.hex")
RFC9369_PACKET = rfcPacket("rfc9369-client-initial.hex")


# A writer of client Initials: the headers are the tests' own, the
# protection the gateway's (which the RFC packets check byte for byte).


def varint(value: int, size: int | None = None) -> bytes:
    """
    A QUIC variable-length integer (RFC 9000 16), in C{size} bytes if given.
    """
    if size is None:
        size = next(s for s in (1, 2, 4, 8) if value < 1 << (8 * s - 2))
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return (value | prefix << (8 * size - 2)).to_bytes(size, "big")


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def protect(
    payload: bytes,
    dcid: bytes = RFC_DCID,
    *,
    scid: bytes = b"",
    token: bytes = b"",
    version: int = QUIC_V1,
    packetNumber: int = 0,
    pnLength: int = 4,
    keys: InitialKeys | None = None,
    packetType: int | None = None,
    reserved: int = 0,
) -> bytes:
    """
    Build a protected client Initial (RFC 9001 5.3 and 5.4) carrying
    C{payload} as its frames (the protection by L{encryptInitial}).  The Length field is always two bytes, as in
    the RFC's example.
    """
    if keys is None:
        keys = initialKeys(dcid, version)
    if packetType is None:
        packetType = longPacketTypeBits(version, PacketType.INITIAL)
    first = 0xC0 | packetType << 4 | reserved << 2 | (pnLength - 1)
    header = (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + varint(len(token))
        + token
        + varint(pnLength + len(payload) + 16, 2)
    )
    return encryptInitial(header, packetNumber, pnLength, payload, keys)


def initial(
    frames: bytes,
    size: int = 1200,
    *,
    dcid: bytes = RFC_DCID,
    token: bytes = b"",
    packetNumber: int = 0,
    keys: InitialKeys | None = None,
    reserved: int = 0,
) -> bytes:
    """
    One v1 Initial carrying C{frames}, padded with PADDING frames so that
    the packet is C{size} bytes (the datagram minimum, by default).
    """

    def build(payload: bytes) -> bytes:
        return protect(
            payload,
            dcid,
            token=token,
            packetNumber=packetNumber,
            keys=keys,
            reserved=reserved,
        )

    return build(frames + bytes(max(0, size - len(build(frames)))))


def clientHello(serverName: str, alpn: list[str]) -> bytes:
    """
    A real QUIC ClientHello handshake message, from aioquic's TLS stack:
    what its client puts in the Initial CRYPTO stream.
    """
    context = tls.Context(is_client=True, alpn_protocols=alpn, server_name=serverName)
    context.handshake_extensions = [
        (tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, bytes(range(40)))
    ]
    buffers = {epoch: Buffer(capacity=65536) for epoch in tls.Epoch}
    context.handle_message(b"", buffers)
    return buffers[tls.Epoch.INITIAL].data


def parsedOverTCP(message: bytes) -> ClientHello:
    """
    What the TCP path's reader makes of the same handshake message.
    """
    hello = ClientHelloReader().feed(
        b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message
    )
    assert hello is not NEED_MORE
    return hello


def aioquicDatagrams(
    serverName: str, alpn: list[str], version: int = QUIC_V1
) -> list[bytes]:
    """
    The first flight of aioquic's QUIC client, sans-IO: its real datagrams.
    """
    connection = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True,
            server_name=serverName,
            alpn_protocols=alpn,
            original_version=version,
            supported_versions=[version],
        )
    )
    connection.connect(("127.0.0.1", 4433), now=time.monotonic())
    return [data for data, _ in connection.datagrams_to_send(now=time.monotonic())]


def feedAll(reader: InitialReader, datagrams: list[bytes]) -> ClientHello:
    """
    Feed every datagram; each but the last must leave the hello incomplete.
    """
    for datagram in datagrams[:-1]:
        assert reader.feed(datagram) is NEED_MORE
    hello = reader.feed(datagrams[-1])
    assert hello is not NEED_MORE
    return hello


#: Many ALPN values make a real hello too large for one Initial packet, as
#: post-quantum key shares do.
LONG_ALPN = ["h3", *(f"h3-experiment-{i:03d}-{'x' * 24}" for i in range(40))]
HELLO = clientHello("api.example.com", LONG_ALPN)
EXPECTED = parsedOverTCP(HELLO)


# RFC 9001 appendix A.1 and RFC 9369 appendix A.1: keys.


def test_rfc9001ClientInitialKeys() -> None:
    keys = initialKeys(RFC_DCID, QUIC_V1)
    assert keys.secret == bytes.fromhex(
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    )
    assert keys.key == bytes.fromhex("1f369613dd76d5467730efcbe3b1a22d")
    assert keys.iv == bytes.fromhex("fa044b2f42a3fd3b46fb255c")
    assert keys.hp == bytes.fromhex("9f50449e04a0e810283a1e9933adedd2")


def test_rfc9001ServerInitialKeys() -> None:
    keys = initialKeys(RFC_DCID, QUIC_V1, "server")
    assert keys.secret == bytes.fromhex(
        "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"
    )
    assert keys.key == bytes.fromhex("cf3a5331653c364c88f0f379b6067e37")
    assert keys.iv == bytes.fromhex("0ac1493ca1905853b0bba03e")
    assert keys.hp == bytes.fromhex("c206b8d9b9f0f37644430b490eeaa314")


def test_rfc9369ClientInitialKeys() -> None:
    keys = initialKeys(RFC_DCID, QUIC_V2)
    assert keys.secret == bytes.fromhex(
        "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
    )
    assert keys.key == bytes.fromhex("8b1a0bc121284290a29e0971b5cd045d")
    assert keys.iv == bytes.fromhex("91f73e2351d8fa91660e909f")
    assert keys.hp == bytes.fromhex("45b95e15235d6f45a6b19cbcb0294ba9")


def test_rfc9369ServerInitialKeys() -> None:
    keys = initialKeys(RFC_DCID, QUIC_V2, "server")
    assert initialSecret(RFC_DCID, QUIC_V2, "server") == bytes.fromhex(
        "0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1"
    )
    assert keys.key == bytes.fromhex("82db637861d55e1d011f19ea71d5d2a7")
    assert keys.iv == bytes.fromhex("dd13c276499c0249d3310652")
    assert keys.hp == bytes.fromhex("edf6d05c83121201b436e16877593c3a")


# Appendix A.2 of both: the protected client Initial.


@pytest.mark.parametrize(
    ("version", "packet", "sample", "mask", "header"),
    [
        (
            QUIC_V1,
            RFC9001_PACKET,
            "d1b1c98dd7689fb8ec11d242b123dc9b",
            "437b9aec36",
            "c000000001088394c8f03e5157080000449e7b9aec34",
        ),
        (
            QUIC_V2,
            RFC9369_PACKET,
            "ffe67b6abcdb4298b485dd04de806071",
            "94a0c95e80",
            "d76b3343cf088394c8f03e5157080000449ea0c95e82",
        ),
    ],
)
def test_rfcHeaderProtection(
    version: int, packet: bytes, sample: str, mask: str, header: str
) -> None:
    """
    The RFC's sample gives its mask, and the packet starts with the RFC's
    protected header followed by that sample.
    """
    keys = initialKeys(RFC_DCID, version)
    assert headerProtectionMask(keys.hp, bytes.fromhex(sample)) == bytes.fromhex(mask)
    assert packet[:22] == bytes.fromhex(header)
    assert packet[22:38] == bytes.fromhex(sample)
    assert len(packet) == 1200


@pytest.mark.parametrize(
    ("version", "packet"), [(QUIC_V1, RFC9001_PACKET), (QUIC_V2, RFC9369_PACKET)]
)
def test_rfcClientInitialDecrypts(version: int, packet: bytes) -> None:
    """
    The RFC's protected packet opens to packet number 2 and the RFC's
    CRYPTO frame, whose ClientHello names example.com.
    """
    header = parseLongHeader(packet)
    assert header == LongHeader(
        version, PacketType.INITIAL, RFC_DCID, b"", b"", 1200, 0, 18
    )
    number, payload, first = decryptInitial(
        packet, header.headerLength, initialKeys(RFC_DCID, version), 0
    )
    assert (number, payload) == (2, RFC_PAYLOAD)
    assert first == bytes.fromhex("c3d3")[version == QUIC_V2]
    [(offset, data)] = cryptoFrames(payload)
    assert offset == 0
    assert data == RFC_CRYPTO_FRAME[4:]
    reader = InitialReader()
    hello = reader.feed(packet)
    assert hello is not NEED_MORE
    assert hello == parsedOverTCP(data)
    assert hello.serverName == "example.com"
    assert hello.alpn == ("alpn",)
    assert (reader.version, reader.dcid, reader.scid) == (version, RFC_DCID, b"")


@pytest.mark.parametrize(
    ("version", "packet"), [(QUIC_V1, RFC9001_PACKET), (QUIC_V2, RFC9369_PACKET)]
)
def test_builderReproducesTheRfcPacket(version: int, packet: bytes) -> None:
    """
    The test suite's writer, on the RFC's inputs, gives the RFC's bytes:
    the properties below build their packets with it.
    """
    assert protect(RFC_PAYLOAD, version=version, packetNumber=2) == packet


@FAST
@given(
    version=st.sampled_from(SUPPORTED_VERSIONS),
    dcid=st.binary(min_size=0, max_size=20),
    packetNumber=st.integers(0, 2**20),
    pnLength=st.integers(1, 4),
    payload=st.binary(min_size=1, max_size=300),
)
def test_headerProtectionRoundTrip(
    version: int, dcid: bytes, packetNumber: int, pnLength: int, payload: bytes
) -> None:
    """
    Whatever the packet number and its encoded length, protecting then
    unprotecting gives the packet number and the payload back.
    """
    if packetNumber >= 1 << (8 * pnLength):
        pnLength = 4
    packet = protect(
        payload + bytes(20),
        dcid,
        version=version,
        packetNumber=packetNumber,
        pnLength=pnLength,
    )
    header = parseLongHeader(packet)
    opened = decryptInitial(
        packet, header.headerLength, initialKeys(dcid, version), packetNumber
    )
    assert opened[:2] == (packetNumber, payload + bytes(20))


def test_decodePacketNumber() -> None:
    """
    RFC 9000 appendix A.3's example, and the window's edges.
    """
    assert decodePacketNumber(0x9B32, 16, 0xA82F30EA + 1) == 0xA82F9B32
    assert decodePacketNumber(0, 8, 255 + 1) == 256
    assert decodePacketNumber(0xFF, 8, 256 + 1) == 255


# Headers, without keys.


def test_longHeaderOfEachType() -> None:
    """
    The type bits mean different things in v1 and v2 (RFC 9369 3.2).
    """
    v1 = {0: PacketType.INITIAL, 1: PacketType.ZERO_RTT, 2: PacketType.HANDSHAKE}
    v2 = {1: PacketType.INITIAL, 2: PacketType.ZERO_RTT, 3: PacketType.HANDSHAKE}
    for version, types in ((QUIC_V1, v1), (QUIC_V2, v2)):
        for bits, packetType in types.items():
            packet = protect(
                b"\x01" + bytes(40), b"\xaa" * 8, version=version, packetType=bits
            )
            if packetType is not PacketType.INITIAL:
                # Only an Initial has a token field; drop its zero length.
                packet = packet[:15] + packet[16:]
            header = parseLongHeader(packet)
            assert header.packetType is packetType
            assert header.version == version
            assert header.length == len(packet)


def test_retryHeader() -> None:
    retry = (
        bytes([0xF0])
        + QUIC_V1.to_bytes(4, "big")
        + b"\x04dcid\x04scid"
        + b"token-bytes"
        + bytes(16)
    )
    header = parseLongHeader(retry)
    assert header.packetType is PacketType.RETRY
    assert (header.dcid, header.scid, header.token) == (
        b"dcid",
        b"scid",
        b"token-bytes",
    )
    assert header.length == len(retry)
    v2Retry = bytes([0xC0]) + retry[1:]
    v2Retry = v2Retry[:1] + QUIC_V2.to_bytes(4, "big") + v2Retry[5:]
    assert parseLongHeader(v2Retry).packetType is PacketType.RETRY


def test_versionNegotiationParsesBack() -> None:
    """
    The answer swaps the client's connection IDs and lists v1 and v2.
    """
    answer = versionNegotiation(b"client-dcid", b"client-scid")
    assert isLongHeader(answer)
    header = parseLongHeader(answer)
    assert header.packetType is PacketType.VERSION_NEGOTIATION
    assert header.version == 0
    assert (header.dcid, header.scid) == (b"client-scid", b"client-dcid")
    assert header.versions == (QUIC_V1, QUIC_V2)
    assert header.length == len(answer)
    assert longHeaders(answer) == [header]


def test_unsupportedVersionCarriesTheIDs() -> None:
    """
    An unknown version is answered, so the error carries what the answer
    needs, including connection IDs longer than v1 allows (RFC 8999).
    """
    packet = bytes([0xC0]) + (0x1A2A3A4A).to_bytes(4, "big") + b"\x1e" + b"d" * 30
    packet += b"\x02sc" + bytes(1200)
    with pytest.raises(UnsupportedVersion) as caught:
        parseLongHeader(packet)
    assert caught.value.version == 0x1A2A3A4A
    assert (caught.value.dcid, caught.value.scid) == (b"d" * 30, b"sc")
    assert caught.value.reason == "unsupported_version"
    with pytest.raises(UnsupportedVersion):
        InitialReader().feed(packet)
    answer = parseLongHeader(versionNegotiation(caught.value.dcid, caught.value.scid))
    assert (answer.dcid, answer.scid) == (b"sc", b"d" * 30)


def test_shortHeaderDCID() -> None:
    assert shortHeaderDCID(b"\x40" + b"12345678" + b"rest", 8) == b"12345678"
    assert shortHeaderDCID(b"\x40rest", 0) == b""
    assert not isLongHeader(b"\x40")
    assert not isLongHeader(b"")
    with pytest.raises(QuicError):
        shortHeaderDCID(b"\x40123", 8)
    with pytest.raises(QuicError):
        shortHeaderDCID(RFC9001_PACKET, 8)


def test_longHeadersOfCoalescedPackets() -> None:
    """
    Coalesced packets are listed in order; a short header, or bytes that
    are no long header, end the list.
    """
    first = protect(crypto(0, b"x"), b"\xaa" * 8)
    handshake = protect(b"\x01" + bytes(30), b"\xaa" * 8, packetType=2)
    handshake = handshake[:15] + handshake[16:]
    headers = longHeaders(first + handshake + b"\x40short" + handshake)
    assert [h.packetType for h in headers] == [PacketType.INITIAL, PacketType.HANDSHAKE]
    assert [h.offset for h in headers] == [0, len(first)]
    assert len(longHeaders(first + b"\xc0\x00")) == 1
    assert len(longHeaders(first + bytes(100))) == 1


@pytest.mark.parametrize(
    "datagram",
    [
        b"\xc0",
        b"\xc0\x00\x00\x00\x01",
        b"\xc0\x00\x00\x00\x01\x15" + bytes(21),
        b"\xc0\x00\x00\x00\x01\x00\x00\x44",
        b"\xc0\x00\x00\x00\x01\x00\x00\x00\x41\x00",
        b"\x80\x00\x00\x00\x00\x00\x00\x00\x00\x01",
    ],
)
def test_malformedHeaders(datagram: bytes) -> None:
    """
    Cut-short headers, too-long IDs, lengths past the datagram and a
    ragged Version Negotiation list are all L{QuicError}s.
    """
    with pytest.raises(QuicError):
        parseLongHeader(datagram)


@FAST
@given(data=st.binary(max_size=200), length=st.integers(0, 20))
def test_headerFunctionsRaiseOnlyQuicError(data: bytes, length: int) -> None:
    with contextlib.suppress(QuicError):
        parseLongHeader(data)
    with contextlib.suppress(QuicError):
        longHeaders(data)
    with contextlib.suppress(QuicError):
        shortHeaderDCID(data, length)


def test_pureModule() -> None:
    """
    The reader is usable without an event loop or a TLS library.
    """
    assert frameworksImportedBy("gateway.wire.quic") == []


# The refusal of a connection (gateway.wire.quic.refusal).


@FAST
@given(
    version=st.sampled_from(SUPPORTED_VERSIONS),
    dcid=st.binary(min_size=8, max_size=20),
    scid=st.binary(min_size=0, max_size=20),
)
def test_aRefusalOpensUnderTheServersInitialKeys(
    version: int, dcid: bytes, scid: bytes
) -> None:
    """
    The refusal is a server Initial to the client's Source Connection ID,
    whose protection both the gateway's reader and aioquic's client
    remove, and whose frames are one CONNECTION_CLOSE (0x1c) with
    CONNECTION_REFUSED, no frame type, no reason, then PADDING.
    """
    datagram = connectionRefused(dcid, scid, version)
    header = parseLongHeader(datagram)
    assert header.packetType is PacketType.INITIAL
    assert (header.version, header.dcid, header.scid) == (version, scid, dcid)
    assert (header.token, header.length) == (b"", len(datagram))
    opened = decryptInitial(
        datagram, header.headerLength, initialKeys(dcid, version, "server"), 0
    )
    assert opened.packetNumber == 0
    assert opened.firstByte & 0x0C == 0  # reserved bits
    expected = bytes([0x1C, CONNECTION_REFUSED, 0, 0])
    assert opened.payload.rstrip(b"\0") == expected.rstrip(b"\0")
    assert opened.payload[:4] == expected
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=version)
    _, payload, packetNumber = pair.decrypt_packet(datagram, header.headerLength, 0)
    assert (payload, packetNumber) == (opened.payload, 0)
    # Far smaller than the 1,200-byte Initial it answers: no amplification.
    assert len(datagram) < 100


def test_aClientTakesTheRefusal() -> None:
    """
    aioquic's client, given the refusal of its first flight, ends its
    connection with the error the gateway sent.
    """
    for version in SUPPORTED_VERSIONS:
        connection = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True,
                server_name="nobody.example",
                alpn_protocols=["h3"],
                original_version=version,
                supported_versions=[version],
            )
        )
        now = time.monotonic()
        connection.connect(("127.0.0.1", 4433), now=now)
        (first, _), *_ = connection.datagrams_to_send(now=now)
        sent = parseLongHeader(first)
        answer = connectionRefused(sent.dcid, sent.scid, version)
        connection.receive_datagram(answer, ("127.0.0.1", 4433), now=now)
        # It drains (RFC 9000 10.2.2), then says it ended: at its next timer,
        # not at its handshake timeout.
        timer = connection.get_timer()
        assert timer is not None
        assert timer - now < 5
        connection.handle_timer(now=timer)
        events = iter(connection.next_event, None)
        terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert [(e.error_code, e.reason_phrase) for e in terminated] == [
            (CONNECTION_REFUSED, "")
        ]


@FAST
@given(st.integers(min_value=0, max_value=2**62 - 1))
def test_varintsReadBack(value: int) -> None:
    encoded = encodeVarint(value)
    assert readVarint(encoded, 0, len(encoded), "value") == (value, len(encoded))
    assert len(encoded) == min(s for s in (1, 2, 4, 8) if value < 1 << (8 * s - 2))


@pytest.mark.parametrize("value", [-1, 2**62])
def test_varintsOutOfRange(value: int) -> None:
    with pytest.raises(ValueError, match="varint"):
        encodeVarint(value)


@pytest.mark.parametrize("pnLength", [1, 2, 3, 4])
def test_aPayloadTooShortToSampleIsRefused(pnLength: int) -> None:
    """
    Header protection samples 16 bytes of ciphertext from 4 bytes after
    the packet number's start: a shorter payload cannot be protected.
    """
    keys = initialKeys(RFC_DCID, QUIC_V1, "server")
    header = b"\xc0" + QUIC_V1.to_bytes(4, "big") + b"\x00\x00\x00\x40\x20"
    fewest = minimumPayload(pnLength)
    assert fewest == 4 - pnLength
    encryptInitial(header, 0, pnLength, bytes(fewest), keys)
    if fewest:
        with pytest.raises(QuicError, match="too short for header protection"):
            encryptInitial(header, 0, pnLength, bytes(fewest - 1), keys)
