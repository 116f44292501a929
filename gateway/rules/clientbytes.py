"""
The count of a connection's client bytes: the access log's C{bytes_in} and
C{bytes_out}.

One mechanism, owned by the connection's owner
(L{gateway.connection.preread.PrereadProtocol}): the owner counts every
byte the client sends that reaches Python, as it receives it and before
any stage sees it, so no stage counts what it is given.  What reads or
writes the client's socket itself is handed the owner's L{ClientBytes}
instead of a flag, and counts there:

  - the splice flows (L{gateway.connection.spliceflow}), whose bytes move
    from socket to socket without reaching the owner;
  - the TLS layer of a terminated connection
    (L{gateway.tls.transport.TLSTransport}), which writes the ciphertext
    the client is sent;
  - the relay, the session and MySQL's stage writing to a client's TCP
    transport.  Their writes to a TLS layer are not counted there: the
    layer counts the ciphertext they become (L{ClientBytes.forWritesTo}
    says which).

Both counts are what crossed the client's socket: for a terminated
connection, TLS records, not the plaintext relayed.  Pure: no Twisted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from gateway.rules.accesslog import ConnectionRecord


@final
class ClientBytes:
    """
    Where the bytes that cross a client's socket are counted: into its
    record's C{bytesIn} and C{bytesOut}.

    @ivar socket: the client's socket transport (the owner's own
        transport), so that L{forWritesTo} can tell it from a layer over
        it; L{None} until the owner is connected.
    """

    __slots__ = ("_record", "socket")

    def __init__(self, record: ConnectionRecord) -> None:
        self._record = record
        self.socket: object = None

    def received(self, count: int) -> None:
        """
        C{count} bytes were read from the client's socket.
        """
        self._record.bytesIn += count

    def sent(self, count: int) -> None:
        """
        C{count} bytes were written to the client's socket.
        """
        self._record.bytesOut += count

    def forWritesTo(self, transport: object) -> ClientBytes | None:
        """
        What counts the bytes written to C{transport}: this, when it is
        the client's socket; L{None} when it is a layer over the socket
        (TLS), which counts what it writes there itself.
        """
        return self if transport is self.socket else None
