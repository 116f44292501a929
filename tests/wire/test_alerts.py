"""
The refusal alerts, as bytes and as a real TLS client reads them.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from gateway.testing import makeClientHello
from gateway.wire.alerts import (
    STATUS_ALERTS,
    AlertDescription,
    alertRecord,
    recordVersion,
)
from gateway.wire.clienthello import ClientHello
from gateway.wire.helloreader import ClientHelloReader


def test_anAlertIsOneFatalRecord() -> None:
    assert alertRecord(AlertDescription.UNRECOGNIZED_NAME, 0x0303) == bytes(
        [21, 3, 3, 0, 2, 2, 112]
    )
    assert alertRecord(AlertDescription.DECODE_ERROR) == bytes([21, 3, 1, 0, 2, 2, 50])


def test_theContractsStatusesHaveTheirAlerts() -> None:
    assert {status: alert.name.lower() for status, alert in STATUS_ALERTS.items()} == {
        "bad_client_hello": "decode_error",
        "no_route": "unrecognized_name",
        "denied": "access_denied",
        "limited": "access_denied",
        "upstream_unavailable": "internal_error",
    }


def test_theRecordVersionIsTheOneTheClientOffered() -> None:
    tls10 = ClientHelloReader().feed(tls10Hello())
    assert isinstance(tls10, ClientHello)
    assert recordVersion(tls10) == 0x0301
    tls13 = ClientHelloReader().feed(makeClientHello("a.example"))
    assert isinstance(tls13, ClientHello)
    assert recordVersion(tls13) == 0x0303


@pytest.mark.parametrize(
    ("buffered", "version"),
    [
        (b"", 0x0301),  # refused at accept: nothing read
        (b"\x16\x03\x01\x00", 0x0301),
        (b"\x16\x03\x03\x40\x00garbage", 0x0303),
        (b"\x16\x03\x07", 0x0303),  # no such version: the highest a record has
        (b"\x16\x03\x00", 0x0301),  # SSL 3.0 is answered in TLS 1.0 records
        (b"GET / HTTP/1.1", 0x0301),
    ],
)
def test_withoutAHelloTheFirstRecordHeaderDecides(
    buffered: bytes, version: int
) -> None:
    assert recordVersion(None, buffered) == version


@given(legacy=st.integers(min_value=0, max_value=0xFFFF), buffered=st.binary())
def test_theVersionIsAlwaysOneARecordMayHave(legacy: int, buffered: bytes) -> None:
    assert 0x0301 <= recordVersion(ClientHello(None, legacyVersion=legacy)) <= 0x0303
    assert 0x0301 <= recordVersion(None, buffered) <= 0x0303


def tls10Hello() -> bytes:
    return pendingClient(SSL.TLS1_VERSION)[1]


def pendingClient(version: int | None = None) -> tuple[SSL.Connection, bytes]:
    """
    A real OpenSSL client that has sent its ClientHello (on memory BIOs)
    and waits for the server's answer.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if version is not None:
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        context.set_cipher_list(b"DEFAULT@SECLEVEL=0")
    connection = SSL.Connection(context, None)
    connection.set_tlsext_host_name(b"a.example")
    connection.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    return connection, connection.bio_read(65536)


# How OpenSSL reports each alert it receives (curl and Python show the same).
OPENSSL_SAYS = {
    AlertDescription.HANDSHAKE_FAILURE: "alert handshake failure",
    AlertDescription.ILLEGAL_PARAMETER: "alert illegal parameter",
    AlertDescription.ACCESS_DENIED: "tlsv1 alert access denied",
    AlertDescription.DECODE_ERROR: "tlsv1 alert decode error",
    AlertDescription.DECRYPT_ERROR: "alert decrypt error",
    AlertDescription.PROTOCOL_VERSION: "tlsv1 alert protocol version",
    AlertDescription.INTERNAL_ERROR: "tlsv1 alert internal error",
    AlertDescription.UNRECOGNIZED_NAME: "tlsv1 unrecognized name",
}


@pytest.mark.parametrize("description", list(AlertDescription))
@pytest.mark.parametrize("version", [None, SSL.TLS1_VERSION])
def test_aRealClientReadsTheAlert(
    description: AlertDescription, version: int | None
) -> None:
    """
    OpenSSL, as a TLS 1.3 client and as a TLS 1.0-only one, takes the
    record as the server's fatal alert and reports it by name.
    """
    client, hello = pendingClient(version)
    parsed = ClientHelloReader().feed(hello)
    assert isinstance(parsed, ClientHello)
    client.bio_write(alertRecord(description, recordVersion(parsed)))
    with pytest.raises(SSL.Error) as caught:
        client.do_handshake()
    assert OPENSSL_SAYS[description] in str(caught.value)


def test_aClientReadsAnAlertSentBeforeItsHello() -> None:
    """
    A refusal at accept: the alert (TLS 1.0 record version) arrives before
    the client's hello has been read; the client still reads it.
    """
    client, _ = pendingClient()
    client.bio_write(alertRecord(AlertDescription.ACCESS_DENIED, recordVersion(None)))
    with pytest.raises(SSL.Error, match="alert access denied"):
        client.do_handshake()
