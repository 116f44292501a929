"""
Tests for L{gateway.wire.pgbackend}: the server's side, the answer to an
C{SSLRequest}, C{BackendKeyData} and C{ErrorResponse}, every way TCP can
cut them, and arbitrary input that must fail with a L{PostgresError} and
nothing else.  The golden bytes are those of L{tests.wire.test_postgres},
written out by hand from the PostgreSQL documentation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.pgbackend import (
    INVALID_AUTHORIZATION,
    BackendKeyDataScanner,
    ErrorResponse,
    SSLAccepted,
    SSLAnswerReader,
    SSLRefused,
    decodeErrorResponse,
    errorResponse,
)
from gateway.wire.postgres import (
    NEED_MORE,
    BadLength,
    CancelKey,
    NotPostgres,
    PostgresError,
)
from tests.wire.test_postgres import (
    FAST,
    GOLDEN_AUTHENTICATION_OK,
    GOLDEN_BACKEND_KEY_DATA,
    GOLDEN_ERROR,
    GOLDEN_PARAMETER_STATUS,
    GOLDEN_READY_FOR_QUERY,
    KEY,
    backendMessage,
    cuts,
)

# -- ErrorResponse -------------------------------------------------------------


def test_errorResponseIsTheDocumentedMessage() -> None:
    assert (
        errorResponse("plaintext connections are refused", INVALID_AUTHORIZATION)
        == GOLDEN_ERROR
    )


def test_errorResponseDefaultsToAFatalProtocolViolation() -> None:
    error = decodeErrorResponse(errorResponse("bad"))
    assert (error.severity, error.code, error.message) == ("FATAL", "08P01", "bad")
    assert str(error) == "FATAL: bad (SQLSTATE 08P01)"


def test_errorResponseEncodesUTF8() -> None:
    error = decodeErrorResponse(errorResponse("naïve", severity="ERROR"))
    assert (error.severity, error.message) == ("ERROR", "naïve")


@pytest.mark.parametrize(
    ("message", "code", "severity", "complaint"),
    [
        ("a\0b", "08P01", "FATAL", "NUL"),
        ("m", "8P01", "FATAL", "SQLSTATE"),
        ("m", "08p01", "FATAL", "SQLSTATE"),
        ("m", "08P01", "WARNING", "severity"),
    ],
)
def test_errorResponseRefusesWhatItCannotEncode(
    message: str, code: str, severity: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        errorResponse(message, code, severity)


def test_decodeErrorResponse() -> None:
    error = decodeErrorResponse(GOLDEN_ERROR)
    assert error == ErrorResponse(
        (
            ("S", "FATAL"),
            ("V", "FATAL"),
            ("C", "28000"),
            ("M", "plaintext connections are refused"),
        )
    )


def test_errorResponseWithoutFields() -> None:
    error = decodeErrorResponse(b"E\x00\x00\x00\x05\x00")
    assert (error.severity, error.code, error.message, str(error)) == (
        None,
        None,
        "",
        "",
    )


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"N\x00\x00\x00\x05\x00",
        b"E\x00\x00\x00\x06\x00",
        b"E\x00\x00\x00\x05",
        b"E\x00\x00\x00\x07Mab",
        b"E\x00\x00\x00\x07\x00ab",
        b"E\x00\x00\x00\x06Ma",
    ],
)
def test_decodeErrorResponseRefusesMalformed(message: bytes) -> None:
    with pytest.raises(PostgresError):
        decodeErrorResponse(message)


@FAST
@given(st.binary(max_size=80))
def test_decodeErrorResponseOnlyRaisesPostgresError(body: bytes) -> None:
    for candidate in (body, b"E" + (len(body) + 4).to_bytes(4, "big") + body):
        with contextlib.suppress(PostgresError):
            decodeErrorResponse(candidate)


# -- The server's answer to our SSLRequest ---------------------------------------


def answer(chunks: Iterable[bytes]) -> SSLAccepted | SSLRefused:
    reader = SSLAnswerReader()
    pieces = list(chunks)
    for piece in pieces[:-1]:
        assert reader.feed(piece) is NEED_MORE
    result = reader.feed(pieces[-1])
    assert result is not NEED_MORE
    return result


def test_serverAcceptsTLS() -> None:
    assert answer([b"S"]) == SSLAccepted()


def test_serverRefusesTLS() -> None:
    assert answer([b"N"]) == SSLRefused()


def test_bytesAfterTheAnswerAreHandedOn() -> None:
    assert answer([b"S\x16\x03"]) == SSLAccepted(b"\x16\x03")


def test_serverAnswersWithAnErrorResponse() -> None:
    refused = answer([GOLDEN_ERROR + b"x"])
    assert isinstance(refused, SSLRefused)
    assert refused.error == decodeErrorResponse(GOLDEN_ERROR)
    assert refused.rest == b"x"


def test_serverAnswersWithAnOldStyleErrorLine() -> None:
    # PostgreSQL's report_fork_failure_to_client(): 'E', text, newline, NUL.
    line = b"Ecould not fork new process for connection: Resource unavailable\n\x00"
    refused = answer([line])
    assert refused == SSLRefused(
        ErrorResponse(
            (("M", "could not fork new process for connection: Resource unavailable"),)
        )
    )


@pytest.mark.parametrize("stream", [GOLDEN_ERROR, b"Esome text\n\x00"])
def test_errorAnswersNeedMoreUntilComplete(stream: bytes) -> None:
    for size in range(1, len(stream)):
        assert SSLAnswerReader().feed(stream[:size]) is NEED_MORE, size


@FAST
@given(st.sampled_from([b"S", b"N", GOLDEN_ERROR, b"Eold text\x00"]), st.data())
def test_anySegmentationGivesTheSameAnswer(stream: bytes, data: st.DataObject) -> None:
    edges = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))
    assert answer(cuts(stream, edges)) == answer([stream])


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"H", NotPostgres),
        (b"\x15\x03\x03", NotPostgres),
        (b"E\x00\x00\x00\x04", BadLength),
        (b"E\x00\x01\x00\x00", BadLength),
        (b"E" + b"x" * 20000, BadLength),
        (b"E\x00\x00\x00\x06Ma", PostgresError),
    ],
)
def test_badAnswers(stream: bytes, error: type[PostgresError]) -> None:
    reader = SSLAnswerReader()
    with pytest.raises(error) as caught:
        reader.feed(stream)
    with pytest.raises(error) as again:
        reader.feed(b"S")
    assert again.value is caught.value


def test_feedingAfterTheAnswerIsABug() -> None:
    reader = SSLAnswerReader()
    reader.feed(b"S")
    with pytest.raises(RuntimeError):
        reader.feed(b"")


@FAST
@given(st.binary(max_size=100), st.data())
def test_arbitraryAnswersOnlyRaisePostgresError(
    raw: bytes, data: st.DataObject
) -> None:
    edges = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=8))
    reader = SSLAnswerReader()
    with contextlib.suppress(PostgresError):
        for piece in cuts(raw, edges):
            if reader.feed(piece) is not NEED_MORE:
                break


# -- BackendKeyData --------------------------------------------------------------

SERVER_STARTUP = (
    GOLDEN_AUTHENTICATION_OK
    + GOLDEN_PARAMETER_STATUS
    + GOLDEN_BACKEND_KEY_DATA
    + GOLDEN_READY_FOR_QUERY
)


def scan(chunks: Iterable[bytes]) -> tuple[list[CancelKey], BackendKeyDataScanner]:
    scanner = BackendKeyDataScanner()
    keys = [key for piece in chunks for key in scanner.feed(piece)]
    return keys, scanner


def test_backendKeyDataIsFound() -> None:
    keys, scanner = scan([SERVER_STARTUP])
    assert keys == [KEY]
    assert scanner.done


def test_backendKeyDataWithAProtocol32Key() -> None:
    key = CancelKey(99, bytes(range(32)))
    message = backendMessage(b"K", (99).to_bytes(4, "big") + key.secretKey)
    assert scan([message])[0] == [key]


def test_scanningStopsAtReadyForQuery() -> None:
    # What follows ReadyForQuery is not even looked at: a query result
    # that happens to look like a BackendKeyData is not one.
    keys, scanner = scan([GOLDEN_READY_FOR_QUERY, GOLDEN_BACKEND_KEY_DATA, b"\xff" * 9])
    assert (keys, scanner.done) == ([], True)


def test_noKeyUntilItsLastByte() -> None:
    scanner = BackendKeyDataScanner()
    stream = GOLDEN_AUTHENTICATION_OK + GOLDEN_BACKEND_KEY_DATA
    for byte in stream[:-1]:
        assert scanner.feed(bytes([byte])) == ()
    assert scanner.feed(stream[-1:]) == (KEY,)
    assert not scanner.done


def test_scannerBuffersAtMostAHeaderWhileSkipping() -> None:
    scanner = BackendKeyDataScanner()
    big = backendMessage(b"D", b"x" * 100_000)
    assert scanner.feed(big[:50_000]) == ()
    assert len(scanner._header) == 0
    assert scanner._body is None
    assert scanner.feed(big[50_000:] + GOLDEN_BACKEND_KEY_DATA) == (KEY,)


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"R", b"S", b"N", b"v", b"D"]), st.binary(max_size=40)
        ),
        max_size=6,
    ),
    st.data(),
)
def test_anySegmentationFindsTheSameKey(
    others: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(backendMessage(k, b) for k, b in others) + SERVER_STARTUP
    edges = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))
    keys, scanner = scan(cuts(stream, edges))
    assert keys == [KEY]
    assert scanner.done


@pytest.mark.parametrize(
    "stream",
    [
        b"R\x00\x00\x00\x03",
        b"K\x00\x00\x00\x0b",
        b"K\x00\x00\x01\x09",
    ],
)
def test_badServerLengths(stream: bytes) -> None:
    scanner = BackendKeyDataScanner()
    with pytest.raises(BadLength) as caught:
        scanner.feed(stream)
    with pytest.raises(BadLength) as again:
        scanner.feed(GOLDEN_BACKEND_KEY_DATA)
    assert again.value is caught.value


@FAST
@given(st.binary(max_size=200), st.data())
def test_arbitraryServerBytesOnlyRaisePostgresError(
    raw: bytes, data: st.DataObject
) -> None:
    edges = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=8))
    with contextlib.suppress(PostgresError):
        scan(cuts(raw, edges))
