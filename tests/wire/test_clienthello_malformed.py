"""
Malformed input to L{gateway.wire.clienthello} (through the record
reassembler of L{gateway.wire.helloreader}): each fault fails with its
L{ClientHelloError} and a message naming it, and, for any bytes at all
(hypothesis), nothing but a L{ClientHelloError} leaves the reader.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.testing import splitIntoRecords
from gateway.wire.clienthello import (
    NEED_MORE,
    BadLength,
    ClientHello,
    ClientHelloError,
    ClientHelloTooLarge,
    NotTLS,
)
from gateway.wire.helloreader import ClientHelloReader
from tests.wire.hellobuilders import (
    DATA,
    FAST,
    HELLO,
    PARSED,
    alpn,
    cut,
    extension,
    feedAll,
    handshake,
    helloBody,
    oneByteAtATime,
    outcome,
    record,
    serverNames,
    sni,
    vector,
    wrap,
)

# Malformed input.

GOOD_SNI = sni(b"ok.example.com")

MALFORMED: list[tuple[str, bytes, type[ClientHelloError], str]] = [
    # name, input, error class, words of the message
    ("garbage", b"\x00\x01\x02\x03\x04\x05", NotTLS, "not a TLS handshake record"),
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", NotTLS, "plaintext"),
    ("sslv2", bytes.fromhex("802e0100020015000000100700c0"), NotTLS, "SSLv2"),
    ("application data first", record(b"x", contentType=23), NotTLS, "type 22"),
    ("alert first", record(b"\x02\x28", contentType=21), NotTLS, "first byte 0x15"),
    (
        "record version 0x02xx",
        record(b"\x01", version=b"\x02\x01"),
        NotTLS,
        "record version 0x02xx",
    ),
    ("record version 0x1603", b"\x16\x16\x03", NotTLS, "record version 0x16xx"),
    ("zero-length record", record(b""), BadLength, "zero-length"),
    ("record over 2^14", record(b"", length=2**14 + 1), BadLength, "16385"),
    (
        "second record not handshake",
        record(handshake(helloBody())[:10]) + record(b"\x01", contentType=20),
        ClientHelloError,
        "content type 20",
    ),
    (
        "second record bad version",
        record(handshake(helloBody())[:10]) + record(b"\x01", version=b"\x00\x03"),
        ClientHelloError,
        "record version 0x00xx",
    ),
    (
        "second record zero-length",
        record(handshake(helloBody())[:10]) + record(b""),
        BadLength,
        "zero-length",
    ),
    ("server hello", wrap(helloBody())[:5] + b"\x02", ClientHelloError, "type 2"),
    (
        "hello request",
        record(handshake(b"", messageType=0)),
        ClientHelloError,
        "type 0",
    ),
    (
        "handshake shorter than record",
        record(handshake(helloBody() + b"\x00\x00", length=len(helloBody()))),
        BadLength,
        "only handshake message",
    ),
    (
        "second handshake message in the record",
        record(handshake(helloBody()) + handshake(b"", messageType=1)),
        BadLength,
        "only handshake message",
    ),
    (
        "records longer than the hello",
        record(handshake(helloBody())[:20])
        + record(handshake(helloBody())[20:] + b"x"),
        BadLength,
        "only handshake message",
    ),
    (
        "handshake longer than its body",
        record(handshake(helloBody(), length=len(helloBody()) + 2) + b"\x00\x00"),
        BadLength,
        "2 bytes left over at the end of the ClientHello",
    ),
    ("empty hello", wrap(b""), BadLength, "legacy_version"),
    (
        "legacy_version not TLS",
        wrap(helloBody(version=b"\x02\x00")),
        ClientHelloError,
        "0x0200",
    ),
    ("short random", wrap(b"\x03\x03" + bytes(20)), BadLength, "random"),
    (
        "session id of 33 bytes",
        wrap(helloBody(sessionId=b"\x21" + bytes(33))),
        BadLength,
        "legacy_session_id",
    ),
    (
        "odd cipher list",
        wrap(helloBody(ciphers=vector(2, b"\x13\x01\x13"))),
        BadLength,
        "odd",
    ),
    ("no ciphers", wrap(helloBody(ciphers=vector(2, b""))), BadLength, "cipher_suites"),
    (
        "no compression",
        wrap(helloBody(compression=b"\x00")),
        BadLength,
        "legacy_compression_methods",
    ),
    (
        "extensions length too long",
        wrap(helloBody(extensionsBlock=b"\x00\x40" + GOOD_SNI)),
        BadLength,
        "extensions needs 64 bytes",
    ),
    (
        "junk after the extensions",
        wrap(helloBody(extensionsBlock=vector(2, GOOD_SNI) + b"\x00")),
        BadLength,
        "1 byte left over at the end of the ClientHello",
    ),
    (
        "half an extension header",
        wrap(helloBody(extensionsBlock=vector(2, b"\x00"))),
        BadLength,
        "extension type",
    ),
    (
        "extension longer than the block",
        wrap(helloBody(extensionsBlock=vector(2, b"\x00\x17\x00\x05\x00"))),
        BadLength,
        "extension 23",
    ),
    (
        "duplicate extension",
        wrap(helloBody(extension(23, b""), extension(23, b""))),
        ClientHelloError,
        "extension 23 more than once",
    ),
    (
        "duplicate SNI extension",
        wrap(helloBody(GOOD_SNI, GOOD_SNI)),
        ClientHelloError,
        "server_name extension more than once",
    ),
    (
        "empty SNI extension",
        wrap(helloBody(extension(0, b""))),
        BadLength,
        "server_name list",
    ),
    (
        "empty SNI list",
        wrap(helloBody(extension(0, vector(2, b"")))),
        BadLength,
        "server_name list",
    ),
    (
        "SNI list longer than extension",
        wrap(helloBody(extension(0, b"\x00\x20\x00\x00\x03abc"))),
        BadLength,
        "server_name list needs 32 bytes",
    ),
    (
        "SNI list shorter than extension",
        wrap(helloBody(extension(0, vector(2, b"\x00\x00\x03abc") + b"\x00"))),
        BadLength,
        "end of the server_name extension",
    ),
    (
        "SNI name longer than list",
        wrap(helloBody(extension(0, vector(2, b"\x00\x00\x09abc")))),
        BadLength,
        "host_name needs 9 bytes",
    ),
    (
        "SNI name shorter than list",
        wrap(helloBody(extension(0, vector(2, b"\x00\x00\x02abc")))),
        BadLength,
        "length of server_name host_name",
    ),
    ("empty SNI name", wrap(helloBody(sni(b""))), BadLength, "host_name is 0 bytes"),
    ("SNI name only a dot", wrap(helloBody(sni(b"."))), ClientHelloError, "empty"),
    ("SNI NUL", wrap(helloBody(sni(b"a\x00.example.com"))), ClientHelloError, "0x00"),
    (
        "SNI non-ASCII",
        wrap(helloBody(sni("café.example".encode()))),
        ClientHelloError,
        "0xc3",
    ),
    ("SNI space", wrap(helloBody(sni(b"a b.example"))), ClientHelloError, "0x20"),
    (
        "SNI empty label",
        wrap(helloBody(sni(b"a..example"))),
        ClientHelloError,
        "empty label",
    ),
    (
        "SNI leading dot",
        wrap(helloBody(sni(b".example"))),
        ClientHelloError,
        "empty label",
    ),
    (
        "SNI label too long",
        wrap(helloBody(sni(b"a" * 64 + b".example"))),
        ClientHelloError,
        "63",
    ),
    (
        "SNI name too long",
        wrap(helloBody(sni(b"a." * 127 + b"ab"))),
        ClientHelloError,
        "253",
    ),
    (
        "two host_names",
        wrap(helloBody(sni(b"a.example", b"b.example"))),
        ClientHelloError,
        "more than one host_name",
    ),
    (
        "only another name type",
        wrap(helloBody(sni(b"a.example", nameType=1))),
        ClientHelloError,
        "type 1, not host_name",
    ),
    (
        "empty ALPN list",
        wrap(helloBody(extension(16, vector(2, b"")))),
        BadLength,
        "protocol_name_list",
    ),
    (
        "empty ALPN protocol",
        wrap(helloBody(alpn(b"h2", b""))),
        BadLength,
        "ALPN protocol name is 0 bytes",
    ),
    (
        "ALPN list longer than extension",
        wrap(helloBody(extension(16, b"\x00\x09\x02h2"))),
        BadLength,
        "protocol_name_list needs 9 bytes",
    ),
    (
        "ALPN name longer than list",
        wrap(helloBody(extension(16, vector(2, b"\x05h2")))),
        BadLength,
        "ALPN protocol name needs 5 bytes",
    ),
    (
        "ALPN junk after list",
        wrap(helloBody(extension(16, vector(2, b"\x02h2") + b"\x00"))),
        BadLength,
        "end of the application_layer_protocol_negotiation",
    ),
    (
        "odd supported_versions",
        wrap(helloBody(extension(43, vector(1, b"\x03\x04\x03")))),
        BadLength,
        "odd",
    ),
    (
        "empty supported_versions",
        wrap(helloBody(extension(43, vector(1, b"")))),
        BadLength,
        "supported_versions list",
    ),
    (
        "odd signature_algorithms",
        wrap(helloBody(extension(13, vector(2, b"\x04\x03\x08")))),
        BadLength,
        "odd",
    ),
    (
        "odd supported_groups",
        wrap(helloBody(extension(10, vector(2, b"\x00\x1d\x00")))),
        BadLength,
        "odd",
    ),
    (
        "supported_groups junk",
        wrap(helloBody(extension(10, vector(2, b"\x00\x1d") + b"\x00"))),
        BadLength,
        "end of the supported_groups",
    ),
]


@pytest.mark.parametrize(
    ("data", "errorClass", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in MALFORMED],
)
def test_malformedInputIsRefused(
    data: bytes, errorClass: type[ClientHelloError], words: str
) -> None:
    """
    Each malformation gets its class and a message that says what is wrong,
    and the answer is the same whether it arrives at once or byte by byte.
    """
    reader = ClientHelloReader()
    with pytest.raises(ClientHelloError) as e:
        reader.feed(data)
    assert type(e.value) is errorClass
    assert e.value.reason == errorClass.reason
    assert words in str(e.value)
    assert outcome(oneByteAtATime(data)) == (errorClass, str(e.value))


def test_reasonsAreSlugs() -> None:
    assert ClientHelloError.reason == "malformed"
    assert NotTLS.reason == "not_tls"
    assert ClientHelloTooLarge.reason == "too_large"
    assert BadLength.reason == "bad_length"
    assert all(
        issubclass(c, ClientHelloError)
        for c in (NotTLS, ClientHelloTooLarge, BadLength)
    )


def test_recordVersionsOf03xxAreAccepted() -> None:
    for version in (b"\x03\x00", b"\x03\x01", b"\x03\x03", b"\x03\x04"):
        assert (
            feedAll([splitIntoRecords(HELLO, [2**14], int.from_bytes(version, "big"))])
            == PARSED
        )


# Only ClientHelloError may leave the reader.


@FAST
@given(data=st.binary(max_size=300))
def test_arbitraryBytesOnlyRaiseClientHelloError(data: bytes) -> None:
    outcome([data])


@FAST
@given(
    prefix=st.integers(min_value=0, max_value=len(HELLO)),
    junk=st.binary(min_size=1, max_size=200),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=5),
)
def test_prefixAndJunkOnlyRaiseClientHelloError(
    prefix: int, junk: bytes, cuts: list[int]
) -> None:
    """
    A valid start followed by junk reaches the deep parts of the parser;
    whatever happens there is a L{ClientHelloError}, and the same one
    however the bytes are cut.
    """
    data = HELLO[:prefix] + junk
    whole = outcome([data])
    assert outcome(cut(data, [c for c in cuts if c < len(data)])) == whole


@FAST
@given(
    position=st.integers(min_value=0, max_value=len(HELLO) - 1),
    value=st.integers(min_value=0, max_value=255),
    maxSize=st.sampled_from([200, 1000, 16384]),
)
def test_mutatedHelloOnlyRaisesClientHelloError(
    position: int, value: int, maxSize: int
) -> None:
    """
    One byte changed anywhere (a length, a count, a name) gives a hello or
    a L{ClientHelloError}, the same at once and byte by byte.
    """
    data = bytearray(splitIntoRecords(HELLO, [300]))
    data[position] = value
    whole = outcome([bytes(data)], maxSize)
    assert outcome(oneByteAtATime(bytes(data)), maxSize) == whole


@FAST
@given(
    body=st.binary(max_size=120),
    length=st.integers(min_value=0, max_value=200),
    sizes=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=3),
)
def test_randomHelloBodiesOnlyRaiseClientHelloError(
    body: bytes, length: int, sizes: list[int]
) -> None:
    """
    Well-framed records around a random body, so that the body parser (not
    the record layer) sees arbitrary bytes.
    """
    framed = splitIntoRecords(record(handshake(body, length=length)), sizes)
    outcome([framed])
    outcome([wrap(b"\x03\x03" + body)])


@FAST
@given(
    extensionType=st.sampled_from([0, 10, 13, 16, 43]),
    data=st.binary(max_size=40),
)
def test_randomExtensionDataOnlyRaisesClientHelloError(
    extensionType: int, data: bytes
) -> None:
    """
    Each extension the reader parses gets arbitrary contents.
    """
    outcome([wrap(helloBody(extension(extensionType, data)))])


# Real hellos, damaged: every check of the body parser is reached, and
# whatever it answers is a hello or a ClientHelloError, the same however
# the bytes are cut into records and reads.

CAPTURED_BODIES = [path.read_bytes()[9:] for path in sorted(DATA.glob("*.bin"))]
BODIES = [*CAPTURED_BODIES, HELLO[9:]]


def assertSameAnswerAnyway(body: bytes) -> None:
    """
    C{body} as one record read at once, and as one-byte records read one
    byte at a time, gets the same hello or the same error.
    """
    data = wrap(body)
    whole = outcome([data], maxSize=6 * len(data))
    assert whole is not NEED_MORE
    split = splitIntoRecords(data, [1])
    assert outcome(oneByteAtATime(split), maxSize=len(split)) == whole


def test_everyCapturedBodyParses() -> None:
    for body in BODIES:
        assert isinstance(outcome([wrap(body)]), ClientHello)


@FAST
@given(
    index=st.integers(min_value=0, max_value=len(BODIES) - 1),
    changes=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2000), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
)
def test_mutatedCapturedHellosOnlyRaiseClientHelloError(
    index: int, changes: list[tuple[int, int]]
) -> None:
    """
    Bytes changed anywhere in real hellos: lengths, counts, names, types.
    """
    body = bytearray(BODIES[index])
    for position, value in changes:
        body[position % len(body)] = value
    assertSameAnswerAnyway(bytes(body))


@FAST
@given(
    index=st.integers(min_value=0, max_value=len(BODIES) - 1),
    cut=st.integers(min_value=0, max_value=2000),
    junk=st.binary(max_size=8),
)
def test_truncatedCapturedHellosOnlyRaiseClientHelloError(
    index: int, cut: int, junk: bytes
) -> None:
    body = BODIES[index]
    assertSameAnswerAnyway(body[: cut % (len(body) + 1)] + junk)


@FAST
@given(
    extensionType=st.sampled_from([0, 10, 13, 16, 43, 0xFF01]),
    data=st.binary(max_size=40),
    again=st.booleans(),
)
def test_arbitraryExtensionDataBesideOthers(
    extensionType: int, data: bytes, again: bool
) -> None:
    extensions = [extension(extensionType, data), extension(0x002D, b"\x01\x01")]
    if again:
        extensions.append(extension(extensionType, data))
    assertSameAnswerAnyway(helloBody(*extensions))


@pytest.mark.parametrize(
    "hostName", [b"ok.example", b"Upper.Example.", b"bad name", b"a..b", b"x" * 64]
)
def test_serverNamesBesideOtherEntries(hostName: bytes) -> None:
    assertSameAnswerAnyway(helloBody(sni(hostName)))
    assertSameAnswerAnyway(helloBody(sni(hostName, nameType=1)))
    assertSameAnswerAnyway(helloBody(sni(hostName, hostName)))


# The whole message, for one hello per check whose words MALFORMED does
# not pin down, and for hellos with two faults: the first in wire order is
# reported, and a vector's contents before bytes left over after it.

EXACT: list[tuple[str, bytes, type[ClientHelloError], str]] = [
    (
        "session id runs past the body",
        b"\x03\x03" + bytes(32) + b"\x05ab",
        BadLength,
        "legacy_session_id needs 5 bytes but the ClientHello has only 2 left",
    ),
    (
        "no cipher_suites length",
        b"\x03\x03" + bytes(32) + b"\x00\x00",
        BadLength,
        "length of cipher_suites needs 2 bytes but the ClientHello has only 1 left",
    ),
    (
        "cipher_suites of 65535 bytes",
        helloBody(ciphers=b"\xff\xff"),
        BadLength,
        "cipher_suites is 65535 bytes long; it must be 2 to 65534 bytes",
    ),
    (
        "cipher_suites run past the body, and odd",
        b"\x03\x03" + bytes(32) + b"\x00\x00\x07\x13\x01",
        BadLength,
        "cipher_suites needs 7 bytes but the ClientHello has only 2 left",
    ),
    (
        "no compression methods length",
        b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01",
        BadLength,
        "length of legacy_compression_methods needs 1 bytes but the ClientHello"
        " has only 0 left",
    ),
    (
        "half an extensions length",
        helloBody(extensionsBlock=b"\x00"),
        BadLength,
        "length of extensions needs 2 bytes but the ClientHello has only 1 left",
    ),
    (
        "a known extension's length cut short",
        helloBody(extensionsBlock=vector(2, b"\x00\x10\x00")),
        BadLength,
        "length of the application_layer_protocol_negotiation extension needs 2"
        " bytes but extensions has only 1 left",
    ),
    (
        "an unknown extension's length cut short",
        helloBody(extensionsBlock=vector(2, b"\x00\x17\x00")),
        BadLength,
        "length of extension 23 needs 2 bytes but extensions has only 1 left",
    ),
    (
        "a known extension runs past the block",
        helloBody(extensionsBlock=vector(2, b"\x00\x0a\x00\x05\x00")),
        BadLength,
        "the supported_groups extension needs 5 bytes but extensions has only 1 left",
    ),
    (
        "duplicate that also runs past the block",
        helloBody(extensionsBlock=vector(2, extension(23, b"") + b"\x00\x17\x00\x05")),
        BadLength,
        "extension 23 needs 5 bytes but extensions has only 0 left",
    ),
    (
        "server_name list length cut short",
        helloBody(extension(0, b"\x00")),
        BadLength,
        "length of server_name list needs 2 bytes but the server_name extension"
        " has only 1 left",
    ),
    (
        "host_name length cut short",
        helloBody(extension(0, vector(2, b"\x00\x00"))),
        BadLength,
        "length of server_name host_name needs 2 bytes but server_name list has"
        " only 1 left",
    ),
    (
        "a bad name is reported before junk after the list",
        helloBody(extension(0, vector(2, b"\x00" + vector(2, b"a b")) + b"\x00")),
        ClientHelloError,
        "server name b'a b' contains byte 0x20; only ASCII letters, digits, '-',"
        " '_' and '.' are allowed (IDNs arrive as A-labels)",
    ),
    (
        "junk after a good server_name list",
        helloBody(extension(0, vector(2, b"\x00" + vector(2, b"a.example")) + b"xy")),
        BadLength,
        "2 bytes left over at the end of the server_name extension",
    ),
    (
        "a short entry is reported before another name type",
        helloBody(extension(0, vector(2, b"\x01\x00\x05ab"))),
        BadLength,
        "server_name host_name needs 5 bytes but server_name list has only 2 left",
    ),
    (
        "the host_name after another name type",
        helloBody(serverNames((7, b"x"), (0, b"a.example"))),
        ClientHelloError,
        "server_name extension has a name of type 7, not host_name (RFC 6066 3;"
        " OpenSSL refuses it)",
    ),
    (
        "a second host_name",
        helloBody(serverNames((0, b"a.example"), (0, b"b.example"))),
        ClientHelloError,
        "server_name extension has more than one host_name (RFC 6066 3)",
    ),
    (
        "ALPN list of one byte",
        helloBody(extension(16, vector(2, b"\x00"))),
        BadLength,
        "ALPN protocol_name_list is 1 bytes long; it must be 2 to 65535 bytes",
    ),
    (
        "ALPN list length cut short",
        helloBody(extension(16, b"\x00")),
        BadLength,
        "length of ALPN protocol_name_list needs 2 bytes but the"
        " application_layer_protocol_negotiation extension has only 1 left",
    ),
    (
        "empty supported_versions extension",
        helloBody(extension(43, b"")),
        BadLength,
        "length of supported_versions list needs 1 bytes but the"
        " supported_versions extension has only 0 left",
    ),
    (
        "supported_versions of 255 bytes",
        helloBody(extension(43, b"\xff" + bytes(255))),
        BadLength,
        "supported_versions list is 255 bytes long; it must be 2 to 254 bytes",
    ),
    (
        "supported_versions run past the extension",
        helloBody(extension(43, b"\x04\x03\x04")),
        BadLength,
        "supported_versions list needs 4 bytes but the supported_versions"
        " extension has only 2 left",
    ),
    (
        "supported_versions junk",
        helloBody(extension(43, vector(1, b"\x03\x04") + b"\x00")),
        BadLength,
        "1 byte left over at the end of the supported_versions extension",
    ),
    (
        "signature_algorithms of 65535 bytes",
        helloBody(extension(13, b"\xff\xff")),
        BadLength,
        "signature_algorithms list is 65535 bytes long; it must be 2 to 65534 bytes",
    ),
    (
        "supported_groups of 65535 bytes",
        helloBody(extension(10, b"\xff\xff")),
        BadLength,
        "supported_groups list needs 65535 bytes but the supported_groups"
        " extension has only 0 left",
    ),
    (
        "signature_algorithms length cut short",
        helloBody(extension(13, b"\x00")),
        BadLength,
        "length of signature_algorithms list needs 2 bytes but the"
        " signature_algorithms extension has only 1 left",
    ),
    (
        "signature_algorithms junk",
        helloBody(extension(13, vector(2, b"\x04\x03") + b"\x00\x00")),
        BadLength,
        "2 bytes left over at the end of the signature_algorithms extension",
    ),
    (
        "a fault in an early extension is reported before a duplicate",
        helloBody(extension(10, vector(2, b"\x00")), GOOD_SNI, GOOD_SNI),
        BadLength,
        "supported_groups list is 1 bytes long; it must be 2 to 65535 bytes",
    ),
]


@pytest.mark.parametrize(
    ("body", "errorClass", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in EXACT],
)
def test_malformedBodyMessages(
    body: bytes, errorClass: type[ClientHelloError], message: str
) -> None:
    assert outcome([wrap(body)]) == (errorClass, message)
    assertSameAnswerAnyway(body)
