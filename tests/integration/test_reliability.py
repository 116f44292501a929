"""
Failure behaviour, end to end (issue 12): what a real gateway process does
when a reload goes wrong, when it runs out of file descriptors, when a TLS
record is corrupt after the handshake, and with ClientHellos at the edges
of what TLS allows.

Each test drives a real gateway process with real sockets and checks what an
operator would check: what the clients received, the access log, the
gateway's own log and its metrics.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable

import pytest

from gateway.testing import makeClientHello

from .backends import Backend
from .harness import Gateway, freePort, gatewayIni

pytestmark = pytest.mark.timeout(90)

NAME = "a.example.test"

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]


def fullRecordHello(serverName: str) -> bytes:
    """
    A real ClientHello (pyOpenSSL's) whose one handshake record holds
    exactly 16,384 bytes, the most a record may: 16,389 bytes on the wire.
    ALPN names make up the size, as a client offering many protocols would.
    """
    names = [b"p" * 250] * 59
    base = makeClientHello(serverName, names)
    # The handshake message without record headers, and what it lacks.
    length = int.from_bytes(base[3:5], "big")
    assert base[0] == 22
    assert len(base) == 5 + length, "expected one record"
    missing = 16384 - length
    assert 2 <= missing <= 256, missing
    hello = makeClientHello(serverName, [*names, b"q" * (missing - 1)])
    assert len(hello) == 16389
    assert hello[3:5] == (16384).to_bytes(2, "big")
    return hello


def readAll(sock: socket.socket) -> bytes:
    """Everything C{sock} receives until its peer closes."""
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def test_aClientHelloInOneFullRecordIsRelayedWithTheDefaultBuffer(
    gateway: StartGateway, backend: StartBackend
) -> None:
    """
    With the default C{preread_buffer_size}, a ClientHello that fills a
    whole record (16,389 bytes on the wire) is accepted, routed and
    reaches the upstream byte for byte.
    """
    sink = backend("sink", "sink-hash", tls=False)
    gw = gateway(
        gatewayIni(
            freePort(), routes=[(NAME, "sink")], upstreams={"sink": sink.address}
        )
    )
    hello = fullRecordHello(NAME)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(hello)
        sock.shutdown(socket.SHUT_WR)
        answer = readAll(sock)
    assert answer == f"{hashlib.sha256(hello).hexdigest()} {len(hello)}\n".encode(), (
        answer,
        gw.explain(),
    )
    entry = gw.waitForLog(lambda e: e["sni"] == NAME)
    assert (entry["status"], entry["bytes_in"]) == ("ok", len(hello)), entry


def withServerNames(hello: bytes, entries: list[tuple[int, bytes]]) -> bytes:
    """
    C{hello} (one record, as L{makeClientHello} writes it) with its
    server_name extension replaced by one listing C{(name_type, name)}
    entries, every length fixed up: the bytes a client could really send.
    """
    body = hello[9:]
    offset = 2 + 32
    offset += 1 + body[offset]  # session id
    offset += 2 + int.from_bytes(body[offset : offset + 2], "big")  # ciphers
    offset += 1 + body[offset]  # compression methods
    head, extensions = body[: offset + 2], body[offset + 2 :]
    rebuilt = bytearray()
    while extensions:
        kind = int.from_bytes(extensions[:2], "big")
        length = int.from_bytes(extensions[2:4], "big")
        data, extensions = extensions[4 : 4 + length], extensions[4 + length :]
        if kind == 0:
            names = b"".join(
                bytes([t]) + len(n).to_bytes(2, "big") + n for t, n in entries
            )
            data = len(names).to_bytes(2, "big") + names
        rebuilt += kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    body = head[:-2] + len(rebuilt).to_bytes(2, "big") + bytes(rebuilt)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return hello[:3] + len(message).to_bytes(2, "big") + message


def test_aServerNameListMixingNameTypesIsRefusedNotRouted(
    gateway: StartGateway, backend: StartBackend
) -> None:
    """
    A server_name extension with a type-1 entry before the host_name is
    C{bad_client_hello} and reaches no upstream (OpenSSL refuses the same
    bytes); the same hello with the host_name alone is routed.
    """
    sink = backend("sink", "sink-hash", tls=False)
    gw = gateway(
        gatewayIni(
            freePort(), routes=[(NAME, "sink")], upstreams={"sink": sink.address}
        )
    )
    real = makeClientHello(NAME)
    for entries in (
        [(1, b"other.example.test"), (0, NAME.encode())],
        [(0, NAME.encode())],
    ):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(withServerNames(real, entries))
            sock.shutdown(socket.SHUT_WR)
            readAll(sock)
    refused, routed = gw.waitForEntries(2)
    assert (refused["status"], refused["upstream"]) == ("bad_client_hello", None), (
        refused
    )
    assert "not host_name" in refused["reason"], refused
    assert (routed["status"], routed["sni"]) == ("ok", NAME), routed
    assert sink.accepted == 1
