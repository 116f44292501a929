"""
Tests for L{gateway.wire.quic}: the RFC 9001 and RFC 9369 known answers,
long headers and Version Negotiation, real Initials from aioquic's client,
and properties over every way a ClientHello's CRYPTO data can be cut into
packets and datagrams.

The Initials the properties need are built here, by L{protect}, with the
module's own key functions: the known-answer tests show that those keys
and this builder reproduce the RFCs' packets byte for byte.
"""

from __future__ import annotations

import contextlib
import random
import time
from itertools import pairwise
from pathlib import Path

import pytest
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from C
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.clienthello import NEED_MORE, ClientHello, ClientHelloReader
from gateway.wire.quic import (
    QUIC_V1,
    QUIC_V2,
    SUPPORTED_VERSIONS,
    BadClientHello,
    ConnectionClosed,
    HelloTooLarge,
    InitialKeys,
    InitialReader,
    InitialTooSmall,
    LongHeader,
    NotQuicInitial,
    PacketType,
    QuicError,
    UndecryptableInitial,
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
    headerProtectionMask,
    initialSecret,
)
from gateway.wire.quic.frames import cryptoFrames
from gateway.wire.quic.initial import _CryptoStream
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


# A test-only writer of client Initials.


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
    C{payload} as its frames.  The Length field is always two bytes, as in
    the RFC's example.
    """
    if keys is None:
        keys = initialKeys(dcid, version)
    if packetType is None:
        packetType = {QUIC_V1: 0, QUIC_V2: 1}[version]
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
    headerLength = len(header)
    pn = (packetNumber & ((1 << 8 * pnLength) - 1)).to_bytes(pnLength, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ packetNumber).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, payload, header + pn)
    sample = sealed[4 - pnLength : 20 - pnLength]
    mask = headerProtectionMask(keys.hp, sample)
    return (
        bytes([first ^ (mask[0] & 0x0F)])
        + header[1:headerLength]
        + bytes(b ^ m for b, m in zip(pn, mask[1:], strict=False))
        + sealed
    )


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


# Real Initials from aioquic's client.


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_aioquicInitialInOneDatagram(version: int) -> None:
    datagrams = aioquicDatagrams("www.example.com", ["h3"], version)
    assert len(datagrams) == 1
    reader = InitialReader()
    hello = feedAll(reader, datagrams)
    assert (hello.serverName, hello.alpn) == ("www.example.com", ("h3",))
    assert reader.version == version
    header = parseLongHeader(datagrams[0])
    assert (reader.dcid, reader.scid) == (header.dcid, header.scid)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_aioquicInitialAcrossDatagrams(version: int) -> None:
    """
    A hello too large for one packet spans datagrams: each carries CRYPTO
    data, none but the last completes the hello.
    """
    datagrams = aioquicDatagrams("big.example.com", LONG_ALPN, version)
    assert len(datagrams) >= 2
    keys = initialKeys(parseLongHeader(datagrams[0]).dcid, version)
    for datagram in datagrams:
        header = parseLongHeader(datagram)
        _, payload, _ = decryptInitial(
            datagram[: header.length], header.headerLength, keys, 0
        )
        assert cryptoFrames(payload)
    hello = feedAll(InitialReader(), datagrams)
    assert hello.serverName == "big.example.com"
    assert hello.alpn == tuple(LONG_ALPN)
    assert feedAll(InitialReader(), datagrams[::-1]) == hello


def test_realHelloIsTheTCPHello() -> None:
    """
    The hello the properties split is a real one, too large for a packet.
    """
    assert len(HELLO) > 1200
    assert EXPECTED.serverName == "api.example.com"
    assert EXPECTED.alpn == tuple(LONG_ALPN)


# Every split, every order.


@st.composite
def flights(draw: st.DrawFn) -> list[bytes]:
    """
    The CRYPTO stream of L{HELLO} cut anywhere into frames, plus pieces
    sent again cut elsewhere (as a retransmission would), overlapping the
    others, with PING and ACK frames beside them,
    packed into packets and the packets into datagrams, in any order.
    """
    cuts = draw(st.lists(st.integers(1, len(HELLO) - 1), unique=True, max_size=6))
    edges = [0, *sorted(cuts), len(HELLO)]
    frames = [(a, HELLO[a:b]) for a, b in pairwise(edges)]
    retransmitted = draw(
        st.lists(
            st.tuples(st.integers(0, len(HELLO) - 1), st.integers(1, 400)),
            max_size=3,
        )
    )
    frames += [(a, HELLO[a : a + size]) for a, size in retransmitted]
    frames = draw(st.permutations(frames))
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    packets = []
    for number, (offset, data) in enumerate(frames):
        extra = draw(st.sampled_from([b"", b"\x01", b"\x02\x00\x00\x00\x00"]))
        packets.append(
            protect(
                extra + crypto(offset, data),
                version=version,
                packetNumber=number,
                pnLength=draw(st.integers(1, 4)),
            )
        )
    datagrams = []
    while packets:
        count = draw(st.integers(1, len(packets)))
        datagram = b"".join(packets[:count])
        packets = packets[count:]
        datagrams.append(datagram + bytes(max(0, 1200 - len(datagram))))
    return datagrams


@FAST
@given(datagrams=flights())
def test_anySplitAndOrderGivesTheSameHello(datagrams: list[bytes]) -> None:
    reader = InitialReader()
    results = [reader.feed(datagram) for datagram in datagrams]
    assert results[-1] == EXPECTED
    done = [r for r in results if r is not NEED_MORE]
    assert done == [EXPECTED] * len(done)


@FAST
@given(data=st.binary(max_size=1400))
def test_randomBytesRaiseOnlyQuicError(data: bytes) -> None:
    with contextlib.suppress(QuicError):
        InitialReader().feed(data)


@FAST
@given(
    datagram=st.sampled_from([RFC9001_PACKET, RFC9369_PACKET]),
    flips=st.lists(st.tuples(st.integers(0, 1199), st.integers(0, 7)), max_size=4),
    length=st.integers(0, 1300),
)
def test_flippedAndCutInitialsRaiseOnlyQuicError(
    datagram: bytes, flips: list[tuple[int, int]], length: int
) -> None:
    mutated = bytearray(datagram + bytes(100))[:length]
    for position, bit in flips:
        if position < len(mutated):
            mutated[position] ^= 1 << bit
    with contextlib.suppress(QuicError):
        InitialReader().feed(bytes(mutated))


@FAST
@given(frames=st.binary(min_size=1, max_size=1100))
def test_anyDecryptedFramesRaiseOnlyQuicError(frames: bytes) -> None:
    """
    Whatever a packet that authenticates holds, frames or a hello, the
    reader answers or raises a L{QuicError}.
    """
    with contextlib.suppress(QuicError):
        InitialReader().feed(initial(frames))


@FAST
@given(body=st.binary(max_size=300))
def test_anyHelloBodyRaisesOnlyQuicError(body: bytes) -> None:
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    with contextlib.suppress(QuicError):
        InitialReader().feed(initial(crypto(0, message)))


# The reader's rules.


def test_helloLargerThanTheBound() -> None:
    """
    A hello whose length says it will not fit is refused once its header
    arrives, and the refusal is final.
    """
    reader = InitialReader(maxSize=len(HELLO) - 1)
    with pytest.raises(HelloTooLarge) as caught:
        reader.feed(initial(crypto(0, HELLO[:100])))
    assert caught.value.reason == "too_large"
    with pytest.raises(HelloTooLarge):
        reader.feed(initial(crypto(100, HELLO[100:200]), packetNumber=1))
    assert feedAll(InitialReader(maxSize=len(HELLO)), [initial(crypto(0, HELLO))])


def test_cryptoDataPastTheBound() -> None:
    """
    CRYPTO data past the bound is refused even before the hello's header
    has arrived: nothing past C{maxSize} is ever buffered.
    """
    reader = InitialReader(maxSize=1000)
    with pytest.raises(HelloTooLarge):
        reader.feed(initial(crypto(990, b"x" * 11)))


def test_smallDatagramWithAnInitial() -> None:
    datagram = initial(crypto(0, HELLO[:10]), size=1199)
    assert len(datagram) == 1199
    reader = InitialReader()
    with pytest.raises(InitialTooSmall) as caught:
        reader.feed(datagram)
    assert caught.value.reason == "too_small"
    # Not final: the same data in a datagram of the right size is read.
    assert reader.feed(initial(crypto(0, HELLO))) == EXPECTED


def test_undecryptableDatagramIsNotFinal() -> None:
    """
    A forged datagram (keys of another connection ID) is refused, and the
    reader reads the real one after it.
    """
    forged = initial(crypto(0, HELLO), keys=initialKeys(b"other", QUIC_V1))
    reader = InitialReader()
    with pytest.raises(UndecryptableInitial) as caught:
        reader.feed(forged)
    assert caught.value.reason == "undecryptable"
    assert reader.dcid is None
    assert reader.feed(initial(crypto(0, HELLO))) == EXPECTED


def test_notAnInitial() -> None:
    reader = InitialReader()
    with pytest.raises(NotQuicInitial) as caught:
        reader.feed(b"\x40" + bytes(1300))
    assert caught.value.reason == "not_initial"
    handshake = protect(b"\x01" + bytes(1200), packetType=2)
    handshake = handshake[:15] + handshake[16:]
    with pytest.raises(NotQuicInitial):
        reader.feed(handshake)
    # Once an Initial was read, datagrams without one are skipped.
    assert reader.feed(initial(crypto(0, HELLO[:500]))) is NEED_MORE
    assert reader.feed(handshake) is NEED_MORE
    assert reader.feed(b"\x40" + bytes(50)) is NEED_MORE
    assert reader.feed(initial(crypto(500, HELLO[500:]), packetNumber=1)) == EXPECTED


def test_coalescedPacketsOtherThanInitialsAreSkipped() -> None:
    """
    Only Initials with the first packet's DCID are read: a Handshake
    packet, and an Initial of another connection ID, are not.
    """
    handshake = protect(b"\x01" + bytes(40), packetType=2)
    handshake = handshake[:15] + handshake[16:]
    stranger = protect(crypto(0, b"\x02" * 100), b"stranger")
    first = protect(crypto(0, HELLO[:700]))
    second = protect(crypto(700, HELLO[700:]), packetNumber=1)
    datagram = first + handshake + second + stranger
    assert InitialReader().feed(datagram) == EXPECTED


def test_keysStayAfterTheClientChangesDCID() -> None:
    """
    After the server's first Initial the client sends to the server's
    connection ID, still with the keys of its first DCID.
    """
    reader = InitialReader()
    assert reader.feed(initial(crypto(0, HELLO[:600]))) is NEED_MORE
    later = initial(
        crypto(600, HELLO[600:]),
        dcid=b"server-chosen",
        keys=initialKeys(RFC_DCID, QUIC_V1),
        packetNumber=1,
    )
    assert reader.feed(later) == EXPECTED
    assert reader.dcid == RFC_DCID


def test_initialAfterRetryStartsOver() -> None:
    """
    After a Retry, the client's Initial has a token, a new DCID and keys
    from that DCID: the reader starts over on them.
    """
    reader = InitialReader()
    assert reader.feed(initial(crypto(0, HELLO[:600]))) is NEED_MORE
    retried = initial(
        crypto(0, HELLO), dcid=b"retry-dcid", token=b"t" * 20, packetNumber=1
    )
    assert reader.feed(retried) == EXPECTED
    assert reader.dcid == b"retry-dcid"
    # A token alone (NEW_TOKEN) is no Retry: the keys stay.
    reader = InitialReader()
    assert reader.feed(initial(crypto(0, HELLO[:600]), token=b"n")) is NEED_MORE
    assert reader.dcid == RFC_DCID


def test_restartForgetsTheKeys() -> None:
    reader = InitialReader()
    assert reader.feed(initial(crypto(0, HELLO))) == EXPECTED
    reader.restart()
    assert (reader.version, reader.dcid, reader.scid) == (None, None, None)
    with pytest.raises(NotQuicInitial):
        reader.feed(b"\x40" + bytes(1300))
    assert (
        reader.feed(initial(crypto(0, HELLO), dcid=b"new", packetNumber=1)) == EXPECTED
    )
    assert reader.dcid == b"new"


def test_connectionCloseIsFinal() -> None:
    reader = InitialReader()
    close = b"\x1c" + varint(0x0A) + varint(0) + varint(3) + b"bye"
    with pytest.raises(ConnectionClosed) as caught:
        reader.feed(initial(close))
    assert caught.value.errorCode == 0x0A
    assert caught.value.reason == "connection_close"
    with pytest.raises(ConnectionClosed):
        reader.feed(initial(crypto(0, HELLO), packetNumber=1))


@pytest.mark.parametrize(
    "frames",
    [
        b"\x08\x00\x05hello",  # STREAM
        b"\x1d\x00\x00\x00",  # application CONNECTION_CLOSE
        b"\x06\x00\x44\x00ab",  # CRYPTO of 1024 bytes in a short packet
    ],
)
def test_framesAnInitialMayNotCarry(frames: bytes) -> None:
    reader = InitialReader()
    with pytest.raises(QuicError):
        reader.feed(initial(frames, size=0) + bytes(1200))


def test_differentDataAtTheSameOffset() -> None:
    reader = InitialReader()
    assert reader.feed(initial(crypto(100, b"abcdef"))) is NEED_MORE
    with pytest.raises(QuicError, match="differs"):
        reader.feed(initial(crypto(102, b"XY"), packetNumber=1))


def test_notAClientHello() -> None:
    """
    A handshake message of another type, and a hello the TLS parser
    refuses, are L{BadClientHello}s with the parser's reason.
    """
    with pytest.raises(BadClientHello):
        InitialReader().feed(initial(crypto(0, b"\x02\x00\x00\x01\x00")))
    with pytest.raises(BadClientHello) as caught:
        InitialReader().feed(initial(crypto(0, b"\x01\x00\x00\x02\x03\x03")))
    assert caught.value.reason == "bad_length"


def test_pureModule() -> None:
    """
    The reader is usable without an event loop or a TLS library.
    """
    assert frameworksImportedBy("gateway.wire.quic") == []


@pytest.mark.parametrize("reserved", [1, 2, 3])
def test_reservedBitsSetAreFinal(reserved: int) -> None:
    """
    Reserved bits under header protection are only seen once the packet
    authenticates: the client itself broke the rule, so the flow is over.
    """
    reader = InitialReader()
    with pytest.raises(QuicError, match="reserved") as caught:
        reader.feed(initial(crypto(0, HELLO), reserved=reserved))
    assert reader.error is caught.value
    with pytest.raises(QuicError, match="reserved"):
        reader.feed(initial(crypto(0, HELLO), packetNumber=1))


def test_datagramErrorsAreNotFinal() -> None:
    reader = InitialReader()
    for datagram in (b"\x40" + bytes(1300), initial(crypto(0, HELLO[:100]), size=1000)):
        with pytest.raises(QuicError):
            reader.feed(datagram)
        assert reader.error is None
    assert reader.feed(initial(crypto(0, HELLO))) == EXPECTED
    assert reader.error is None


def test_helloOneByteAtATimeInReverse() -> None:
    """
    A hello sent a byte per CRYPTO frame, last byte first (a worst case
    for reassembly, over a few dozen datagrams), still reads.
    """
    frames = [crypto(i, HELLO[i : i + 1]) for i in reversed(range(len(HELLO)))]
    datagrams = []
    for number, start in enumerate(range(0, len(frames), 200)):
        datagrams.append(
            initial(b"".join(frames[start : start + 200]), packetNumber=number)
        )
    assert len(datagrams) >= 2
    assert feedAll(InitialReader(), datagrams) == EXPECTED


@FAST
@given(
    pieces=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 100)), min_size=1, max_size=30
    )
)
def test_cryptoStreamAgainstAModel(pieces: list[tuple[int, int]]) -> None:
    """
    Whatever pieces of a stream arrive, in whatever order, the stream holds
    exactly their union: its contiguous prefix is the model's.
    """
    stream = bytes(random.Random(len(pieces)).randbytes(400))
    crypto = _CryptoStream(400)
    received: set[int] = set()
    for offset, size in pieces:
        crypto.add(offset, stream[offset : offset + size])
        received.update(range(offset, min(offset + size, 400)))
        prefix = next(i for i in range(401) if i not in received)
        assert crypto.contiguous == prefix
        assert crypto.prefix(prefix) == stream[:prefix]


@FAST
@given(data=st.binary(max_size=200), length=st.integers(0, 20))
def test_headerFunctionsRaiseOnlyQuicError(data: bytes, length: int) -> None:
    with contextlib.suppress(QuicError):
        parseLongHeader(data)
    with contextlib.suppress(QuicError):
        longHeaders(data)
    with contextlib.suppress(QuicError):
        shortHeaderDCID(data, length)


def test_clientSwitchesToVersion2() -> None:
    """
    With compatible version negotiation (RFC 9368) the client's later
    Initials are v2, sent to the server's connection ID, with v2 keys from
    its first DCID.
    """
    reader = InitialReader()
    assert reader.feed(initial(crypto(0, HELLO[:700]))) is NEED_MORE
    later = protect(
        crypto(700, HELLO[700:]),
        b"server-chosen",
        version=QUIC_V2,
        packetNumber=1,
        keys=initialKeys(RFC_DCID, QUIC_V2),
    )
    assert reader.feed(later + bytes(1200)) == EXPECTED
    assert (reader.version, reader.dcid) == (QUIC_V2, RFC_DCID)


def test_ackFramesBesideTheHello() -> None:
    """
    ACK frames, with ranges and ECN counts, and PINGs are stepped over.
    """
    ack = (
        b"\x02" + varint(5) + varint(0) + varint(1) + varint(0) + varint(1) + varint(2)
    )
    ackEcn = b"\x03" + varint(7) + varint(3) + varint(0) + varint(1) + b"\x01\x02\x03"
    frames = ack + b"\x01" + crypto(0, HELLO) + ackEcn
    assert InitialReader().feed(initial(frames)) == EXPECTED


def test_ackClaimingMoreRangesThanItHas() -> None:
    ack = b"\x02" + varint(5) + varint(0) + varint(10**6, 4) + varint(0)
    with pytest.raises(QuicError, match="ranges"):
        InitialReader().feed(initial(ack + crypto(0, HELLO)))


def test_connectionCloseReason() -> None:
    close = b"\x1c" + varint(0x0128) + varint(6) + varint(7) + b"no\xffluck"
    with pytest.raises(ConnectionClosed, match="0x128") as caught:
        InitialReader().feed(initial(crypto(0, HELLO[:10]) + close))
    assert "no\ufffdluck" in str(caught.value)
