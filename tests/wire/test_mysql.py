"""
Tests for L{gateway.wire.mysql}: each packet the gateway reads or writes, every
way TCP can cut a stream of them, and arbitrary input that must fail with a
L{MySQLError} and nothing else.

Golden bytes are written out by hand from the MySQL source documentation
("Connection Phase Packets": Protocol::HandshakeV10, SSLRequest,
HandshakeResponse41, AuthSwitchRequest; "Generic Response Packets": OK,
ERR), and the scramble is checked against PyMySQL's own implementation, so
a mistake shared by encoder and decoder cannot hide.
"""

from __future__ import annotations

import contextlib
import struct
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymysql import _auth  # type: ignore[import-untyped]

from gateway.wire.mysql import (
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    NEED_MORE,
    AuthMoreData,
    AuthSwitchRequest,
    ErrPacket,
    HandshakeResponse,
    Malformed,
    MySQLError,
    NotMySQL,
    OkPacket,
    Packet,
    PacketReader,
    PacketTooLarge,
    SSLRequest,
    encodePacket,
    errPacket,
    nativePassword,
    parseAuthReply,
    parseClientStart,
    parseGreeting,
    parseHandshakeResponse,
)

SCRAMBLE = bytes(range(0x41, 0x41 + 20))

# A MariaDB 10.11 greeting, field by field (HandshakeV10).
SERVER_CAPABILITIES = 0xF7FE | 0x81BF << 16  # as MariaDB 10.11 sends them, no SSL
GREETING = (
    b"\x0a"  # protocol version
    + b"5.5.5-10.11.6-MariaDB-0+deb12u1\x00"
    + struct.pack("<I", 42)  # connection id
    + SCRAMBLE[:8]
    + b"\x00"  # filler
    + struct.pack("<H", SERVER_CAPABILITIES & 0xFFFF)
    + b"\x2d"  # character set
    + struct.pack("<H", 0x0002)  # status: autocommit
    + struct.pack("<H", SERVER_CAPABILITIES >> 16)
    + b"\x15"  # auth-plugin-data length: 21
    + b"\x00" * 6
    + b"\x1d\x00\x00\x00"  # MariaDB extended capabilities
    + SCRAMBLE[8:]
    + b"\x00"
    + b"mysql_native_password\x00"
)

CLIENT_FLAGS = (
    CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_CONNECT_ATTRS
    | 0x1  # CLIENT_LONG_PASSWORD
)
RESERVED = b"\x00" * 23
ATTRIBUTES = b"\x0b\x04_pid\x0512345"  # 11 bytes: "_pid" = "12345"
LOGIN = (
    struct.pack("<II", CLIENT_FLAGS, 1 << 24)
    + b"\x21"
    + RESERVED
    + b"alice\x00"
    + b"\x14"
    + b"H" * 20
    + b"shop\x00"
    + b"mysql_native_password\x00"
    + ATTRIBUTES
)
SSL_REQUEST = (
    struct.pack("<II", CLIENT_FLAGS | CLIENT_SSL, 1 << 24) + b"\x21" + RESERVED
)


def test_greetingFields() -> None:
    greeting = parseGreeting(GREETING)
    assert greeting.serverVersion == "5.5.5-10.11.6-MariaDB-0+deb12u1"
    assert greeting.connectionId == 42
    assert greeting.scramble == SCRAMBLE
    assert greeting.capabilities == SERVER_CAPABILITIES
    assert (greeting.charset, greeting.status) == (0x2D, 2)
    assert greeting.authPlugin == "mysql_native_password"


def test_greetingWithSSLChangesOnlyTheFlag() -> None:
    greeting = parseGreeting(GREETING)
    changed = greeting.withCapabilities(greeting.capabilities | CLIENT_SSL)
    assert len(changed) == len(GREETING)
    assert sum(a != b for a, b in zip(changed, GREETING, strict=True)) == 1
    again = parseGreeting(changed)
    assert again.capabilities == SERVER_CAPABILITIES | CLIENT_SSL
    assert again.scramble == SCRAMBLE


