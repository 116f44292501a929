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
