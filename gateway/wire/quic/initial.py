"""
Read the ClientHello out of a client's QUIC Initial packets.

A QUIC client sends its ClientHello in CRYPTO frames of Initial packets,
encrypted with keys derived from public values (see
L{gateway.wire.quic.crypto}).  With a post-quantum key share the hello no
longer fits one packet, so the frames are reassembled by offset across
packets and datagrams, in whatever order they arrive, and the bytes go to
the same ClientHello parser as TCP's, so that a QUIC connection is routed
by exactly the rules a TLS one is.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Final, Literal

from gateway.wire.clienthello import NEED_MORE, ClientHello, ClientHelloError, _NeedMore
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.quic.crypto import (
    InitialKeys,
    OpenedPacket,
    decryptInitial,
    initialKeys,
)
from gateway.wire.quic.errors import (
    BadClientHello,
    HelloTooLarge,
    InitialTooSmall,
    NotQuicInitial,
    QuicError,
    UndecryptableInitial,
)
from gateway.wire.quic.frames import cryptoFrames
from gateway.wire.quic.packet import (
    MIN_INITIAL_DATAGRAM,
    LongHeader,
    PacketType,
    isLongHeader,
    longHeaders,
)

__all__ = ["InitialReader"]

_CLIENT_HELLO: Final = 1
_HANDSHAKE_HEADER: Final = 4
#: RFC 9000 17.2: the two bits under header protection that must be zero.
_RESERVED_BITS: Final = 0x0C
#: TLS records hold at most 2^14 bytes of plaintext (RFC 8446 5.1).
_MAX_FRAGMENT: Final = 2**14


class _CryptoStream:
    """
    The Initial CRYPTO stream, reassembled by offset.

    Data may come out of order and in overlapping retransmissions; a gap
    waits for its bytes.  RFC 9000 section 2.2 lets a receiver refuse
    different data at the same offset, and refusing it is what keeps the
    hello from depending on the order its packets arrived in.

    @ivar _data: the stream from offset 0; bytes not yet received are
        zeros, and the ranges say which are real.
    @ivar _starts: where each received range starts, sorted.
    @ivar _ends: where each ends (exclusive).  The ranges are disjoint and
        never adjacent, so both lists are sorted and a new piece finds the
        ranges it touches by bisection: a client that sends its hello a
        byte at a time, in any order, costs a logarithmic search per piece,
        not a walk over all the pieces before it.
    """

    __slots__ = ("_data", "_ends", "_maxSize", "_starts")

    def __init__(self, maxSize: int) -> None:
        self._maxSize = maxSize
        self._data = bytearray()
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, offset: int, data: bytes) -> None:
        """
        @raise HelloTooLarge: the data reaches past C{maxSize}.
        @raise QuicError: it differs from data already received there.
        """
        end = offset + len(data)
        if end > self._maxSize:
            raise HelloTooLarge(
                f"CRYPTO data up to byte {end}, past the {self._maxSize}-byte"
                " pre-read limit"
            )
        if not data:
            return
        if end > len(self._data):
            self._data.extend(bytes(end - len(self._data)))
        starts, ends = self._starts, self._ends
        # The ranges touching [offset, end): from the first that ends at or
        # after offset to the last that starts at or before end.
        first = bisect_left(ends, offset)
        last = bisect_right(starts, end)
        for k in range(first, last):
            a, b = max(starts[k], offset), min(ends[k], end)
            if a < b and self._data[a:b] != data[a - offset : b - offset]:
                raise QuicError(
                    f"CRYPTO data at offsets {a} to {b} differs from what was"
                    " received there before (RFC 9000 2.2)"
                )
        self._data[offset:end] = data
        if first < last:
            offset, end = min(offset, starts[first]), max(end, ends[last - 1])
        starts[first:last] = [offset]
        ends[first:last] = [end]

    @property
    def contiguous(self) -> int:
        """
        How many bytes from offset 0 are received.
        """
        if self._starts and self._starts[0] == 0:
            return self._ends[0]
        return 0

    def prefix(self, size: int) -> bytes:
        return bytes(self._data[:size])


class InitialReader:
    """
    Feed a client's datagrams, in the order they arrive, until its
    ClientHello is complete.

    Per datagram, only the Initial packets are read: every coalesced one
    whose Destination Connection ID is that of the datagram's first packet
    (RFC 9000 12.2 has receivers ignore the others); 0-RTT and Handshake
    packets beside them are skipped.  A datagram that carries an Initial
    must be at least 1200 bytes.

    The keys come from the Destination Connection ID of the first Initial
    that decrypts, and stay: a client keeps using them after it switches
    to the server's connection ID.  The exception is Retry.  After a
    server's Retry the client starts over with keys from a new DCID, with
    the Retry's token in its Initials; so an Initial with a token and
    another DCID that does not open under the current keys but does under
    its own starts the reader over on those keys (the new DCID becomes
    C{dcid}).  No call from the caller is needed; L{restart} exists for a
    caller that wants to forget the keys anyway.

    Errors of two kinds come out of L{feed}.  Errors about one datagram
    (L{NotQuicInitial}, L{UndecryptableInitial}, L{InitialTooSmall},
    L{UnsupportedVersion<gateway.wire.quic.errors.UnsupportedVersion>}, a
    plain L{QuicError} for an unreadable header) come before anything
    authenticated, and leave the reader as it was, so that one forged or
    corrupted datagram does not end a flow: the caller drops that datagram.
    Errors about the hello (L{HelloTooLarge}, L{BadClientHello},
    L{ConnectionClosed<gateway.wire.quic.errors.ConnectionClosed>}, a frame
    an Initial may not carry, reserved bits set, conflicting CRYPTO data)
    come from packets that authenticated, so from the client: they are
    final, kept in L{error} and raised again by every later C{feed}.

    @ivar version: the version of the Initials read, once one decrypted.
    @ivar dcid: the Destination Connection ID the keys are derived from.
    @ivar scid: the client's Source Connection ID.
    @ivar _maxSize: the bound on the CRYPTO stream (the listener's
        C{preread_buffer_size}): data past it, or a hello that says it is
        longer, is L{HelloTooLarge}.
    @ivar _keys: the keys per version, derived from C{dcid}.  A client that
        changes version mid-handshake (compatible version negotiation, RFC
        9368) keeps the original DCID, so more than one may be needed.
    @ivar _largest: the largest packet number opened, to decode the next.
    """

    __slots__ = (
        "_error",
        "_hello",
        "_keys",
        "_largest",
        "_maxSize",
        "_stream",
        "dcid",
        "scid",
        "version",
    )

    def __init__(self, maxSize: int = 16384) -> None:
        if maxSize < 1:
            raise ValueError(f"maxSize must be positive, not {maxSize}")
        self._maxSize = maxSize
        self._largest = -1
        self._error: QuicError | None = None
        self.restart()

    def restart(self) -> None:
        """
        Forget the keys, the connection IDs and the CRYPTO data: the next
        Initial is read as if it were the client's first.  Packet numbers
        are kept, as the client keeps counting after a Retry (RFC 9000
        17.2.5.3), and so is a final L{error}.
        """
        self.version: int | None = None
        self.dcid: bytes | None = None
        self.scid: bytes | None = None
        self._keys: dict[int, InitialKeys] = {}
        self._stream = _CryptoStream(self._maxSize)
        self._hello: ClientHello | None = None

    @property
    def error(self) -> QuicError | None:
        """
        The final error, once L{feed} has raised one: the flow is over.
        L{None} while every error raised was about one datagram.
        """
        return self._error

    def feed(self, datagram: bytes) -> ClientHello | Literal[_NeedMore.NEED_MORE]:
        """
        Take the next datagram the client sent.

        @return: the L{ClientHello} once complete (and again for every
            later datagram), L{NEED_MORE} before.
        @raise QuicError: see the class docstring for which errors are
            final.
        """
        if self._error is not None:
            raise self._error
        opened = self._open(datagram)
        if not opened:
            if self.dcid is None:
                raise NotQuicInitial("the datagram carries no client Initial")
            return self._hello or NEED_MORE
        try:
            return self._take(opened)
        except QuicError as e:
            self._error = e
            raise

    def _open(
        self, datagram: bytes
    ) -> list[tuple[LongHeader, InitialKeys, OpenedPacket]]:
        """
        Decrypt the datagram's Initial packets, changing nothing the
        answer depends on.

        @return: each opened packet with its header and the keys that
            opened it; empty when the datagram has no Initial for us.
        """
        if not isLongHeader(datagram):
            return []
        headers = longHeaders(datagram)
        initials = [
            h
            for h in headers
            if h.packetType is PacketType.INITIAL and h.dcid == headers[0].dcid
        ]
        if not initials:
            return []
        if len(datagram) < MIN_INITIAL_DATAGRAM:
            raise InitialTooSmall(
                f"datagram of {len(datagram)} bytes carries an Initial; the"
                f" minimum is {MIN_INITIAL_DATAGRAM} (RFC 9000 14.1)"
            )
        opened = []
        failure: QuicError | None = None
        largest = self._largest
        derived: dict[tuple[bytes, int], InitialKeys] = {}
        for header in initials:
            packet = datagram[header.offset : header.offset + header.length]
            for keys in self._candidateKeys(header, derived):
                try:
                    result = decryptInitial(
                        packet, header.headerLength, keys, largest + 1
                    )
                except UndecryptableInitial as e:
                    failure = e
                    continue
                largest = max(largest, result.packetNumber)
                opened.append((header, keys, result))
                break
        if not opened:
            raise failure or UndecryptableInitial("no Initial packet decrypts")
        self._largest = largest
        return opened

    def _candidateKeys(
        self, header: LongHeader, derived: dict[tuple[bytes, int], InitialKeys]
    ) -> list[InitialKeys]:
        """
        The keys to try on an Initial, most likely first: the current ones
        (derived for this version if needed); then, for an Initial after a
        Retry (a token, another DCID), keys from its own DCID.

        @param derived: keys derived from packet DCIDs for this datagram,
            so that coalesced packets share one derivation.
        """
        candidates = []
        if self.dcid is not None:
            keys = self._keys.get(header.version)
            if keys is None:
                keys = self._keys[header.version] = initialKeys(
                    self.dcid, header.version
                )
            candidates.append(keys)
            if not header.token or header.dcid == self.dcid:
                return candidates
        own = derived.get((header.dcid, header.version))
        if own is None:
            own = derived[header.dcid, header.version] = initialKeys(
                header.dcid, header.version
            )
        candidates.append(own)
        return candidates

    def _take(
        self, opened: list[tuple[LongHeader, InitialKeys, OpenedPacket]]
    ) -> ClientHello | Literal[_NeedMore.NEED_MORE]:
        """
        Adopt the keys of opened packets and add their CRYPTO data.
        """
        for header, keys, packet in opened:
            if packet.firstByte & _RESERVED_BITS:
                raise QuicError(
                    f"Initial packet {packet.packetNumber} authenticates with"
                    " its reserved bits set (RFC 9000 17.2)"
                )
            if self._keys.get(keys.version) is not keys:
                # The client's first Initial, or its first after a Retry.
                self.restart()
                self.dcid = header.dcid
                self._keys[keys.version] = keys
            self.version = header.version
            self.scid = header.scid
            for offset, data in cryptoFrames(packet.payload):
                self._stream.add(offset, data)
        if self._hello is None:
            self._hello = self._complete()
        return self._hello or NEED_MORE

    def _complete(self) -> ClientHello | None:
        """
        The hello, once the stream holds all of it.
        """
        have = self._stream.contiguous
        if have < _HANDSHAKE_HEADER:
            return None
        header = self._stream.prefix(_HANDSHAKE_HEADER)
        if header[0] != _CLIENT_HELLO:
            raise BadClientHello(
                f"the Initial CRYPTO stream starts with handshake message type"
                f" {header[0]}, not a ClientHello"
            )
        size = _HANDSHAKE_HEADER + int.from_bytes(header[1:], "big")
        if size > self._maxSize:
            raise HelloTooLarge(
                f"ClientHello of {size} bytes, past the {self._maxSize}-byte"
                " pre-read limit"
            )
        if have < size:
            return None
        return _parseHandshake(self._stream.prefix(size))


def _parseHandshake(message: bytes) -> ClientHello:
    """
    Parse a ClientHello handshake message (its 4-byte header included)
    with the TLS reader, by framing it in TLS records as TCP would carry
    it, so that both transports share one parser and one set of checks.

    @raise BadClientHello: the parser refused it; its reason slug is kept.
    """
    records = b"".join(
        b"\x16\x03\x01"
        + len(message[i : i + _MAX_FRAGMENT]).to_bytes(2, "big")
        + message[i : i + _MAX_FRAGMENT]
        for i in range(0, len(message), _MAX_FRAGMENT)
    )
    reader = ClientHelloReader(maxSize=max(1, len(records)))
    try:
        hello = reader.feed(records)
    except ClientHelloError as e:
        raise BadClientHello(str(e), e.reason) from e
    if hello is NEED_MORE:
        raise BadClientHello("ClientHello is cut short")
    return hello
