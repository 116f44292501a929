"""
The TLS record layer of one connection, as the TLS transport drives it.

L{gateway.tls.transport.TLSTransport} moves ciphertext and plaintext
through the memory BIOs of an OpenSSL connection in four calls; two
providers make them: pyOpenSSL's public API
(L{gateway.tls.transport.PublicRecords}), and OpenSSL's functions called
directly with one reused buffer (L{gateway.fast.internals.DirectRecords}).
The transport chooses one per connection, once
(L{gateway.tls.transport.recordLayer}), so no data-path call asks which.

Here, below both, so neither imports the other for the interface.
"""

from __future__ import annotations

from zope.interface import Interface


class IRecordLayer(Interface):
    """
    The data path of one TLS connection on memory BIOs, after (and, for
    L{feed} and L{drain}, during) the handshake.
    """

    def feed(data: bytes) -> None:
        """
        Ciphertext from the peer, into the incoming memory BIO.

        @raise OpenSSL.SSL.Error: as pyOpenSSL's C{bio_write} does.
        """

    def drain() -> bytes | None:
        """
        Everything OpenSSL wrote to the outgoing memory BIO (records, the
        handshake's messages, alerts), or L{None} when it holds nothing.
        """

    def decrypt(data: bytes) -> tuple[bytes, bool, str | None, bytes | None]:
        """
        L{feed}, every C{SSL_read} it completes and L{drain} in one call,
        for a relay's read: the ciphertext of one socket read in, its
        plaintext joined (C{SSL_read} gives at most one 16 KiB record a
        call, so a 64 KiB read is four: joined, they are one C{send}
        onwards), and what OpenSSL wrote meanwhile (a KeyUpdate's answer,
        an alert) out.  One call instead of three per read is what a small
        request saves on the hot path.

        @param data: ciphertext, possibly empty (only what was fed before).
        @return: the plaintext (empty for none); whether the peer's
            C{close_notify} came; OpenSSL's reason when a record failed,
            else L{None}; the outgoing bytes, or L{None}.
        """

    def encrypt(data: bytes) -> bytes | None:
        """
        Plaintext in (C{SSL_write}), the records that carry it out (as
        L{drain}: L{None} when OpenSSL wrote none).

        @raise OpenSSL.SSL.Error: as pyOpenSSL's C{sendall} does.
        """
