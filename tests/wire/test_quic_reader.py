"""
Tests for L{gateway.wire.quic.initial}: real Initials from aioquic's client,
properties over every way a ClientHello's CRYPTO data can be cut into
packets and datagrams and sent in any order, the reader's rules (sizes,
keys, Retry, errors that end a flow and errors that drop a datagram), and
malformed input that must fail with a L{QuicError} and nothing else.

The Initials are built by the writer of L{tests.wire.test_quic}, which the
known-answer tests there check against the RFCs' packets.
"""

from __future__ import annotations

import contextlib
import random
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.clienthello import NEED_MORE
from gateway.wire.quic import (
    QUIC_V1,
    QUIC_V2,
    SUPPORTED_VERSIONS,
    BadClientHello,
    ConnectionClosed,
    HelloTooLarge,
    InitialReader,
    InitialTooSmall,
    NotQuicInitial,
    QuicError,
    UndecryptableInitial,
    initialKeys,
    parseLongHeader,
)
from gateway.wire.quic.crypto import decryptInitial
from gateway.wire.quic.frames import cryptoFrames
from gateway.wire.quic.initial import _CryptoStream
from tests.wire.test_quic import (
    DATA,
    EXPECTED,
    FAST,
    HELLO,
    LONG_ALPN,
    RFC9001_PACKET,
    RFC9369_PACKET,
    RFC_DCID,
    aioquicDatagrams,
    crypto,
    feedAll,
    initial,
    parsedOverTCP,
    protect,
    varint,
)

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


def test_postQuantumHelloOverTwoDatagrams() -> None:
    """
    A real hello with an X25519MLKEM768 key share (captured from OpenSSL,
    see C{tests/data/clienthello/README.txt}) does not fit one 1200-byte
    datagram: carried in two Initials, as a post-quantum QUIC client sends
    it, it reads as over TCP.
    """
    records = (DATA.parent / "clienthello" / "pyopenssl_pq.bin").read_bytes()
    message = records[5:]
    assert len(message) == int.from_bytes(records[3:5], "big") > 1200
    expected = parsedOverTCP(message)
    assert 0x11EC in expected.supportedGroups
    assert expected.serverName == "pq.example.com"
    half = len(message) // 2
    datagrams = [
        initial(crypto(0, message[:half])),
        initial(crypto(half, message[half:]), packetNumber=1),
    ]
    assert all(len(d) == 1200 for d in datagrams)
    assert feedAll(InitialReader(), datagrams) == expected
    assert feedAll(InitialReader(), datagrams[::-1]) == expected
