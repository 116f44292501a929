"""
In-memory transports for protocol tests.
"""

from twisted.internet.testing import StringTransportWithDisconnection


class HalfCloseableTransport(StringTransportWithDisconnection):
    """
    A L{StringTransportWithDisconnection} that also records half-closes,
    resets and producer pauses, as a TCP transport would see them.
    """

    writeClosed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().loseConnection()


class PromptClientTransport(HalfCloseableTransport):
    """
    A L{HalfCloseableTransport} whose peer is a TLS client that closes its
    side as soon as the gateway closes its own (after a refusal's alert),
    as OpenSSL clients do.
    """

    def loseWriteConnection(self) -> None:
        super().loseWriteConnection()
        if self.connected and self.protocol is not None:
            self.protocol.readConnectionLost()  # type: ignore[attr-defined]
