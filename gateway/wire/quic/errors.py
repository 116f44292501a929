"""
The errors of the QUIC Initial reader: one root, a subclass per case a
caller treats differently, each with a C{reason} slug for logs and metrics.

A datagram that fails here is dropped without a reply (except
L{UnsupportedVersion}, answered with a Version Negotiation packet), so the
slug is all an operator ever sees of it:
C{tlsgateway_quic_dropped_datagrams_total{reason}} is labelled with it.
"""

from __future__ import annotations

__all__ = [
    "BadClientHello",
    "ConnectionClosed",
    "HelloTooLarge",
    "InitialTooSmall",
    "NotQuicInitial",
    "QuicError",
    "UndecryptableInitial",
    "UnsupportedVersion",
]


class QuicError(Exception):
    """
    Client datagrams that do not open a QUIC connection the gateway can
    route.

    Every failure of the reader is one of these, never an C{IndexError},
    C{struct.error} or C{InvalidTag}, so the caller needs one C{except}.

    @cvar reason: stable slug for access-log fields and metric labels.
    """

    reason = "malformed"


class NotQuicInitial(QuicError):
    """
    The datagram holds no client Initial packet where one is needed: a
    short header, or only 0-RTT or Handshake packets, from a client whose
    connection the gateway does not know.  Usually a flow the gateway has
    forgotten, or a peer that is not speaking QUIC.
    """

    reason = "not_initial"


class UndecryptableInitial(QuicError):
    """
    No Initial packet of the datagram authenticates under the keys of its
    Destination Connection ID.  Anyone can compute those keys, so this is
    not a security check: it tells corrupted or forged datagrams from real
    ones.
    """

    reason = "undecryptable"


class InitialTooSmall(QuicError):
    """
    A datagram carrying a client Initial is shorter than 1200 bytes.  RFC
    9000 section 14.1 makes servers drop it: the minimum size keeps a
    spoofed Initial from being amplified into a larger reply.
    """

    reason = "too_small"


class UnsupportedVersion(QuicError):
    """
    A long header of a version the gateway cannot read (RFC 8999 leaves
    only the connection IDs readable).  The caller answers with
    L{versionNegotiation<gateway.wire.quic.versionNegotiation>}C{(dcid,
    scid)}, but only for datagrams of at least 1200 bytes (RFC 9000
    sections 5.2.2 and 6.1: a smaller one must not be answered, so that
    Version Negotiation cannot amplify).

    @ivar version: the version the client asked for.
    @ivar dcid: the client's Destination Connection ID (0 to 255 bytes).
    @ivar scid: the client's Source Connection ID (0 to 255 bytes).
    """

    reason = "unsupported_version"

    def __init__(self, version: int, dcid: bytes = b"", scid: bytes = b"") -> None:
        super().__init__(f"QUIC version 0x{version:08x} is not supported")
        self.version = version
        self.dcid = dcid
        self.scid = scid


class HelloTooLarge(QuicError):
    """
    The ClientHello does not fit in the reader's bound (the listener's
    C{preread_buffer_size}): CRYPTO data reaches past it, or the hello's
    own length says it will.  The answer to a client that would pin memory
    with a hello it never finishes.
    """

    reason = "too_large"


class ConnectionClosed(QuicError):
    """
    The client closed its connection (a CONNECTION_CLOSE frame in an
    Initial packet) before its ClientHello was complete.

    @ivar errorCode: the QUIC transport error code it gave.
    """

    reason = "connection_close"

    def __init__(self, errorCode: int, phrase: str = "") -> None:
        super().__init__(
            f"client closed the connection: error 0x{errorCode:x}"
            + (f" ({phrase})" if phrase else "")
        )
        self.errorCode = errorCode


class BadClientHello(QuicError):
    """
    The CRYPTO data decrypted, but is not a ClientHello the gateway can
    route.  The reason is that of the ClientHello parser's error
    (C{malformed}, C{bad_length}, ...), so that QUIC and TCP refusals of
    the same bad hello are labelled alike; that error is also the
    C{__cause__}.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
