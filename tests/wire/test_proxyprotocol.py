"""
Tests for L{gateway.wire.proxyprotocol}: the specification's own examples byte
for byte, round trips through every segmentation, and what a sender builds
(malformed headers that must fail with a L{ProxyHeaderError}, and nothing
else, as soon as their bytes show it: L{tests.wire.test_proxyreader}).

The examples come from HAProxy's C{doc/proxy-protocol.txt}, revision
2020/03/05 ("The PROXY protocol, Versions 1 & 2", Willy Tarreau,
https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt): section 2.1
(the v1 example line and the maximum line lengths), section 2.2 (the v2
signature, the version/command byte, the family/transport bytes and the
C{proxy_hdr_v2}/C{proxy_addr} layouts), section 2.2.6 (C{pp2_tlv_ssl}) and
section 9 (the receiver's version detection).  CRC32C test vectors: RFC
3720, appendix B.4, which RFC 4960 appendix B (the checksum the
specification names) shares.
"""

from __future__ import annotations

import ipaddress
import struct
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.proxyprotocol import (
    NEED_MORE,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_CRC32C,
    PP2_TYPE_UNIQUE_ID,
    SIGNATURE_V2,
    TLV,
    BadProxyTLV,
    Command,
    ProxyAddress,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderTruncated,
    SSLInfo,
    authorityTLV,
    connectionHeader,
    crc32c,
    encode,
    sslTLV,
)
from gateway.wire.proxyreader import ProxyHeaderReader

FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
SPEC_REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
SPEC_V1_HEADER = ProxyHeader(
    1,
    Command.PROXY,
    ProxyAddress("192.168.0.1", 56324),
    ProxyAddress("192.168.0.11", 443),
)


