"""
The answer to a QUIC client the gateway refuses: a server Initial packet
carrying C{CONNECTION_CLOSE} with C{CONNECTION_REFUSED} (RFC 9000 sections
10.2.3 and 20.1).

A refused TCP client sees its connection closed at once; a refused QUIC
client would otherwise retransmit its Initial until its handshake timer
gives up, seconds later.  Before the handshake the only keys both ends
have are the Initial keys, which anyone can derive from the client's first
Destination Connection ID (L{gateway.wire.quic.crypto}), so the gateway
can close the connection as the server would have: with the server's
Initial keys, to the client's Source Connection ID.

The packet is a few dozen bytes against the client's Initial datagram of
at least 1,200, so it amplifies nothing (RFC 9000 section 8.1).  It
carries no reason phrase: the access log says why; the client learns only
that it was refused.
"""

from __future__ import annotations

from typing import Final

from gateway.wire.quic.crypto import (
    TAG_SIZE,
    encryptInitial,
    initialKeys,
    minimumPayload,
)
from gateway.wire.quic.packet import PacketType, encodeVarint, longPacketTypeBits

__all__ = ["CONNECTION_REFUSED", "connectionRefused"]

#: RFC 9000 section 20.1.
CONNECTION_REFUSED: Final = 0x02
#: RFC 9000 section 19.19: the transport-level CONNECTION_CLOSE, the one
#: allowed in Initial packets.
_CONNECTION_CLOSE: Final = 0x1C
#: The one packet number of the one packet sent; one byte encodes it.
_PACKET_NUMBER: Final = 0
_PACKET_NUMBER_LENGTH: Final = 1


def connectionRefused(clientDCID: bytes, clientSCID: bytes, version: int) -> bytes:
    """
    The datagram that refuses the connection a client's first Initial
    opened.

    @param clientDCID: the Destination Connection ID of that Initial: the
        Initial keys are derived from it, and the packet's Source
        Connection ID repeats it (the server's choice; the client replaces
        its Destination Connection ID with it, which no longer matters).
    @param clientSCID: its Source Connection ID, the packet's destination.
    @param version: its version (v1 or v2), which the answer speaks.
    @raise KeyError: a version without Initial keys.
    """
    keys = initialKeys(clientDCID, version, sender="server")
    frame = (
        encodeVarint(_CONNECTION_CLOSE)
        + encodeVarint(CONNECTION_REFUSED)
        + encodeVarint(0)  # the frame type that caused it: none
        + encodeVarint(0)  # no reason phrase
    )
    # PADDING frames make the ciphertext long enough for header protection.
    minimum = minimumPayload(_PACKET_NUMBER_LENGTH)
    payload = frame + bytes(max(0, minimum - len(frame)))
    length = _PACKET_NUMBER_LENGTH + len(payload) + TAG_SIZE
    first = (
        0xC0
        | longPacketTypeBits(version, PacketType.INITIAL) << 4
        | (_PACKET_NUMBER_LENGTH - 1)
    )
    header = b"".join(
        [
            bytes([first]),
            version.to_bytes(4, "big"),
            bytes([len(clientSCID)]),
            clientSCID,
            bytes([len(clientDCID)]),
            clientDCID,
            encodeVarint(0),  # no token
            encodeVarint(length),
        ]
    )
    return encryptInitial(header, _PACKET_NUMBER, _PACKET_NUMBER_LENGTH, payload, keys)
