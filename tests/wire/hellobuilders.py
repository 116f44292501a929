"""
ClientHellos built by hand (for the malformed cases a real client never
sends), the captured ones of real clients, and the ways the tests of
L{gateway.wire.clienthello} feed them to the reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

from hypothesis import HealthCheck, settings

from gateway.testing import makeClientHello
from gateway.wire.clienthello import (
    NEED_MORE,
    ClientHello,
    ClientHelloError,
)
from gateway.wire.helloreader import ClientHelloReader

DATA = Path(__file__).parents[1] / "data" / "clienthello"
ROOT = Path(__file__).parents[2]

HELLO = makeClientHello("api.example.com", [b"h2", b"http/1.1"])
PARSED = ClientHelloReader().feed(HELLO)

# Few examples each: the reader is cheap, but the suite must stay fast.
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# Hand-built hellos, for the malformed cases a real client never sends.


def vector(lengthSize: int, data: bytes) -> bytes:
    return len(data).to_bytes(lengthSize, "big") + data


def extension(extensionType: int, data: bytes) -> bytes:
    return extensionType.to_bytes(2, "big") + vector(2, data)


def sni(*names: bytes, nameType: int = 0) -> bytes:
    return extension(
        0, vector(2, b"".join(bytes([nameType]) + vector(2, n) for n in names))
    )


def alpn(*protocols: bytes) -> bytes:
    return extension(16, vector(2, b"".join(vector(1, p) for p in protocols)))


def serverNames(*entries: tuple[int, bytes]) -> bytes:
    """A server_name extension listing C{(name_type, name)} entries."""
    return extension(
        0,
        vector(2, b"".join(bytes([kind]) + vector(2, name) for kind, name in entries)),
    )


def helloBody(
    *extensions: bytes,
    version: bytes = b"\x03\x03",
    sessionId: bytes = b"\x20" + bytes(32),
    ciphers: bytes = vector(2, b"\x13\x01\x13\x02"),
    compression: bytes = b"\x01\x00",
    extensionsBlock: bytes | None = None,
) -> bytes:
    if extensionsBlock is None:
        extensionsBlock = vector(2, b"".join(extensions))
    return version + bytes(32) + sessionId + ciphers + compression + extensionsBlock


def handshake(body: bytes, messageType: int = 1, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return bytes([messageType]) + size.to_bytes(3, "big") + body


def record(
    fragment: bytes,
    contentType: int = 22,
    version: bytes = b"\x03\x01",
    length: int | None = None,
) -> bytes:
    size = len(fragment) if length is None else length
    return bytes([contentType]) + version + size.to_bytes(2, "big") + fragment


def wrap(body: bytes) -> bytes:
    return record(handshake(body))


def feedAll(chunks: Iterable[bytes], maxSize: int = 16384) -> ClientHello:
    """
    Feed C{chunks}, checking that every one but the last gets L{NEED_MORE}.
    """
    reader = ClientHelloReader(maxSize)
    pieces = list(chunks)
    for piece in pieces[:-1]:
        assert reader.feed(piece) is NEED_MORE
    result = reader.feed(pieces[-1])
    assert isinstance(result, ClientHello)
    assert reader.buffered == b"".join(pieces)
    return result


def outcome(chunks: Iterable[bytes], maxSize: int = 16384) -> object:
    """
    The reader's final answer to C{chunks}: a hello, L{NEED_MORE}, or an
    error as (class, message), so that answers can be compared.
    """
    reader = ClientHelloReader(maxSize)
    result: object = NEED_MORE
    try:
        for chunk in chunks:
            result = reader.feed(chunk)
    except ClientHelloError as e:
        return (type(e), str(e))
    return result


def cut(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


def oneByteAtATime(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# Real hellos.

CAPTURED = [
    # file, SNI, ALPN, supported_versions
    (
        "openssl_s_client",
        "example.com",
        ("h2", "http/1.1"),
        (0x304, 0x303, 0x302, 0x301),
    ),
    ("python_ssl", "python.example.com", (), (0x304, 0x303)),
    ("curl", "curl.example.com", ("h2", "http/1.1"), (0x304, 0x303, 0x302, 0x301)),
    ("pyopenssl_pq", "pq.example.com", ("h2", "http/1.1"), (0x304, 0x303)),
]
