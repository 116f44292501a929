"""
Helpers for testing the gateway, and code that embeds it, without a network.

Shipped in the package (as treq ships C{treq.testing}) so that embedders can
write the same in-memory tests we do.  Production modules must not import
it: it imports OpenSSL to play a real TLS client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from OpenSSL import SSL

__all__ = ["makeClientHello", "splitIntoRecords"]

_HANDSHAKE = 22
_MAX_FRAGMENT = 2**14


def makeClientHello(
    serverName: str | None = None,
    alpn: Sequence[bytes] = (),
    *,
    minVersion: int | None = None,
    maxVersion: int | None = None,
) -> bytes:
    """
    Build the bytes a real TLS client sends first, with no socket.

    A pyOpenSSL client on memory BIOs (C{Connection(ctx, None)}) writes its
    ClientHello and then waits for a ServerHello that never comes; what it
    wrote is exactly what it would have put on the wire.  Real bytes beat a
    hand-built hello: they carry whatever the bundled OpenSSL sends today
    (GREASE-free, but with a post-quantum key share that makes it about
    1,570 bytes), so tests notice when clients grow.

    Each call makes a fresh hello (new random, session id and key shares).

    @param serverName: sent as SNI, encoded as UTF-8 unchanged, so tests can
        offer names that a real client would have IDNA-encoded first.
        L{None}: no server_name extension.
    @param alpn: ALPN protocols to offer, in order; empty: no ALPN extension.
    @param minVersion: lowest protocol version, e.g. C{SSL.TLS1_2_VERSION}.
    @param maxVersion: highest protocol version; C{SSL.TLS1_2_VERSION} gives
        a hello without supported_versions or key shares, and
        C{SSL.TLS1_VERSION} the hello of a TLS 1.0-only client.
    @return: one or more TLS handshake records holding the ClientHello.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if minVersion is not None:
        context.set_min_proto_version(minVersion)
    if maxVersion is not None:
        context.set_max_proto_version(maxVersion)
        if maxVersion < SSL.TLS1_2_VERSION:
            # OpenSSL 3 offers TLS 1.0 and 1.1 only at security level 0.
            context.set_cipher_list(b"DEFAULT@SECLEVEL=0")
    connection = SSL.Connection(context, None)
    if serverName is not None:
        connection.set_tlsext_host_name(serverName.encode("utf-8"))
    if alpn:
        connection.set_alpn_protos(list(alpn))
    connection.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def splitIntoRecords(
    hello: bytes, sizes: Iterable[int], version: int | None = None
) -> bytes:
    """
    Re-frame the handshake records of C{hello} into records of other sizes.

    Clients may cut a handshake message into records wherever they like
    (RFC 8446 5.1), and the reader has to reassemble them; this builds such
    input from a real ClientHello.

    @param hello: one or more TLS handshake records, and nothing else.
    @param sizes: fragment lengths, used in turn; the last one repeats until
        the handshake bytes run out, so C{[1]} gives one record per byte and
        C{[100, 16384]} a 100-byte record followed by full ones.  The final
        record may be shorter.
    @param version: record version for every record; by default the version
        of the first record of C{hello}.
    @raise ValueError: C{hello} is not a sequence of whole handshake records,
        or a size is not between 1 and 2^14.
    """
    handshake = bytearray()
    offset = 0
    recordVersion = int.from_bytes(hello[1:3], "big") if version is None else version
    while offset < len(hello):
        header = hello[offset : offset + 5]
        length = int.from_bytes(header[3:5], "big")
        if (
            len(header) < 5
            or header[0] != _HANDSHAKE
            or offset + 5 + length > len(hello)
        ):
            raise ValueError(f"no whole handshake record at byte {offset}")
        handshake += hello[offset + 5 : offset + 5 + length]
        offset += 5 + length
    records = bytearray()
    size = 0
    remainingSizes = iter(sizes)
    position = 0
    while position < len(handshake):
        size = next(remainingSizes, size)
        if not 1 <= size <= _MAX_FRAGMENT:
            raise ValueError(f"record size {size} is not between 1 and {_MAX_FRAGMENT}")
        fragment = handshake[position : position + size]
        records += bytes([_HANDSHAKE]) + recordVersion.to_bytes(2, "big")
        records += len(fragment).to_bytes(2, "big") + fragment
        position += size
    return bytes(records)
