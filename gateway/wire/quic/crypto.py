"""
The keys of QUIC Initial packets, and their removal: RFC 9001 section 5
(v1) and RFC 9369 section 3.3 (v2).

Initial packets are encrypted, but with keys anyone can derive from the
client's first Destination Connection ID and a salt published in the RFC:
the encryption keeps middleboxes from ossifying the handshake, not secrets
from them.  The gateway derives the client's keys to read the ClientHello,
exactly as the server behind it will, and the server's keys for the one
packet it writes itself: the refusal of a connection it will not pass on
(L{gateway.wire.quic.refusal}).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, NamedTuple

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.wire.quic.errors import QuicError, UndecryptableInitial
from gateway.wire.quic.packet import QUIC_V1, QUIC_V2

__all__ = [
    "INITIAL_SALTS",
    "SAMPLE_SIZE",
    "TAG_SIZE",
    "InitialKeys",
    "OpenedPacket",
    "decodePacketNumber",
    "decryptInitial",
    "encryptInitial",
    "headerProtectionMask",
    "hkdfExpandLabel",
    "initialKeys",
    "initialSecret",
    "minimumPayload",
]

#: The salt of the Initial secret, per version.
INITIAL_SALTS: Final = {
    # RFC 9001 section 5.2.
    QUIC_V1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    # RFC 9369 section 3.3.1.
    QUIC_V2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
#: The labels of the packet key, IV and header protection key, per
#: version (RFC 9001 5.1; RFC 9369 3.3.2 renames them, so that v1 and v2
#: keys differ even for the same secret).
_LABELS: Final = {
    QUIC_V1: (b"quic key", b"quic iv", b"quic hp"),
    QUIC_V2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
}
#: RFC 9001 5.4.2: header protection samples 16 bytes of ciphertext,
#: starting 4 bytes after the start of the packet number.
SAMPLE_SIZE: Final = 16
#: The AEAD tag after every packet's payload (AES-128-GCM).
TAG_SIZE: Final = 16
_SENDER_LABELS: Final = {"client": b"client in", "server": b"server in"}


def hkdfExpandLabel(secret: bytes, label: bytes, length: int) -> bytes:
    """
    TLS 1.3's HKDF-Expand-Label with SHA-256 and an empty context (RFC
    8446 7.1), which is all the Initial keys use.
    """
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initialSecret(dcid: bytes, version: int, sender: str = "client") -> bytes:
    """
    The Initial secret of one side (RFC 9001 5.2): HKDF-Extract with the
    version's salt over the client's first Destination Connection ID, then
    expanded with C{"client in"} or C{"server in"}.

    @raise KeyError: a version without a salt (only v1 and v2 have one).
    """
    extracted = hmac.digest(INITIAL_SALTS[version], dcid, hashlib.sha256)
    return hkdfExpandLabel(extracted, _SENDER_LABELS[sender], 32)


@attrs.frozen
class InitialKeys:
    """
    What it takes to remove one side's Initial packet protection.

    @ivar version: the QUIC version the keys are for.
    @ivar secret: that side's Initial secret.
    @ivar key: the AES-128-GCM packet key.
    @ivar iv: the 12-byte IV the packet number is XORed into.
    @ivar hp: the AES-128 header protection key.
    @ivar aead: the packet cipher, built once: every packet of the
        handshake uses it.
    """

    version: int
    secret: bytes
    key: bytes
    iv: bytes
    hp: bytes
    aead: AESGCM = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "aead", AESGCM(self.key))


def initialKeys(dcid: bytes, version: int, sender: str = "client") -> InitialKeys:
    """
    Derive one side's Initial keys (RFC 9001 5.1 and 5.2; RFC 9369 3.3).

    @param dcid: the Destination Connection ID of the client's first
        Initial (or of its first Initial after a Retry).
    @param sender: C{"client"} or C{"server"}: whose packets the keys open.
    """
    secret = initialSecret(dcid, version, sender)
    keyLabel, ivLabel, hpLabel = _LABELS[version]
    return InitialKeys(
        version,
        secret,
        hkdfExpandLabel(secret, keyLabel, 16),
        hkdfExpandLabel(secret, ivLabel, 12),
        hkdfExpandLabel(secret, hpLabel, 16),
    )


def headerProtectionMask(hp: bytes, sample: bytes) -> bytes:
    """
    The 5-byte header protection mask of AES-based packet protection (RFC
    9001 5.4.3): the first block of the sample encrypted under C{hp}.
    """
    # ECB over one block is what the RFC defines: a pseudo-random function
    # of the sample, not a confidentiality mode.
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(sample[:SAMPLE_SIZE])[:5]


def decodePacketNumber(truncated: int, bits: int, expected: int) -> int:
    """
    The full packet number from its truncated encoding, closest to the
    expected one (RFC 9000 appendix A.3).
    """
    window = 1 << bits
    half = window // 2
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


class OpenedPacket(NamedTuple):
    """
    A packet whose protection is removed.

    @ivar packetNumber: its full packet number.
    @ivar payload: its frames.
    @ivar firstByte: its first byte without header protection: the
        caller checks the reserved bits, since a packet that authenticates
        with them set is a protocol violation of the peer (RFC 9000 17.2),
        not a corrupted datagram.
    """

    packetNumber: int
    payload: bytes
    firstByte: int


def decryptInitial(
    packet: bytes, headerLength: int, keys: InitialKeys, expected: int
) -> OpenedPacket:
    """
    Remove the header protection and the packet protection of one long
    header packet (RFC 9001 5.3 and 5.4).

    @param packet: the packet alone, as long as its header says.
    @param headerLength: the bytes before its packet number.
    @param expected: the packet number expected next (one more than the
        largest opened so far), to decode the truncated one.
    @raise UndecryptableInitial: the packet does not authenticate.
    @raise QuicError: it is too short to sample.
    """
    sampleAt = headerLength + 4
    if sampleAt + SAMPLE_SIZE > len(packet):
        raise QuicError(
            f"packet of {len(packet)} bytes is too short for header protection"
        )
    mask = headerProtectionMask(keys.hp, packet[sampleAt : sampleAt + SAMPLE_SIZE])
    first = packet[0] ^ (mask[0] & 0x0F)
    pnLength = (first & 0x03) + 1
    pnBytes = _maskNumber(packet[headerLength : headerLength + pnLength], mask)
    packetNumber = decodePacketNumber(
        int.from_bytes(pnBytes, "big"), pnLength * 8, expected
    )
    header = bytes([first]) + packet[1:headerLength] + pnBytes
    try:
        payload = keys.aead.decrypt(
            _nonce(keys, packetNumber), packet[headerLength + pnLength :], header
        )
    except InvalidTag:
        raise UndecryptableInitial(
            f"packet {packetNumber} does not authenticate under the Initial keys"
        ) from None
    return OpenedPacket(packetNumber, payload, first)


def encryptInitial(
    header: bytes,
    packetNumber: int,
    packetNumberLength: int,
    payload: bytes,
    keys: InitialKeys,
) -> bytes:
    """
    Apply the packet protection, then the header protection, to one long
    header packet (RFC 9001 5.3 and 5.4): what L{decryptInitial} removes.

    @param header: the header up to its packet number, its Length field
        included (which counts the packet number, the payload and the
        16-byte tag).
    @param packetNumber: the full packet number (the nonce's); the header
        carries its last C{packetNumberLength} bytes.
    @param payload: its frames, long enough that 16 bytes of ciphertext
        start 4 bytes after the packet number (the header protection's
        sample).
    @raise QuicError: the payload is too short to sample.
    """
    if len(payload) < minimumPayload(packetNumberLength):
        raise QuicError(
            f"a payload of {len(payload)} bytes is too short for header protection"
        )
    truncated = packetNumber & ((1 << 8 * packetNumberLength) - 1)
    numbered = header + truncated.to_bytes(packetNumberLength, "big")
    sealed = keys.aead.encrypt(_nonce(keys, packetNumber), payload, numbered)
    sampleAt = 4 - packetNumberLength
    mask = headerProtectionMask(keys.hp, sealed[sampleAt : sampleAt + SAMPLE_SIZE])
    first = numbered[0] ^ (mask[0] & 0x0F)
    protectedNumber = _maskNumber(numbered[len(header) :], mask)
    return bytes([first]) + header[1:] + protectedNumber + sealed


def minimumPayload(packetNumberLength: int) -> int:
    """
    The fewest payload bytes a packet with a packet number of
    C{packetNumberLength} bytes may carry: header protection samples 16
    bytes of ciphertext starting 4 bytes after the packet number's start
    (RFC 9001 5.4.2), and the tag counts.
    """
    return max(0, 4 + SAMPLE_SIZE - packetNumberLength - TAG_SIZE)


def _nonce(keys: InitialKeys, packetNumber: int) -> bytes:
    """
    The AEAD nonce of a packet: the IV XORed with its full packet number
    (RFC 9001 5.3).
    """
    return (int.from_bytes(keys.iv, "big") ^ packetNumber).to_bytes(12, "big")


def _maskNumber(number: bytes, mask: bytes) -> bytes:
    """
    Add or remove the header protection of a packet number: the same XOR
    with the mask's bytes after the first (RFC 9001 5.4.1).
    """
    return bytes(b ^ m for b, m in zip(number, mask[1 : 1 + len(number)], strict=True))
