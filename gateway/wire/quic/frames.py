"""
The frames of a client's Initial packets (RFC 9000 section 19), read for
their CRYPTO data.

An Initial may only carry PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE
(RFC 9000 section 12.4, table 3); anything else in a packet that
authenticated is a protocol violation by the client, so it is an error
here rather than something skipped: skipping needs the frame's length,
and a frame type the reader does not know has none it could read.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.wire.quic.errors import ConnectionClosed, QuicError
from gateway.wire.quic.packet import readVarint

__all__ = ["cryptoFrames"]

_PADDING: Final = 0x00
_PING: Final = 0x01
_ACK: Final = 0x02
_ACK_ECN: Final = 0x03
_CRYPTO: Final = 0x06
_CONNECTION_CLOSE: Final = 0x1C
#: RFC 9000 19.6: a CRYPTO frame may not reach past 2^62 - 1.
_MAX_OFFSET: Final = 2**62 - 1
_NOT_PADDING: Final = re.compile(b"[^\x00]")


def cryptoFrames(payload: bytes) -> list[tuple[int, bytes]]:
    """
    The CRYPTO frames of one Initial packet's plaintext, as C{(offset,
    data)} pairs in packet order.

    @raise ConnectionClosed: a CONNECTION_CLOSE frame.
    @raise QuicError: no frame at all, a frame type an Initial may not
        carry, or a frame cut short.
    """
    if not payload:
        raise QuicError("Initial packet without frames (RFC 9000 12.4)")
    end = len(payload)
    chunks: list[tuple[int, bytes]] = []
    i = 0
    while i < end:
        frameType, i = readVarint(payload, i, end, "frame type")
        if frameType == _PADDING:
            # Clients pad their Initials to 1200 bytes: skip the run at C speed.
            found = _NOT_PADDING.search(payload, i)
            i = found.start() if found else end
        elif frameType == _PING:
            continue
        elif frameType == _CRYPTO:
            offset, i = readVarint(payload, i, end, "CRYPTO offset")
            length, i = readVarint(payload, i, end, "CRYPTO length")
            if i + length > end:
                raise QuicError(f"CRYPTO frame of {length} bytes runs past its packet")
            if offset + length > _MAX_OFFSET:
                raise QuicError("CRYPTO frame past 2^62 - 1 (RFC 9000 19.6)")
            chunks.append((offset, payload[i : i + length]))
            i += length
        elif frameType in (_ACK, _ACK_ECN):
            i = _skipAck(payload, i, end, frameType == _ACK_ECN)
        elif frameType == _CONNECTION_CLOSE:
            raise _connectionClose(payload, i, end)
        else:
            raise QuicError(
                f"frame type 0x{frameType:x} is not allowed in an Initial packet"
                " (RFC 9000 12.4)"
            )
    return chunks


def _skipAck(payload: bytes, i: int, end: int, ecn: bool) -> int:
    """
    Step over an ACK frame (RFC 9000 19.3): a client acknowledging the
    server's Initials in a datagram that still carries its hello.
    """
    for field in ("ACK largest", "ACK delay"):
        _, i = readVarint(payload, i, end, field)
    ranges, i = readVarint(payload, i, end, "ACK range count")
    _, i = readVarint(payload, i, end, "ACK first range")
    # Each range is two varints of at least one byte: a count that cannot
    # fit is refused before looping over it.
    if 2 * ranges > end - i:
        raise QuicError(f"ACK frame of {ranges} ranges runs past its packet")
    for _ in range(2 * ranges + (3 if ecn else 0)):
        _, i = readVarint(payload, i, end, "ACK range")
    return i


def _connectionClose(payload: bytes, i: int, end: int) -> ConnectionClosed:
    errorCode, i = readVarint(payload, i, end, "CONNECTION_CLOSE error code")
    _, i = readVarint(payload, i, end, "CONNECTION_CLOSE frame type")
    length, i = readVarint(payload, i, end, "CONNECTION_CLOSE reason length")
    phrase = payload[i : min(end, i + length, i + 200)]
    return ConnectionClosed(errorCode, phrase.decode("utf-8", "replace"))
