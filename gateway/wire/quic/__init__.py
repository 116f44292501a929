"""
A sans-IO reader of QUIC Initial packets: enough of QUIC v1 (RFC 9000,
9001) and v2 (RFC 9369) to route a connection by its ClientHello.

The gateway passes QUIC through; it never terminates it.  So it reads what
a passive observer can: long headers and connection IDs
(L{gateway.wire.quic.packet}), the client's Initial packets, whose keys
are public (L{gateway.wire.quic.crypto}), and their CRYPTO frames
(L{gateway.wire.quic.frames}), reassembled into the ClientHello that
L{gateway.wire.clienthello} parses (L{gateway.wire.quic.initial}).  No
I/O, no clock, no Twisted: the UDP flows feed it datagrams.  The one
packet it writes besides Version Negotiation is the refusal of a
connection, under the server's Initial keys (L{gateway.wire.quic.refusal}).
"""

from gateway.wire.clienthello import NEED_MORE
from gateway.wire.quic.crypto import InitialKeys, initialKeys
from gateway.wire.quic.errors import (
    BadClientHello,
    ConnectionClosed,
    HelloTooLarge,
    InitialTooSmall,
    NotQuicInitial,
    QuicError,
    UndecryptableInitial,
    UnsupportedVersion,
)
from gateway.wire.quic.initial import InitialReader
from gateway.wire.quic.packet import (
    MIN_INITIAL_DATAGRAM,
    QUIC_V1,
    QUIC_V2,
    SUPPORTED_VERSIONS,
    LongHeader,
    PacketType,
    isLongHeader,
    longHeaders,
    parseLongHeader,
    shortHeaderDCID,
    versionNegotiation,
)
from gateway.wire.quic.refusal import CONNECTION_REFUSED, connectionRefused

__all__ = [
    "CONNECTION_REFUSED",
    "MIN_INITIAL_DATAGRAM",
    "NEED_MORE",
    "QUIC_V1",
    "QUIC_V2",
    "SUPPORTED_VERSIONS",
    "BadClientHello",
    "ConnectionClosed",
    "HelloTooLarge",
    "InitialKeys",
    "InitialReader",
    "InitialTooSmall",
    "LongHeader",
    "NotQuicInitial",
    "PacketType",
    "QuicError",
    "UndecryptableInitial",
    "UnsupportedVersion",
    "connectionRefused",
    "initialKeys",
    "isLongHeader",
    "longHeaders",
    "parseLongHeader",
    "shortHeaderDCID",
    "versionNegotiation",
]
