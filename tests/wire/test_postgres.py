"""
Tests for L{gateway.wire.postgres}: each message of a client's preamble,
every way TCP can cut them, and arbitrary input that must fail with a
L{PostgresError} and nothing else (the server's messages:
L{tests.wire.test_pgbackend}, with the golden bytes of this module).

Golden bytes are written out by hand from the PostgreSQL documentation,
chapter "Frontend/Backend Protocol": section "Message Formats" for the
layouts (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage,
BackendKeyData, ReadyForQuery, ErrorResponse), "Error and Notice Message
Fields" for the ErrorResponse field letters, and "Message Flow: SSL Session
Encryption" / "GSSAPI Session Encryption" for the one-byte answers.  They
are not produced by the module under test, so a shared mistake cannot hide.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.testing import makeClientHello
from gateway.wire.postgres import (
    GSS_REFUSED,
    MAX_STARTUP_LENGTH,
    NEED_MORE,
    SSL_ACCEPTED,
    SSL_REQUEST,
    BadLength,
    CancelKey,
    CancelRequest,
    DirectTLS,
    GSSENCRequest,
    NotPostgres,
    OutOfOrder,
    PostgresError,
    PreambleEvent,
    PreambleReader,
    SSLRequest,
    StartupMessage,
    StartupMessageTooLarge,
    UnsupportedRequest,
    cancelRequest,
    parseStartupMessage,
)

FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- Golden bytes, by hand from "Message Formats" ------------------------------

# SSLRequest: Int32(8), Int32(80877103) = 1234 << 16 | 5679 = 0x04D2_162F.
GOLDEN_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
# GSSENCRequest: Int32(8), Int32(80877104) = 1234 << 16 | 5680 = 0x04D2_1630.
GOLDEN_GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
# CancelRequest: Int32(16), Int32(80877102) = 0x04D2_162E, Int32 process ID
# (4242 = 0x1092), Int32 secret key.
GOLDEN_CANCEL_REQUEST = (
    b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\x92\xde\xad\xbe\xef"
)
# StartupMessage: Int32 length, Int32(196608) = 3 << 16 (protocol 3.0), then
# String name / String value pairs and a final zero byte.
#   4 + 4 + len("user\0alice\0") 11 + len("database\0sales\0") 15
#   + len("application_name\0psql\0") 22 + 1 = 57 = 0x39
GOLDEN_STARTUP = (
    b"\x00\x00\x00\x39\x00\x03\x00\x00"
    b"user\x00alice\x00database\x00sales\x00application_name\x00psql\x00\x00"
)
# BackendKeyData: Byte1('K'), Int32(12), Int32 process ID, Int32 secret key.
GOLDEN_BACKEND_KEY_DATA = b"K\x00\x00\x00\x0c\x00\x00\x10\x92\xde\xad\xbe\xef"
# ReadyForQuery: Byte1('Z'), Int32(5), Byte1 status ('I': idle).
GOLDEN_READY_FOR_QUERY = b"Z\x00\x00\x00\x05I"
# AuthenticationOk: Byte1('R'), Int32(8), Int32(0).
GOLDEN_AUTHENTICATION_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
# ParameterStatus: Byte1('S'), Int32 length, String name, String value:
# 4 + len("server_version\0") 15 + len("15.18\0") 6 = 25 = 0x19.
GOLDEN_PARAMETER_STATUS = b"S\x00\x00\x00\x19server_version\x0015.18\x00"
# ErrorResponse: Byte1('E'), Int32 length, then fields, each a Byte1 type
# and a String, and a final zero byte.  S: severity, V: severity (never
# localized), C: SQLSTATE, M: message ("Error and Notice Message Fields").
#   4 + len("SFATAL\0") 7 + len("VFATAL\0") 7 + len("C28000\0") 7
#   + len("Mplaintext connections are refused\0") 35 + 1 = 61 = 0x3d
GOLDEN_ERROR = (
    b"E\x00\x00\x00\x3d"
    b"SFATAL\x00VFATAL\x00C28000\x00Mplaintext connections are refused\x00\x00"
)

KEY = CancelKey(4242, b"\xde\xad\xbe\xef")


# -- Builders for generated cases ----------------------------------------------


def startupPacket(
    pairs: Sequence[tuple[bytes, bytes]], version: int = 3 << 16
) -> bytes:
    body = version.to_bytes(4, "big")
    body += b"".join(name + b"\0" + value + b"\0" for name, value in pairs) + b"\0"
    return (4 + len(body)).to_bytes(4, "big") + body


def packet(code: int, payload: bytes = b"") -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + code.to_bytes(4, "big") + payload


def backendMessage(kind: bytes, body: bytes) -> bytes:
    return kind + (4 + len(body)).to_bytes(4, "big") + body


def cuts(data: bytes, edges: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(edges)), len(data)]
    return [data[a:b] for a, b in pairwise(points) if b > a] or [b""]


def readPreamble(
    chunks: Iterable[bytes], encrypted: bool = False
) -> tuple[list[PreambleEvent], bytes]:
    """
    Feed C{chunks} as a gateway would: answer each L{GSSENCRequest} by
    feeding on (with C{b""}), stop at the event that ends the preamble.

    @return: the events, with the last one's C{rest} emptied, and every byte
        after the preamble (that C{rest} plus the chunks never fed).
    """
    reader = PreambleReader(encrypted=encrypted)
    events: list[PreambleEvent] = []
    pieces = list(chunks)
    for index, piece in enumerate(pieces):
        result = reader.feed(piece)
        while isinstance(result, GSSENCRequest):
            events.append(result)
            result = reader.feed(b"")
        if result is not NEED_MORE:
            assert not isinstance(result, GSSENCRequest)
            events.append(attrs.evolve(result, rest=b""))
            tail = result.rest + b"".join(pieces[index + 1 :])
            if not isinstance(result, DirectTLS):
                return events, tail
            # DirectTLS's rest is the whole stream: keep it in the event.
            events[-1] = DirectTLS(tail)
            return events, b""
    return events, b""


def outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except PostgresError as e:
        return (type(e), str(e))


# -- Golden bytes against the module -------------------------------------------


def test_sslRequestConstantIsTheDocumentedPacket() -> None:
    assert SSL_REQUEST == GOLDEN_SSL_REQUEST
    assert (SSL_ACCEPTED, GSS_REFUSED) == (b"S", b"N")


def test_sslRequestThenTLS() -> None:
    hello = makeClientHello("db.example.com", [b"postgresql"])
    assert PreambleReader().feed(GOLDEN_SSL_REQUEST + hello) == SSLRequest(hello)


def test_sslRequestAloneLeavesNoRest() -> None:
    assert PreambleReader().feed(GOLDEN_SSL_REQUEST) == SSLRequest(b"")


def test_directTLSHandsOverEveryByte() -> None:
    hello = makeClientHello("db.example.com", [b"postgresql"])
    assert PreambleReader().feed(hello) == DirectTLS(hello)
    assert PreambleReader().feed(hello[:1]) == DirectTLS(hello[:1])


def test_gssencRequestIsAnsweredAndReadingGoesOn() -> None:
    reader = PreambleReader()
    assert reader.feed(GOLDEN_GSSENC_REQUEST + GOLDEN_SSL_REQUEST[:3]) == (
        GSSENCRequest()
    )
    assert reader.feed(b"") is NEED_MORE
    assert reader.feed(GOLDEN_SSL_REQUEST[3:]) == SSLRequest()


def test_gssencRequestThenStartupMessage() -> None:
    events, tail = readPreamble([GOLDEN_GSSENC_REQUEST + GOLDEN_STARTUP])
    assert [type(e) for e in events] == [GSSENCRequest, StartupMessage]
    assert tail == b""


def test_cancelRequest() -> None:
    assert PreambleReader().feed(GOLDEN_CANCEL_REQUEST) == CancelRequest(KEY)


def test_cancelRequestWithAProtocol32Key() -> None:
    key = CancelKey(7, bytes(range(32)))
    assert PreambleReader().feed(
        packet(80877102, (7).to_bytes(4, "big") + key.secretKey)
    ) == (CancelRequest(key))


def test_cancelRequestEncoderGivesTheDocumentedPacket() -> None:
    assert cancelRequest(KEY) == GOLDEN_CANCEL_REQUEST


def test_startupMessage() -> None:
    message = PreambleReader().feed(GOLDEN_STARTUP + b"more")
    assert isinstance(message, StartupMessage)
    assert message.version == (3, 0)
    assert message.parameters == (
        ("user", "alice"),
        ("database", "sales"),
        ("application_name", "psql"),
    )
    assert (message.user, message.database, message.applicationName) == (
        "alice",
        "sales",
        "psql",
    )
    assert message.raw == GOLDEN_STARTUP
    assert message.rest == b"more"
    assert message == StartupMessage(
        (3, 0), message.parameters, GOLDEN_STARTUP, b"more"
    )


def test_startupMessageDatabaseDefaultsToTheUser() -> None:
    message = parseStartupMessage(startupPacket([(b"user", b"bob")]))
    assert (message.user, message.database, message.applicationName) == (
        "bob",
        "bob",
        None,
    )


def test_startupMessageLastRepeatedParameterWins() -> None:
    message = parseStartupMessage(
        startupPacket([(b"user", b"a"), (b"user", b"b"), (b"options", b"")])
    )
    assert message.user == "b"
    assert message.get("options") == ""
    assert message.get("missing") is None


def test_startupMessageProtocol32() -> None:
    message = parseStartupMessage(startupPacket([(b"user", b"u")], 3 << 16 | 2))
    assert message.version == (3, 2)


def test_startupMessageUndecodableBytesAreReplacedNotRaised() -> None:
    raw = startupPacket([(b"user", b"\xff\xfe")])
    message = parseStartupMessage(raw)
    assert message.user == "\ufffd\ufffd"
    assert message.raw == raw


def test_reprHidesSecrets() -> None:
    assert "deadbeef" not in repr(KEY).lower()
    assert "\\xde" not in repr(KEY)
    assert "raw" not in repr(parseStartupMessage(GOLDEN_STARTUP))


def test_startupMessageInsideTLS() -> None:
    reader = PreambleReader(encrypted=True)
    message = reader.feed(GOLDEN_STARTUP)
    assert isinstance(message, StartupMessage)
    assert message.user == "alice"


def test_cancelRequestInsideTLS() -> None:
    # libpq 17's PQcancelCreate sends its CancelRequest inside TLS.
    assert PreambleReader(encrypted=True).feed(GOLDEN_CANCEL_REQUEST) == (
        CancelRequest(KEY)
    )


# -- Truncation ------------------------------------------------------------------

COMPLETE_PREAMBLES = [
    GOLDEN_SSL_REQUEST,
    GOLDEN_CANCEL_REQUEST,
    GOLDEN_STARTUP,
    GOLDEN_GSSENC_REQUEST + GOLDEN_SSL_REQUEST,
    GOLDEN_GSSENC_REQUEST + GOLDEN_STARTUP,
    GOLDEN_GSSENC_REQUEST + GOLDEN_CANCEL_REQUEST,
]


@pytest.mark.parametrize("preamble", COMPLETE_PREAMBLES)
def test_everyTruncationNeedsMore(preamble: bytes) -> None:
    for size in range(len(preamble)):
        events, _ = readPreamble([preamble[:size]])
        assert all(isinstance(e, GSSENCRequest) for e in events), size
    events, _ = readPreamble([preamble])
    assert not isinstance(events[-1], GSSENCRequest)


def test_needMoreUntilTheLastByteOneByteAtATime() -> None:
    reader = PreambleReader()
    for byte in GOLDEN_STARTUP[:-1]:
        assert reader.feed(bytes([byte])) is NEED_MORE
    assert isinstance(reader.feed(GOLDEN_STARTUP[-1:]), StartupMessage)


def test_emptyFeedNeedsMore() -> None:
    assert PreambleReader().feed(b"") is NEED_MORE


# -- Fragmentation -------------------------------------------------------------


@st.composite
def clientStreams(draw: st.DrawFn) -> tuple[bytes, list[PreambleEvent], bytes]:
    """
    A stream a real client could send, the events it must give, and the
    bytes after the preamble.
    """
    tls = makeClientHello("db.example.com", [b"postgresql"])
    gss = draw(st.booleans())
    events: list[PreambleEvent] = [GSSENCRequest()] if gss else []
    prefix = GOLDEN_GSSENC_REQUEST if gss else b""
    kind = draw(
        st.sampled_from(["ssl", "startup", "cancel"] + ([] if gss else ["direct"]))
    )
    after = draw(st.binary(max_size=20))
    if kind == "direct":
        return tls + after, [DirectTLS(tls + after)], b""
    if kind == "ssl":
        return prefix + GOLDEN_SSL_REQUEST + tls, [*events, SSLRequest()], tls
    if kind == "cancel":
        key = CancelKey(
            draw(st.integers(0, 2**32 - 1)), draw(st.binary(min_size=4, max_size=256))
        )
        return prefix + cancelRequest(key) + after, [*events, CancelRequest(key)], after
    names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b)
    values = st.binary(max_size=40).filter(lambda b: b"\0" not in b)
    pairs = [
        (b"user", draw(names)),
        *draw(st.lists(st.tuples(names, values), max_size=5)),
    ]
    raw = startupPacket(pairs)
    return prefix + raw + after, [*events, parseStartupMessage(raw)], after


@FAST
@given(clientStreams(), st.data())
def test_anySegmentationGivesTheSameEvents(
    stream: tuple[bytes, list[PreambleEvent], bytes], data: st.DataObject
) -> None:
    raw, expected, tail = stream
    edges = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=12))
    assert readPreamble(cuts(raw, edges)) == (expected, tail)


# -- Refusals ------------------------------------------------------------------

REFUSALS: list[tuple[str, bytes, type[PostgresError], str]] = [
    ("http", b"GET / HTTP/1.1\r\n", NotPostgres, "such as HTTP?"),
    ("high byte", b"\x80\x00\x00\x08", NotPostgres, "not a PostgreSQL client"),
    ("too short", b"\x00\x00\x00\x07\x00\x03\x00\x00", BadLength, "shorter"),
    ("zero length", b"\x00\x00\x00\x00", BadLength, "shorter"),
    (
        "too large",
        (MAX_STARTUP_LENGTH + 5).to_bytes(4, "big"),
        StartupMessageTooLarge,
        "10004",
    ),
    ("long ssl", packet(80877103, b"\0"), BadLength, "SSLRequest of 9 bytes"),
    ("long gss", packet(80877104, b"\0"), BadLength, "GSSENCRequest of 9 bytes"),
    ("short key", packet(80877102, b"\0" * 7), BadLength, "CancelRequest of 15 bytes"),
    ("long key", packet(80877102, b"\0" * 261), BadLength, "CancelRequest of 269"),
    ("unknown request", packet(80877105, b"\0"), UnsupportedRequest, "1234/5681"),
    (
        "protocol 2",
        startupPacket([(b"user", b"u")], 2 << 16),
        UnsupportedRequest,
        "2.0",
    ),
    (
        "protocol 4",
        startupPacket([(b"user", b"u")], 4 << 16),
        UnsupportedRequest,
        "4.0",
    ),
    (
        "no user",
        startupPacket([(b"database", b"d")]),
        PostgresError,
        "no PostgreSQL user",
    ),
    (
        "empty user",
        startupPacket([(b"user", b"")]),
        PostgresError,
        "no PostgreSQL user",
    ),
    (
        "no terminator",
        b"\x00\x00\x00\x13\x00\x03\x00\x00user\x00alice\x00",
        PostgresError,
        "does not end with a NUL",
    ),
    (
        "no value",
        b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00",
        PostgresError,
        "has no value",
    ),
    (
        "bytes after terminator",
        b"\x00\x00\x00\x15\x00\x03\x00\x00user\x00alice\x00\x00x",
        PostgresError,
        "terminator as last byte",
    ),
    ("second gss", GOLDEN_GSSENC_REQUEST * 2, OutOfOrder, "second GSSENCRequest"),
    (
        "tls after gss",
        GOLDEN_GSSENC_REQUEST + b"\x16\x03\x01",
        OutOfOrder,
        "direct TLS",
    ),
]


@pytest.mark.parametrize(
    ("stream", "error", "text"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refusals(stream: bytes, error: type[PostgresError], text: str) -> None:
    with pytest.raises(
        error, match=text.replace("?", r"\?").replace(".", r"\.")
    ) as caught:
        readPreamble([stream])
    assert type(caught.value) is error
    assert caught.value.reason == error.reason


@pytest.mark.parametrize(
    "stream", [GOLDEN_SSL_REQUEST, GOLDEN_GSSENC_REQUEST, b"\x16\x03\x01"]
)
def test_negotiationInsideTLSIsOutOfOrder(stream: bytes) -> None:
    with pytest.raises(OutOfOrder):
        PreambleReader(encrypted=True).feed(stream)


def test_reasonsAreDistinctSlugs() -> None:
    reasons = [
        c.reason
        for c in (
            PostgresError,
            NotPostgres,
            BadLength,
            StartupMessageTooLarge,
            UnsupportedRequest,
            OutOfOrder,
        )
    ]
    assert len(set(reasons)) == len(reasons)
    assert all(r.replace("_", "").isalpha() and r.islower() for r in reasons)


def test_errorsAreRaisedAsSoonAsTheirBytesArrive() -> None:
    # The length word is enough: a client cannot make us wait for 10 kB.
    with pytest.raises(StartupMessageTooLarge):
        PreambleReader().feed(b"\x00\x01\x00\x00")
    with pytest.raises(NotPostgres):
        PreambleReader().feed(b"G")
    reader = PreambleReader()
    assert reader.feed(b"\x00\x00\x00\x09") is NEED_MORE
    with pytest.raises(BadLength):
        reader.feed(b"\x04\xd2\x16\x2f")


def test_errorIsSticky() -> None:
    reader = PreambleReader()
    with pytest.raises(NotPostgres) as first:
        reader.feed(b"GET")
    with pytest.raises(NotPostgres) as second:
        reader.feed(GOLDEN_SSL_REQUEST)
    assert second.value is first.value


def test_feedingAfterThePreambleIsABug() -> None:
    reader = PreambleReader()
    reader.feed(GOLDEN_SSL_REQUEST)
    with pytest.raises(RuntimeError):
        reader.feed(b"\x16")


@FAST
@given(
    st.sampled_from([r[1] for r in REFUSALS]),
    st.binary(max_size=16),
    st.data(),
)
def test_refusalsDoNotDependOnSegmentation(
    stream: bytes, junk: bytes, data: st.DataObject
) -> None:
    raw = stream + junk
    edges = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=10))
    assert outcome(lambda: readPreamble(cuts(raw, edges))) == outcome(
        lambda: readPreamble([raw])
    )


@FAST
@given(st.binary(max_size=300), st.booleans(), st.data())
def test_arbitraryBytesOnlyRaisePostgresError(
    raw: bytes, encrypted: bool, data: st.DataObject
) -> None:
    edges = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=8))
    with contextlib.suppress(PostgresError):
        readPreamble(cuts(raw, edges), encrypted=encrypted)


@FAST
@given(
    st.sampled_from([*COMPLETE_PREAMBLES, GOLDEN_STARTUP[:8]]),
    st.integers(0, 60),
    st.binary(min_size=1, max_size=60),
)
def test_corruptedPreamblesOnlyRaisePostgresError(
    preamble: bytes, offset: int, junk: bytes
) -> None:
    offset = min(offset, len(preamble))
    with contextlib.suppress(PostgresError):
        readPreamble([preamble[:offset] + junk + preamble[offset + len(junk) :]])


@FAST
@given(st.binary(max_size=200))
def test_parseStartupMessageOnlyRaisesPostgresError(raw: bytes) -> None:
    framed = (len(raw) + 8).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + raw
    for candidate in (raw, framed):
        with contextlib.suppress(PostgresError):
            parseStartupMessage(candidate)


def test_looksLikePostgresKnowsEveryOpeningPacket() -> None:
    from gateway.wire.postgres import SSL_REQUEST, looksLikePostgres

    startup = (
        (23).to_bytes(4, "big")
        + (3 << 16).to_bytes(4, "big")
        + b"user\x00app\x00\x00\x00"
    )
    gss = (8).to_bytes(4, "big") + (1234 << 16 | 5680).to_bytes(4, "big")
    cancel = (16).to_bytes(4, "big") + (1234 << 16 | 5678).to_bytes(4, "big") + bytes(8)
    for packet in (SSL_REQUEST, startup, gss, cancel):
        assert looksLikePostgres(packet), packet
    for other in (
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",
        SSL_REQUEST[:7],
        bytes(8),
    ):
        assert not looksLikePostgres(other), other
