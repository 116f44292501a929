"""
Tests for L{gateway.wire.proxyreader}: what reaches the next stage after a
header, the refusals (each as soon as its byte arrives), and that nothing
but a L{ProxyHeaderError} escapes the reader.  Examples from the
specification and round trips: L{tests.wire.test_proxyprotocol}, whose
builders these tests share.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.testing import makeClientHello
from gateway.wire.proxyprotocol import (
    NEED_MORE,
    SIGNATURE_V2,
    TLV,
    BadProxyAddress,
    BadProxyTLV,
    Command,
    NoProxyHeader,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderTooLong,
    ProxyHeaderTruncated,
    UnsupportedProxyHeader,
    encode,
)
from gateway.wire.proxyreader import ProxyHeaderReader
from tests.wire.test_proxyprotocol import (
    FAST,
    IPV4_BLOCK,
    SPEC_V1,
    SPEC_V1_HEADER,
    headers,
    read,
    refused,
    segments,
    tlv,
    v2,
)

# --- what reaches the next stage --------------------------------------------------------


def test_restIsExactlyWhatFollowedTheHeader() -> None:
    hello = makeClientHello("db.example.com")
    _, rest = read(SPEC_V1 + hello)
    assert rest == hello
    _, rest = read(encode(ProxyHeader(2, Command.LOCAL)) + hello)
    assert rest == hello


def test_readerStartsOverAfterAHeader() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(SPEC_V1[:10]) is NEED_MORE
    assert reader.buffered == SPEC_V1[:10]
    assert reader.feed(SPEC_V1[10:] + b"x") == (SPEC_V1_HEADER, b"x")
    assert reader.buffered == b""


def test_emptyFeedNeedsMore() -> None:
    assert ProxyHeaderReader().feed(b"") is NEED_MORE


# --- refusals ---------------------------------------------------------------------


def test_aClientHelloWithoutHeaderIsRefusedAtItsFirstByte() -> None:
    error = refused(makeClientHello("db.example.com")[:1])
    assert isinstance(error, NoProxyHeader)
    assert error.reason == "missing"


@pytest.mark.parametrize("position", range(12))
def test_badSignatureByteIsRefusedWhenItArrives(position: int) -> None:
    data = bytearray(SIGNATURE_V2)
    data[position] ^= 0x40
    reader = ProxyHeaderReader()
    for i in range(position):
        assert reader.feed(bytes(data[i : i + 1])) is NEED_MORE
    with pytest.raises(NoProxyHeader):
        reader.feed(bytes(data[position : position + 1]))


@pytest.mark.parametrize(
    "start", [b"PROXX", b"proxy ", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\x00"]
)
def test_notASignature(start: bytes) -> None:
    assert isinstance(refused(start), NoProxyHeader)


@pytest.mark.parametrize(
    ("verCmd", "family", "message"),
    [
        (0x11, 0x11, "version 1"),
        (0x31, 0x11, "version 3"),
        (0x01, 0x11, "version 0"),
        (0x22, 0x11, "command 0x2"),
        (0x2F, 0x11, "command 0xf"),
        (0x21, 0x41, "family/transport 0x41"),
        (0x21, 0x13, "family/transport 0x13"),
        (0x21, 0x10, "family/transport 0x10"),
        (0x21, 0x01, "family/transport 0x01"),
    ],
)
def test_badVersionCommandOrFamilyIsRefusedAtThatByte(
    verCmd: int, family: int, message: str
) -> None:
    """
    Section 2.2: receivers "must only accept" version 2, "must drop"
    unassigned commands and reject family/transport values not listed.
    """
    data = SIGNATURE_V2 + bytes([verCmd, family])
    cut = 13 if "family" not in message else 14
    with pytest.raises(UnsupportedProxyHeader, match=message):
        ProxyHeaderReader().feed(data[:cut])


@pytest.mark.parametrize(
    ("family", "size"), [(0x11, 12), (0x12, 12), (0x21, 36), (0x22, 36), (0x31, 216)]
)
def test_addressBlockShorterThanItsFamilyIsRefused(family: int, size: int) -> None:
    error = refused(v2(1, family, bytes(size - 1)))
    assert isinstance(error, BadProxyAddress)
    assert f"needs {size}" in str(error)


@pytest.mark.parametrize(
    ("family", "size"), [(0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216)]
)
def test_udpAndUnixFallBackToUnspecified(family: int, size: int) -> None:
    """
    Section 2.2: a receiver may support only some families "provided that
    it automatically falls back to the UNSPEC mode" for the others.
    """
    header, rest = read(v2(1, family, b"\x01" * size + tlv(0x02, b"a")) + b"r")
    assert (header.source, header.destination, header.authority, rest) == (
        None,
        None,
        "a",
        b"r",
    )


def test_truncatedHeadersAreTruncated() -> None:
    for data in [
        SPEC_V1[:20],
        encode(SPEC_V1_HEADER)[:1],
        v2(1, 0x11, IPV4_BLOCK)[:20],
    ]:
        reader = ProxyHeaderReader()
        assert reader.feed(data) is NEED_MORE
        with pytest.raises(ProxyHeaderTruncated, match=f"after {len(data)} bytes"):
            reader.end()


def test_nothingAtAllIsMissing() -> None:
    with pytest.raises(NoProxyHeader, match="before a PROXY header"):
        ProxyHeaderReader().end()


def test_v1LongerThan107BytesIsRefused() -> None:
    """Section 2.1: "If the CRLF sequence is not found in the first 107 characters"."""
    worst = (
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535"
    )
    assert len(worst + b"\r\n") == 107
    error = refused(worst + b"0\r\n")
    assert isinstance(error, ProxyHeaderTooLong)
    assert error.reason == "too_long"
    reader = ProxyHeaderReader()
    assert reader.feed(worst[:100]) is NEED_MORE
    with pytest.raises(ProxyHeaderTooLong):
        reader.feed(b"x" * 8)


@pytest.mark.parametrize(
    ("line", "kind", "message"),
    [
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", ProxyHeaderError, "0x0a"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX", ProxyHeaderError, "CR"),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\t443\r\n",
            ProxyHeaderError,
            "0x09",
        ),
        (b"PROXY TCP4 192.168.0.\xc3\xa9 1.1.1.1 1 1\r\n", ProxyHeaderError, "0xc3"),
        (b"PROXY\r\n", ProxyHeaderError, "no space"),
        (b"PROXY \r\n", UnsupportedProxyHeader, "''"),
        (b"PROXY UDP4 1.1.1.1 1.1.1.1 1 1\r\n", UnsupportedProxyHeader, "UDP4"),
        (b"PROXY tcp4 1.1.1.1 1.1.1.1 1 1\r\n", UnsupportedProxyHeader, "tcp4"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1\r\n", ProxyHeaderError, "5 fields"),
        (b"PROXY TCP4 1.1.1.1  1.1.1.1 1 1\r\n", ProxyHeaderError, "7 fields"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1 \r\n", ProxyHeaderError, "7 fields"),
        (b"PROXY  TCP4 1.1.1.1 1.1.1.1 1 1\r\n", UnsupportedProxyHeader, "''"),
        (b"PROXY TCP4 256.1.1.1 1.1.1.1 1 1\r\n", BadProxyAddress, "256.1.1.1"),
        (b"PROXY TCP4 01.1.1.1 1.1.1.1 1 1\r\n", BadProxyAddress, "01.1.1.1"),
        (b"PROXY TCP4 1.1.1 1.1.1.1 1 1\r\n", BadProxyAddress, "'1.1.1'"),
        (b"PROXY TCP4 1.1.1.1 ::1 1 1\r\n", BadProxyAddress, "::1"),
        (b"PROXY TCP6 1.1.1.1 ::1 1 1\r\n", BadProxyAddress, "1.1.1.1"),
        (b"PROXY TCP6 ::ffff:1.1.1.1 ::1 1 1\r\n", BadProxyAddress, "::ffff"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 1\r\n", BadProxyAddress, "fe80"),
        (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 1\r\n", BadProxyAddress, "1:2:3"),
        (b"PROXY TCP6 :: ::1 1 1\r\n", None, None),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 65536 1\r\n", BadProxyAddress, "65536"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 0443 1\r\n", BadProxyAddress, "0443"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 -1 1\r\n", BadProxyAddress, "-1"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 +1 1\r\n", BadProxyAddress, "+1"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 \xd9\xa1\r\n", ProxyHeaderError, "0xd9"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 0 0\r\n", None, None),
    ],
)
def test_malformedV1(
    line: bytes, kind: type[ProxyHeaderError] | None, message: str | None
) -> None:
    if kind is None:
        read(line)
        return
    error = refused(line)
    assert type(error) is kind
    assert message is not None
    assert message in str(error)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (tlv(0x02, b"a")[:2], "cut at offset"),
        (tlv(0x02, b"abc")[:-1], "overruns"),
        (tlv(0x02, b"\xff\xfe"), "AUTHORITY is not UTF-8"),
        (tlv(0x20, b"\x01\x00\x00\x00"), "under 5"),
        (tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLS")[:-1]), "overruns"),
        (tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, "TLSé".encode())), "ASCII"),
        (tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x22, b"\xff")), "UTF-8"),
        (tlv(0x05, bytes(129)), "over 128"),
        (tlv(0x03, bytes(3)), "not 4"),
        (tlv(0x03, bytes(4)), "CRC32C"),
    ],
)
def test_malformedTLVs(block: bytes, message: str) -> None:
    error = refused(v2(1, 0x11, IPV4_BLOCK + block))
    assert isinstance(error, BadProxyTLV)
    assert error.reason == "bad_tlv"
    assert message in str(error)


def test_unknownTLVsAreKeptAndTolerated() -> None:
    """Section 2.2: "A receiver may choose to skip over and ignore the TLVs"."""
    header, _ = read(v2(1, 0x11, IPV4_BLOCK + tlv(0xE5, b"x") + tlv(0x04, b"")))
    assert header.tlvs == (TLV(0xE5, b"x"), TLV(0x04, b""))
    assert header.authority is None
    assert header.ssl is None


def test_everyErrorHasAReasonSlug() -> None:
    reasons = {
        cls.reason
        for cls in [
            ProxyHeaderError,
            NoProxyHeader,
            ProxyHeaderTruncated,
            ProxyHeaderTooLong,
            UnsupportedProxyHeader,
            BadProxyAddress,
            BadProxyTLV,
        ]
    }
    assert len(reasons) == 7
    assert all(r.replace("_", "").isalpha() for r in reasons)


# --- nothing but ProxyHeaderError escapes -------------------------------------------


def feedAll(pieces: list[bytes]) -> None:
    reader = ProxyHeaderReader()
    with contextlib.suppress(ProxyHeaderError):
        for piece in pieces:
            reader.feed(piece)
        reader.end()


@FAST
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_arbitraryBytesRaiseOnlyProxyHeaderError(data: bytes, cuts: list[int]) -> None:
    feedAll(segments(data, cuts))


@FAST
@given(
    header=headers(),
    position=st.integers(min_value=0, max_value=10_000),
    value=st.integers(min_value=0, max_value=255),
    junk=st.binary(max_size=40),
)
def test_mutatedHeadersRaiseOnlyProxyHeaderError(
    header: ProxyHeader, position: int, value: int, junk: bytes
) -> None:
    data = bytearray(encode(header))
    data[position % len(data)] = value
    feedAll([bytes(data)])
    feedAll([bytes(data[: position % len(data)]) + junk])


@FAST
@given(
    prefix=st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", SIGNATURE_V2]),
    tail=st.binary(max_size=120),
)
def test_plausiblePrefixesRaiseOnlyProxyHeaderError(prefix: bytes, tail: bytes) -> None:
    feedAll([prefix + tail])


@FAST
@given(
    family=st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]),
    block=st.binary(max_size=260),
)
def test_v2BlocksRaiseOnlyProxyHeaderError(family: int, block: bytes) -> None:
    feedAll([v2(1, family, block)])
    feedAll([v2(1, family, block)[:-1]])
