"""
The memory-BIO TLS layer of terminated connections: one small request and
its answer through an established TLS 1.3 session, all in memory.

This is the Python and OpenSSL work of C{term-rps} per request, without
the sockets: the client's record in, plaintext out to the relay, the
answer in, one record out.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trustme
from OpenSSL import SSL

from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.tls.transport import TLSTransport

CA = trustme.CA()
LEAF = CA.issue_cert("bench.example")


class _Wire:
    """
    Stands in for the TCP transport: keeps what the TLS layer sends.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def take(self) -> bytes:
        data = b"".join(self.sent)
        self.sent.clear()
        return data


class _Echo:
    """
    The session: answers every request with a fixed small response.
    """

    transport: TLSTransport

    def tlsHandshakeDone(self) -> None:
        pass

    def tlsHandshakeFailed(self, reason: str) -> None:
        raise AssertionError(reason)

    def tlsData(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    def tlsReadClosed(self) -> None:
        pass


def _established() -> tuple[SSL.Connection, TLSTransport, _Wire]:
    serverContext = SSL.Context(SSL.TLS_SERVER_METHOD)
    LEAF.configure_cert(serverContext)
    server = SSL.Connection(serverContext, None)
    server.set_accept_state()
    wire = _Wire()
    events = _Echo()
    counted = ClientBytes(ConnectionRecord("b", "c", 0, 0))
    tls = TLSTransport(server, wire, events, clientBytes=counted)  # type: ignore[arg-type]
    events.transport = tls
    clientContext = SSL.Context(SSL.TLS_CLIENT_METHOD)
    CA.configure_trust(clientContext)
    client = SSL.Connection(clientContext, None)
    client.set_tlsext_host_name(b"bench.example")
    client.set_connect_state()
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            tls.ciphertextReceived(client.bio_read(65536))
        answer = wire.take()
        if answer:
            client.bio_write(answer)
    assert tls.handshakeDone
    with contextlib.suppress(SSL.WantReadError):
        client.recv(1)  # the session tickets
    return client, tls, wire


def test_requestAndAnswer(benchmark: Any) -> None:
    client, tls, wire = _established()
    request = b"GET /small HTTP/1.1\r\nHost: bench.example\r\n\r\n"

    def roundTrip() -> bytes:
        client.sendall(request)
        tls.ciphertextReceived(client.bio_read(65536))
        client.bio_write(wire.take())
        return client.recv(65536)

    assert benchmark(roundTrip).endswith(b"hello")