def read(data: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed C{data} at once; the header must be complete."""
    result = ProxyHeaderReader().feed(data)
    assert result is not NEED_MORE, data
    return result


def refused(data: bytes) -> ProxyHeaderError:
    """Feed C{data} at once; it must be refused."""
    with pytest.raises(ProxyHeaderError) as caught:
        ProxyHeaderReader().feed(data)
    return caught.value


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    """A version 2 header built field by field from C{struct proxy_hdr_v2}."""
    return SIGNATURE_V2 + bytes([version << 4 | command, family]) + vector(block)


def vector(block: bytes) -> bytes:
    return struct.pack("!H", len(block)) + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + vector(value)


IPV4_BLOCK = (
    bytes([192, 168, 0, 1]) + bytes([192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)
)


# --- the specification's examples -----------------------------------------------------


def test_specificationV1ExampleBeforeAnHTTPRequest() -> None:
    """Section 2.1: the example line, followed by the request it precedes."""
    assert read(SPEC_V1 + SPEC_REQUEST) == (SPEC_V1_HEADER, SPEC_REQUEST)
    assert encode(SPEC_V1_HEADER) == SPEC_V1


@pytest.mark.parametrize(
    ("line", "length"),
    [
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
        (
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            104,
        ),
        (b"PROXY UNKNOWN\r\n", 15),
        (
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            107,
        ),
    ],
    ids=["tcp4", "tcp6", "unknown-short", "unknown-worst-case"],
)
def test_specificationMaximumLinesAreAccepted(line: bytes, length: int) -> None:
    """Section 2.1: every maximum line length the receiver must support."""
    assert len(line) == length
    header, rest = read(line + b"x")
    assert rest == b"x"
    assert header.version == 1


def test_specificationMaximumLinesEncodeByteForByte() -> None:
    top4 = ProxyAddress("255.255.255.255", 65535)
    assert (
        encode(ProxyHeader(1, Command.PROXY, top4, top4))
        == b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    )
    top6 = ProxyAddress("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    assert encode(ProxyHeader(1, Command.PROXY, top6, top6)) == (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert encode(ProxyHeader(1)) == b"PROXY UNKNOWN\r\n"


def test_unknownIgnoresTheRestOfTheLine() -> None:
    """Section 2.1: for UNKNOWN "the receiver must ignore anything ... before the CRLF"."""
    header, rest = read(b"PROXY UNKNOWN whatever 1 2  3\r\nabc")
    assert (header, rest) == (ProxyHeader(1), b"abc")
    assert header.source is None


def test_specificationV2Signature() -> None:
    """Section 2.2: the 12-byte signature, with its null byte at the 5th position."""
    assert SIGNATURE_V2 == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"


def test_specificationV2TCP4ByteForByte() -> None:
    """
    Section 2.2: ver_cmd 0x21 (version 2, PROXY), fam 0x11 (TCP over
    IPv4), len 12, then source, destination, source port, destination port.
    """
    expected = (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
        b"\x21\x11\x00\x0c"
        b"\xc0\xa8\x00\x01\xc0\xa8\x00\x0b\xdc\x04\x01\xbb"
    )
    header = ProxyHeader(
        2,
        Command.PROXY,
        ProxyAddress("192.168.0.1", 56324),
        ProxyAddress("192.168.0.11", 443),
    )
    assert encode(header) == expected
    assert read(expected + SPEC_REQUEST) == (header, SPEC_REQUEST)


def test_specificationV2TCP6ByteForByte() -> None:
    """Section 2.2: fam 0x21 (TCP over IPv6), len 36 = 2*16 + 2*2."""
    source = ipaddress.IPv6Address("2001:db8::1")
    destination = ipaddress.IPv6Address("2001:db8::2")
    expected = v2(
        1, 0x21, source.packed + destination.packed + struct.pack("!HH", 1234, 443)
    )
    assert expected[14:16] == b"\x00\x24"
    header = ProxyHeader(
        2,
        Command.PROXY,
        ProxyAddress("2001:db8::1", 1234),
        ProxyAddress("2001:db8::2", 443),
    )
    assert encode(header) == expected
    assert read(expected) == (header, b"")


def test_specificationV2LocalDetection() -> None:
    """
    Section 9: 13 bytes of signature and version 2 (C{\\x20}: LOCAL) make
    a v2 header; LOCAL with UNSPEC and no address is what a balancer's
    health check sends, and the real endpoints apply.
    """
    local = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x20\x00\x00\x00"
    header, rest = read(local + b"hello")
    assert (header, rest) == (ProxyHeader(2, Command.LOCAL), b"hello")
    assert header.source is None
    assert encode(ProxyHeader(2, Command.LOCAL)) == local


def test_localDiscardsItsWholeBlockFamilyIncluded() -> None:
    """
    Section 2.2: for LOCAL the receiver "must ... discard the protocol
    block including the family which is ignored"; it must still use the
    length to skip it ("must not assume zero is presented for LOCAL").
    """
    header, rest = read(v2(0, 0x99, b"\xff" * 40 + b"\x01\x02") + b"after")
    assert (header, rest) == (ProxyHeader(2, Command.LOCAL), b"after")


def test_specificationSSLTLVLayout() -> None:
    """
    Section 2.2.6: C{pp2_tlv_ssl} is client (1 byte), verify (4 bytes) and
    sub-TLVs; VERSION is 0x21, CIPHER 0x23.
    """
    value = (
        b"\x07"
        + b"\x00\x00\x00\x00"
        + tlv(0x21, b"TLSv1.3")
        + tlv(0x23, b"TLS_AES_256_GCM_SHA384")
    )
    made = sslTLV(
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        certificateOnConnection=True,
        verified=True,
    )
    assert made == TLV(0x20, value)
    block = IPV4_BLOCK + tlv(0x02, b"app.example.com") + tlv(0x20, value)
    header, _ = read(v2(1, 0x11, block))
    assert header.authority == "app.example.com"
    assert header.ssl == SSLInfo(
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
        0,
        (
            TLV(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
            TLV(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384"),
        ),
    )
    assert (header.ssl.version, header.ssl.cipher) == (
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
    )


def test_sslTLVWithoutAClientCertificateIsNotVerified() -> None:
    """Section 2.2.6: verify is non-zero unless a certificate was verified."""
    info = SSLInfo.fromValue(sslTLV("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256").value)
    assert (info.client, info.verify) == (PP2_CLIENT_SSL, 1)
    info = SSLInfo.fromValue(
        sslTLV("TLSv1.3", None, certificateOnSession=True, commonName="alice").value
    )
    assert info.client == PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS
    assert (info.verify, info.commonName, info.cipher) == (1, "alice", None)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"123456789", 0xE3069283),
    ],
)
def test_crc32cVectors(data: bytes, value: int) -> None:
    """RFC 3720 appendix B.4 (and the usual C{123456789} check value)."""
    assert crc32c(data) == value


def test_checksumIsComputedOverTheHeaderWithItsFieldZeroed() -> None:
    """Section 2.2.3: the sender zeroes the field, computes, and fills it in."""
    data = encode(
        ProxyHeader(
            2, Command.PROXY, ProxyAddress("10.0.0.1", 1), ProxyAddress("10.0.0.2", 2)
        ),
        checksum=True,
    )
    assert data[-7:-4] == b"\x03\x00\x04"
    assert struct.unpack("!I", data[-4:])[0] == crc32c(data[:-4] + bytes(4))
    header, _ = read(data)
    assert header.tlvs == (TLV(PP2_TYPE_CRC32C, data[-4:]),)
    assert encode(header) == data


def test_wrongChecksumIsRefused() -> None:
    data = bytearray(
        encode(
            ProxyHeader(
                2,
                Command.PROXY,
                ProxyAddress("10.0.0.1", 1),
                ProxyAddress("10.0.0.2", 2),
            ),
            checksum=True,
        )
    )
    data[20] ^= 1  # an address bit, after the checksum was computed
    error = refused(bytes(data))
    assert isinstance(error, BadProxyTLV)
    assert "CRC32C" in str(error)


# --- round trips -----------------------------------------------------------------------

ports = st.integers(min_value=0, max_value=0xFFFF)
ipv4 = st.builds(
    lambda ip, port: ProxyAddress(str(ip), port), st.ip_addresses(v=4), ports
)
ipv6 = st.builds(
    lambda ip, port: ProxyAddress(str(ip), port), st.ip_addresses(v=6), ports
)
addressPairs = st.one_of(
    st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.just((None, None))
)
ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
tlvs = st.one_of(
    st.builds(authorityTLV, st.text(min_size=1, max_size=60)),
    st.builds(
        sslTLV,
        st.none() | ascii,
        st.none() | ascii,
        certificateOnConnection=st.booleans(),
        certificateOnSession=st.booleans(),
        verified=st.booleans(),
        commonName=st.none() | st.text(max_size=30),
    ),
    st.builds(TLV, st.just(PP2_TYPE_UNIQUE_ID), st.binary(max_size=128)),
    st.builds(
        TLV,
        st.sampled_from([0x01, 0x04, 0x30, 0xE0, 0xEF, 0xF0, 0xFF]),
        st.binary(max_size=300),
    ),
)


@st.composite
def headers(draw: st.DrawFn) -> ProxyHeader:
    version = draw(st.sampled_from([1, 2]))
    if version == 2 and draw(st.booleans()) and draw(st.booleans()):
        return ProxyHeader(2, Command.LOCAL)
    source, destination = draw(addressPairs)
    extra = tuple(draw(st.lists(tlvs, max_size=5))) if version == 2 else ()
    return ProxyHeader(version, Command.PROXY, source, destination, extra)


def segments(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


@FAST
@given(
    header=headers(),
    checksum=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    rest=st.binary(max_size=40),
)
def test_anySegmentationReadsBackTheSameHeader(
    header: ProxyHeader, checksum: bool, cuts: list[int], rest: bytes
) -> None:
    """encode -> read, cut anywhere: same addresses, same TLVs, same rest."""
    data = encode(header, checksum=checksum and header.version == 2)
    wire = data + rest
    reader = ProxyHeaderReader()
    pieces = segments(wire, cuts)
    # The header completes with the piece holding its last byte, not
    # before; the bytes after it in that piece, and the later pieces
    # (which the caller no longer feeds), are the rest.
    fed = 0
    result = reader.feed(pieces[0])
    while result is NEED_MORE:
        fed += 1
        result = reader.feed(pieces[fed])
    assert sum(map(len, pieces[: fed + 1])) >= len(data)
    assert sum(map(len, pieces[:fed])) < len(data)
    got, after = result
    assert after + b"".join(pieces[fed + 1 :]) == rest
    if checksum and header.version == 2 and header.command is Command.PROXY:
        assert got.tlvs[-1].type == PP2_TYPE_CRC32C
        got = ProxyHeader(
            got.version, got.command, got.source, got.destination, got.tlvs[:-1]
        )
    assert got == header


@FAST
@given(header=headers())
def test_everyProperPrefixNeedsMore(header: ProxyHeader) -> None:
    data = encode(header)
    reader = ProxyHeaderReader()
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) is NEED_MORE
    with pytest.raises(ProxyHeaderTruncated):
        reader.end()


def test_encodingsAgreeWithTwistedsParsers() -> None:
    """
    A second implementation reads our bytes the same way (Twisted's
    parsers are lenient, but they do read valid headers correctly).
    """
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    for version, parser, source, destination in [
        (1, V1Parser, ("192.0.2.1", 1234), ("192.0.2.2", 443)),
        (2, V2Parser, ("192.0.2.1", 1234), ("192.0.2.2", 443)),
        (1, V1Parser, ("2001:db8::1", 1234), ("2001:db8::2", 443)),
        (2, V2Parser, ("2001:db8::1", 1234), ("2001:db8::2", 443)),
    ]:
        header = ProxyHeader(
            version, Command.PROXY, ProxyAddress(*source), ProxyAddress(*destination)
        )
        info, rest = parser().feed(encode(header) + b"x")
        assert rest == b"x"
        assert info is not None
        assert info.source is not None
        assert info.destination is not None
        assert (
            ipaddress.ip_address(info.source.host),
            info.source.port,
            ipaddress.ip_address(info.destination.host),
            info.destination.port,
        ) == (
            ipaddress.ip_address(source[0]),
            source[1],
            ipaddress.ip_address(destination[0]),
            destination[1],
        )


# --- what a sender builds ------------------------------------------------------------


def test_connectionHeaderMapsMixedFamiliesToIPv6() -> None:
    header = connectionHeader(
        1, ProxyAddress("192.0.2.1", 5), ProxyAddress("2001:db8::1", 443)
    )
    assert header.source == ProxyAddress("::ffff:192.0.2.1", 5)
    assert encode(header) == (b"PROXY TCP6 ::ffff:c000:201 2001:db8::1 5 443\r\n")
    assert read(encode(header))[0] == header


def test_connectionHeaderWithoutAnAddressIsUnknown() -> None:
    header = connectionHeader(
        2, None, ProxyAddress("192.0.2.1", 443), [authorityTLV("a")]
    )
    assert (header.source, header.destination) == (None, None)
    data = encode(header)
    assert data[13] == 0x00  # UNSPEC
    assert read(data)[0].authority == "a"
    assert encode(connectionHeader(1, None, None, [authorityTLV("a")])) == (
        b"PROXY UNKNOWN\r\n"
    )


def test_invalidHeadersCannotBeBuilt() -> None:
    four, six = ProxyAddress("192.0.2.1", 1), ProxyAddress("::1", 1)
    with pytest.raises(ValueError, match="same family"):
        ProxyHeader(2, Command.PROXY, four, six)
    with pytest.raises(ValueError, match="LOCAL"):
        ProxyHeader(2, Command.LOCAL, four, four)
    with pytest.raises(ValueError, match="version 1"):
        ProxyHeader(1, Command.PROXY, tlvs=(authorityTLV("a"),))
    with pytest.raises(ValueError, match="65535"):
        ProxyAddress("192.0.2.1", 65536)
    with pytest.raises(ValueError, match="does not appear to be"):
        ProxyAddress("example.com", 1)
