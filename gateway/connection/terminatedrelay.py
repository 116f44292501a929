"""
The relay of a terminated connection, with its TLS records moved in the
hub: the provider of L{IRelay} for a client whose TLS the gateway ends.

The copy relay (L{CopyRelay}) has the splice hub read both sockets, but
hands each read to the transport's protocol, as the reactor would: the
client's ciphertext goes through the connection's owner, the termination
stage, the TLS layer, the stage again and the session before the relay
sends its plaintext upstream, and the upstream's answer through its
protocol before the relay writes it to the TLS layer: some thirty Python
calls a request and its answer, besides OpenSSL's work and the system
calls.  L{TerminatedRelay} sets the hub readers' sinks to itself, so a
read goes straight from the socket to the connection's own TLS layer
(L{TLSTransport.decryptTo}: one C{BIO_write}, the C{SSL_read}s, one
C{BIO_read}) and its plaintext straight to the other socket's C{send},
and back the same way (L{TLSTransport.write}: C{SSL_write}, C{BIO_read},
C{send}).

Nothing else changes, because only the data takes the short way: the
end of a stream, a socket error, a peer's C{close_notify}, a broken
record and its alert go through the transports, the TLS layer's events,
the stage and the session exactly as with the copy relay; backpressure
is the same pair of hub readers registered as the other side's
producers; the client's bytes are counted into the owner's
L{ClientBytes} as the owner counts them (what it receives, before the TLS
layer sees it), and what the client is sent by the TLS layer, as always.

An upstream with TLS (re-encryption) takes the short way too, through
its own TLS layer.  An upstream whose bytes a watcher reads
(L{gateway.connection.session.Session.upstreamWatcher}: a PostgreSQL
session's cancel keys) keeps its protocol's way for that side, where the
watcher sits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway.connection.relay import CopyRelay, IRelay, Reader
from gateway.core.transports import RelayTransport
from gateway.fast.internals import send
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import ConnectionOwner
from gateway.tls.transport import TLSTransport


@implementer(IRelay)
class TerminatedRelay(CopyRelay):
    """
    The copy relay of a terminated client, whose hub readers give their
    bytes to it rather than to the transports' protocols.

    @ivar _clientTLS: the client's TLS layer (the relay's client side).
    @ivar _upstreamTLS: the upstream's TLS layer when re-encrypting, else
        L{None}.
    @ivar _received: the owner's count of bytes read from the client's
        socket (L{ClientBytes.received}), which the owner's
        C{dataReceived} no longer sees.
    @ivar _toUpstream: sends plaintext to the upstream (its socket, or its
        TLS layer).
    """

    __slots__ = ("_clientTLS", "_received", "_toUpstream", "_upstreamTLS")

    def __init__(
        self,
        client: TLSTransport,
        upstream: RelayTransport,
        record: ConnectionRecord,
        clock: IReactorTime,
        idleTimeout: float,
        done: Callable[[], None],
        *,
        owner: ConnectionOwner,
        readers: tuple[Reader, Reader],
        upstreamWatched: bool = False,
    ) -> None:
        super().__init__(
            client,
            upstream,
            record,
            clock,
            idleTimeout,
            done,
            owner=owner,
            readers=readers,
            clientBytes=None,  # the TLS layer counts what the client is sent
        )
        self._clientTLS = client
        self._upstreamTLS = upstream if isinstance(upstream, TLSTransport) else None
        self._received = owner.clientBytes.received
        self._toUpstream = functools.partial(send, upstream)
        readers[0].sink = self._fromClient
        if not upstreamWatched:
            readers[1].sink = (
                self._fromUpstream
                if self._upstreamTLS is None
                else self._fromUpstreamTLS
            )

    def _fromClient(self, data: bytes) -> None:
        """
        A read of the client's socket: counted, decrypted, sent upstream.
        """
        self._received(len(data))
        self._lastActivity = self._clock.seconds()
        self._clientTLS.decryptTo(data, self._toUpstream)

    def _fromUpstream(self, data: bytes) -> None:
        """
        A read of the upstream's plain socket: encrypted for the client.
        """
        self._lastActivity = self._clock.seconds()
        self._clientTLS.write(data)

    def _fromUpstreamTLS(self, data: bytes) -> None:
        """
        A read of a re-encrypted upstream's socket: decrypted, then
        encrypted for the client.
        """
        assert self._upstreamTLS is not None
        self._lastActivity = self._clock.seconds()
        self._upstreamTLS.decryptTo(data, self._clientTLS.write)

    def _bothLost(self) -> None:
        # The readers' sinks point back here: let the cycle go with the
        # connection.
        for reader in self._readers:
            reader.sink = None
        super()._bothLost()