def test_greetingOfAnotherProtocolVersionIsNotMySQL() -> None:
    with pytest.raises(NotMySQL, match="protocol version 9"):
        parseGreeting(b"\x09" + GREETING[1:])


def test_greetingThatIsAnErrorSaysWhy() -> None:
    # A server refusing the host before its greeting: ERR without SQLSTATE.
    payload = b"\xff" + struct.pack("<H", 1130) + b"Host '10.0.0.1' is not allowed"
    with pytest.raises(NotMySQL, match=r"1130 Host '10\.0\.0\.1' is not allowed"):
        parseGreeting(payload)


@pytest.mark.parametrize("cut", [1, 10, 40, 45, 60])
def test_truncatedGreetingIsMalformed(cut: int) -> None:
    with pytest.raises(Malformed):
        parseGreeting(GREETING[:cut])


def test_sslRequest() -> None:
    assert parseClientStart(SSL_REQUEST) == SSLRequest(
        CLIENT_FLAGS | CLIENT_SSL, 1 << 24, 0x21
    )


def test_loginFields() -> None:
    login = parseClientStart(LOGIN)
    assert isinstance(login, HandshakeResponse)
    assert (login.user, login.database, login.authPlugin) == (
        "alice",
        "shop",
        "mysql_native_password",
    )
    assert login.authResponse == b"H" * 20
    assert login.attributes == ATTRIBUTES
    assert login.encode() == LOGIN
    assert login.sslRequest() == SSL_REQUEST


def test_loginReprHidesTheAuthResponse() -> None:
    login = parseHandshakeResponse(LOGIN)
    assert "HHHH" not in repr(login)


def test_loginWithoutLenencUsesOneByteLength() -> None:
    flags = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
    payload = (
        struct.pack("<II", flags, 0)
        + b"\x08"
        + RESERVED
        + b"bob\x00\x03abc"
        + b"caching_sha2_password\x00"
    )
    login = parseHandshakeResponse(payload)
    assert (login.user, login.authResponse, login.database) == ("bob", b"abc", None)
    assert login.authPlugin == "caching_sha2_password"
    assert login.encode() == payload


def test_secondSSLRequestInsideTLSIsMalformed() -> None:
    with pytest.raises(Malformed, match="second SSLRequest"):
        parseHandshakeResponse(SSL_REQUEST)


def test_shortLoginWithoutSSLIsMalformed() -> None:
    with pytest.raises(Malformed, match="without CLIENT_SSL"):
        parseClientStart(struct.pack("<II", CLIENT_PROTOCOL_41, 0) + b"\x21" + RESERVED)


def test_oldClientIsNotMySQL41() -> None:
    with pytest.raises(NotMySQL):
        parseClientStart(b"\x85\xa4\x00\x00\x00\x00\x00\x01root\x00")


def test_changedLoginReencodes() -> None:
    login = parseHandshakeResponse(LOGIN)
    changed = HandshakeResponse(
        login.capabilities & ~CLIENT_SSL,
        login.maxPacketSize,
        login.charset,
        login.reserved,
        login.user,
        b"",
        login.database,
        "tlsgateway_switch",
        login.attributes,
    )
    assert parseHandshakeResponse(changed.encode()) == changed


def test_authReplies() -> None:
    assert parseAuthReply(b"\x00\x00\x00\x02\x00\x00\x00") == OkPacket()
    assert parseAuthReply(
        b"\xfemysql_native_password\x00" + SCRAMBLE + b"\x00"
    ) == AuthSwitchRequest("mysql_native_password", SCRAMBLE)
    assert parseAuthReply(b"\x01\x03") == AuthMoreData(b"\x03")
    error = parseAuthReply(
        b"\xff\x15\x04#28000Access denied for user 'alice'@'localhost'"
    )
    assert error == ErrPacket(
        1045, "28000", "Access denied for user 'alice'@'localhost'"
    )


@pytest.mark.parametrize("payload", [b"", b"\x02abc", b"\xff\x15"])
def test_unknownAuthRepliesAreMalformed(payload: bytes) -> None:
    with pytest.raises(Malformed):
        parseAuthReply(payload)


