"""
Tests for L{gateway.wire.helloreader}: every way TCP and the record layer
can cut a ClientHello, and the bound on what the reader buffers.  The
builders of hand-made hellos are those of L{tests.wire.hellobuilders}.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.testing import splitIntoRecords
from gateway.wire.clienthello import (
    NEED_MORE,
    ClientHello,
    ClientHelloTooLarge,
    NotTLS,
)
from gateway.wire.helloreader import ClientHelloReader
from tests.wire.hellobuilders import (
    FAST,
    HELLO,
    PARSED,
    alpn,
    cut,
    extension,
    feedAll,
    helloBody,
    oneByteAtATime,
    record,
    sni,
    wrap,
)

# Segmentation: TCP and the record layer may cut anywhere.


@FAST
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(HELLO) - 1), unique=True))
def test_anySegmentationGivesTheSameHello(cuts: list[int]) -> None:
    assert feedAll(cut(HELLO, cuts)) == PARSED


def test_oneByteFeeds() -> None:
    assert feedAll(oneByteAtATime(HELLO)) == PARSED


@FAST
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
)
def test_anyRecordSplitGivesTheSameHello(sizes: list[int], cuts: list[int]) -> None:
    """
    Record boundaries and TCP boundaries are independent of each other and
    of the handshake message; none of them changes the hello.
    """
    data = splitIntoRecords(HELLO, sizes)
    cuts = [c for c in cuts if c < len(data)]
    assert feedAll(cut(data, cuts), maxSize=len(data)) == PARSED


def test_helloInOneByteRecordsFedOneByteAtATime() -> None:
    data = splitIntoRecords(HELLO, [1])
    assert feedAll(oneByteAtATime(data), maxSize=len(data)) == PARSED


def test_multiKilobyteHelloInSeveralRecords() -> None:
    """
    A hello of several KB (say, more post-quantum key shares) split into
    records as a client might, under the default limit.
    """
    body = helloBody(sni(b"big.example.com"), extension(51, bytes(6000)), alpn(b"h2"))
    data = splitIntoRecords(wrap(body), [2000])
    assert len(data) > 6000
    assert data.count(b"\x16\x03\x01\x07\xd0") == 3
    hello = feedAll(cut(data, range(1, len(data), 1400)))
    assert hello.serverName == "big.example.com"
    assert hello.alpn == ("h2",)
    assert hello.extensions == (0, 51, 16)


def test_helloLargerThanARecordNeedsTwo() -> None:
    """
    A ClientHello over 2^14 bytes cannot fit in one record; with a limit
    that allows it, it reassembles from full-size records.
    """
    body = helloBody(sni(b"huge.example.com"), extension(51, bytes(20000)))
    data = splitIntoRecords(wrap(body), [2**14])
    assert data.count(b"\x16\x03\x01\x40\x00") == 1
    assert feedAll([data], maxSize=64 * 1024).serverName == "huge.example.com"
    with pytest.raises(ClientHelloTooLarge):
        ClientHelloReader(16384).feed(data)


def test_theDefaultLimitHoldsAHelloInOneFullRecord() -> None:
    """
    A ClientHello may fill one record: 2^14 bytes of fragment, 16,389 on
    the wire.  The default limit holds it, and one spread over several
    full records too.
    """
    body = helloBody(sni(b"full.example.com"), extension(21, bytes(16384 - 4 - 106)))
    data = wrap(body)
    assert len(data) == 16389, len(data)
    hello = ClientHelloReader().feed(data)
    assert isinstance(hello, ClientHello)
    assert hello.serverName == "full.example.com"
    several = splitIntoRecords(
        wrap(helloBody(sni(b"big.example.com"), extension(21, bytes(40000)))), [2**14]
    )
    hello = ClientHelloReader().feed(several)
    assert isinstance(hello, ClientHello)
    assert hello.serverName == "big.example.com"


def test_truncatedInputNeedsMore() -> None:
    """
    Every proper prefix is a hello not yet complete, never an error: only
    the caller's timeout can tell a slow client from a dead one.
    """
    data = splitIntoRecords(HELLO, [700])
    for end in range(len(data)):
        reader = ClientHelloReader()
        assert reader.feed(data[:end]) is NEED_MORE
        assert reader.buffered == data[:end]


def test_bytesAfterTheHelloAreBufferedNotParsed() -> None:
    """
    Bytes after the hello's records (a client that speaks early) stay in
    C{buffered} for the handoff, whatever they are.
    """
    after = record(b"\x01", contentType=20, version=b"\x03\x03") + b"junk"
    reader = ClientHelloReader()
    assert reader.feed(HELLO + after) == PARSED
    assert reader.buffered == HELLO + after


def test_feedAfterTheHelloAppendsAndReturnsIt() -> None:
    reader = ClientHelloReader()
    assert reader.feed(HELLO) == PARSED
    assert reader.feed(b"more") == PARSED
    assert reader.buffered == HELLO + b"more"


def test_feedAfterAnErrorRaisesItAgain() -> None:
    reader = ClientHelloReader()
    with pytest.raises(NotTLS) as first:
        reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(NotTLS) as second:
        reader.feed(HELLO)
    assert second.value is first.value
    assert reader.buffered == b"GET / HTTP/1.1\r\n"


# The size bound.


def test_tooLarge() -> None:
    reader = ClientHelloReader(maxSize=1000)
    with pytest.raises(ClientHelloTooLarge) as e:
        reader.feed(HELLO)
    assert e.value.reason == "too_large"
    assert "1000" in str(e.value)


def test_tooLargeIsSeenFromTheHeaders() -> None:
    """
    A hello whose lengths cannot fit is refused from its headers, before
    the client spends the bytes.
    """
    reader = ClientHelloReader(maxSize=1000)
    with pytest.raises(ClientHelloTooLarge):
        reader.feed(HELLO[:5])
    reader = ClientHelloReader(maxSize=1000)
    with pytest.raises(ClientHelloTooLarge, match="cannot fit"):
        reader.feed(splitIntoRecords(HELLO, [4, 500])[:9])


def test_tooLargeWhenRecordOverheadExceedsTheLimit() -> None:
    """
    Small records make a hello that fits the limit as one record overflow
    it: the limit counts what is buffered, headers included.
    """
    data = splitIntoRecords(HELLO, [1])
    for maxSize in (len(HELLO), len(data) - 1):
        reader = ClientHelloReader(maxSize)
        results: list[object] = []
        with contextlib.suppress(ClientHelloTooLarge):
            for byte in oneByteAtATime(data):
                results.append(reader.feed(byte))
                assert len(reader.buffered) <= maxSize
        assert set(results) == {NEED_MORE}
        assert len(results) < len(data)
        with pytest.raises(ClientHelloTooLarge):
            reader.feed(b"")
    assert feedAll([data], maxSize=len(data)) == PARSED


def test_helloEndingAtTheLimitFits() -> None:
    assert feedAll([HELLO + b"x" * 100], maxSize=len(HELLO)) == PARSED


@FAST
@given(
    maxSize=st.integers(min_value=1, max_value=2 * len(HELLO)),
    chunk=st.integers(min_value=1, max_value=2000),
    sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=4),
)
def test_neverBuffersBeyondTheLimit(maxSize: int, chunk: int, sizes: list[int]) -> None:
    """
    While the answer is L{NEED_MORE}, at most C{maxSize} bytes are held;
    so at most C{maxSize} plus one chunk are ever buffered.
    """
    data = splitIntoRecords(HELLO, sizes) + b"\x17" * 3000
    reader = ClientHelloReader(maxSize)
    try:
        for start in range(0, len(data), chunk):
            result = reader.feed(data[start : start + chunk])
            if result is NEED_MORE:
                assert len(reader.buffered) <= maxSize
            else:
                assert result == PARSED
                assert len(data) - 3000 <= maxSize
                return
    except ClientHelloTooLarge:
        assert len(reader.buffered) <= maxSize + chunk
        return
    raise AssertionError("neither a hello nor ClientHelloTooLarge")