def test_authSwitchRequestRoundTrip() -> None:
    request = AuthSwitchRequest("mysql_native_password", SCRAMBLE)
    assert request.encode() == b"\xfemysql_native_password\x00" + SCRAMBLE + b"\x00"
    assert AuthSwitchRequest.parse(request.encode()) == request


def test_errPacketIsTheDocumentedLayout() -> None:
    assert errPacket(2, 3159, "HY000", "TLS required") == (
        b"\x15\x00\x00\x02\xff\x57\x0c#HY000TLS required"
    )


def test_nativePasswordMatchesPyMySQL() -> None:
    assert nativePassword(b"secret", SCRAMBLE) == _auth.scramble_native_password(
        b"secret", SCRAMBLE
    )
    assert nativePassword(b"", SCRAMBLE) == b""


# -- the packet reader -----------------------------------------------------------


STREAM = encodePacket(0, GREETING) + encodePacket(1, SSL_REQUEST) + b"\x16\x03\x01TLS"
EXPECTED = [Packet(0, GREETING), Packet(1, SSL_REQUEST)]


def readAll(chunks: list[bytes], count: int) -> tuple[list[Packet], bytes]:
    reader = PacketReader()
    packets: list[Packet] = []
    for chunk in chunks:
        reader.feed(chunk)
        while len(packets) < count:
            packet = reader.next()
            if packet is NEED_MORE:
                break
            packets.append(packet)
    return packets, reader.rest()


def test_packetsThenRest() -> None:
    assert readAll([STREAM], 2) == (EXPECTED, b"\x16\x03\x01TLS")


def test_packetHeaderLayout() -> None:
    assert encodePacket(3, b"abc") == b"\x03\x00\x00\x03abc"
    assert encodePacket(256, b"") == b"\x00\x00\x00\x00"


def test_everyPrefixNeedsMore() -> None:
    data = encodePacket(0, GREETING)
    for cut in range(len(data)):
        reader = PacketReader()
        reader.feed(data[:cut])
        assert reader.next() is NEED_MORE


def test_oversizedPacketIsRefusedFromItsHeader() -> None:
    reader = PacketReader(maxPayload=100)
    reader.feed(b"\x65\x00\x00\x00")
    with pytest.raises(PacketTooLarge):
        reader.next()


def test_reasonsAreDistinctSlugs() -> None:
    reasons = {cls.reason for cls in (NotMySQL, PacketTooLarge)}
    assert reasons == {"not_mysql", "too_large"}
    assert Malformed.reason == MySQLError.reason == "malformed"


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True))
def test_anySegmentationGivesTheSamePackets(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(STREAM)]
    assert readAll([STREAM[a:b] for a, b in pairwise(edges)], 2) == (
        EXPECTED,
        b"\x16\x03\x01TLS",
    )


@given(st.binary(max_size=300))
def test_junkGreetingRaisesOnlyMySQLError(junk: bytes) -> None:
    with contextlib.suppress(MySQLError):
        parseGreeting(junk)


@given(st.integers(min_value=0, max_value=len(GREETING)), st.binary(max_size=60))
def test_greetingPrefixAndJunkRaisesOnlyMySQLError(prefix: int, junk: bytes) -> None:
    with contextlib.suppress(MySQLError):
        parseGreeting(GREETING[:prefix] + junk)


@given(st.integers(min_value=0, max_value=len(LOGIN)), st.binary(max_size=60))
def test_loginPrefixAndJunkRaisesOnlyMySQLError(prefix: int, junk: bytes) -> None:
    with contextlib.suppress(MySQLError):
        parseClientStart(LOGIN[:prefix] + junk)


@given(st.binary(max_size=200))
def test_junkRaisesOnlyMySQLError(junk: bytes) -> None:
    for parse in (parseClientStart, parseAuthReply, AuthSwitchRequest.parse):
        with contextlib.suppress(MySQLError):
            parse(junk)
    reader = PacketReader(maxPayload=64)
    reader.feed(junk)
    with contextlib.suppress(MySQLError):
        while reader.next() is not NEED_MORE:
            pass
